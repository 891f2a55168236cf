"""Test configuration: import the package from the source tree."""

import sys
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"
if str(LIB) not in sys.path:
    sys.path.insert(0, str(LIB))


import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for modules of tiny tensors: on a shared 2-core machine, thread
    wake-ups make 2 threads several times slower. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_random_net():
    """``make(image)``: a StyleTransferNet on a random-init VGG19 (to relu4_1, seed 0) whose decoder
    is calibrated on the (H, W) ``image``; a new net on every call."""
    def make(image):
        from ctxstyle.backbones import build_encoder
        from ctxstyle.method.net import StyleTransferNet

        torch.manual_seed(0)
        enc = build_encoder("vgg19", pretrained=False, last_layer="relu4_1")
        net = StyleTransferNet(enc, "relu4_1")
        net.decoder.calibrate(enc(torch.from_numpy(image)[None, None], ["relu4_1"])["relu4_1"])
        return net
    return make


@pytest.fixture(scope="session")
def square_masks():
    """``make(n)``: ``n`` toy 16 x 16 segmentation slices, a 5 x 5 bright square (the mask) on a
    darker noisy background (seeded): ``(images float32 in [0, 1], masks uint8)``."""
    import numpy as np

    def make(n: int):
        rng = np.random.default_rng(0)
        masks = np.zeros((n, 16, 16), np.uint8)
        for i in range(n):
            r, c = rng.integers(3, 9, size=2)
            masks[i, r: r + 5, c: c + 5] = 1
        images = (0.2 + 0.6 * masks + 0.05 * rng.standard_normal(masks.shape)).clip(0, 1).astype(np.float32)
        return images, masks
    return make


def _contextual_reference(generated: np.ndarray, target: np.ndarray, h: float = 0.5, eps: float = 1e-5) -> float:
    """Eqs 4-10 transcribed literally with loops in float64 (independent of the library)."""
    g_all = np.asarray(generated, dtype=np.float64)
    t_all = np.asarray(target, dtype=np.float64)
    n_img = g_all.shape[0]
    losses = []
    for n in range(n_img):
        g = g_all[n].reshape(g_all.shape[1], -1)
        t = t_all[n].reshape(t_all.shape[1], -1)
        ng, nt = g.shape[1], t.shape[1]
        mu = t.mean(axis=1)  # eq 4: the target's mean feature
        gc = [g[:, i] - mu for i in range(ng)]
        tc = [t[:, j] - mu for j in range(nt)]
        d = np.zeros((ng, nt))
        for i in range(ng):  # eq 5: cosine distance
            for j in range(nt):
                d[i, j] = 1.0 - np.dot(gc[i], tc[j]) / (np.linalg.norm(gc[i]) * np.linalg.norm(tc[j]))
        cx = np.zeros((ng, nt))
        for i in range(ng):
            dmin = min(d[i, k] for k in range(nt))
            w = [math.exp((1.0 - d[i, j] / (dmin + eps)) / h) for j in range(nt)]  # eqs 6-7
            for j in range(nt):
                cx[i, j] = w[j] / sum(w)  # eq 8
        cx_total = sum(max(cx[i, j] for i in range(ng)) for j in range(nt)) / nt  # eq 9
        losses.append(-math.log(cx_total))  # eq 10
    return float(np.mean(losses))


@pytest.fixture(scope="session")
def contextual_reference():
    """Eqs 4-10 transcribed literally with loops in float64, independent of the library:
    ``f(generated, target, h=0.5, eps=1e-5) -> float`` on arrays (N, C, ...)."""
    return _contextual_reference

"""ctxstyle.fast.contextual: the memory-bounded contextual loss (eqs 4-10) and its closed-form backward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctxstyle.fast import contextual as losses
from ctxstyle.errors import InputError
from ctxstyle.fast.contextual import contextual_loss, default_chunk_rows


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# contextual loss: values


def test_matches_direct_transcription_different_sizes(contextual_reference):
    g = _rand(2, 8, 5, 4, seed=1)
    t = _rand(2, 8, 3, 6, seed=2)
    for h in (0.1, 0.5, 2.0):
        ours = contextual_loss(g, t, band_width=h)
        assert ours.dtype == torch.float32 and ours.dim() == 0
        assert float(ours) == pytest.approx(contextual_reference(g.numpy(), t.numpy(), h), abs=1e-4)


def test_matches_direct_transcription_3d_input_and_float64(contextual_reference):
    g = _rand(1, 6, 11, seed=3, dtype=torch.float64)
    t = _rand(1, 6, 9, seed=4, dtype=torch.float64)
    ours = contextual_loss(g, t, chunk_size=4)
    assert ours.dtype == torch.float64
    assert float(ours) == pytest.approx(contextual_reference(g.numpy(), t.numpy()), abs=1e-10)


def test_identical_features_give_zero():
    # Each position is its own nearest neighbour with d_ii ~ 0 (rounding only), so
    # d~_ij = d_ij / eps ~ 1e5 for j != i and CX_ii = 1 to float precision: the loss is 0 up to
    # rounding (|loss| ~ 1e-7), not exactly 0 in general.
    x = _rand(2, 64, 12, 10, seed=5)
    loss = contextual_loss(x, x.clone())
    assert abs(float(loss)) < 1e-3


def test_repeated_positions_are_not_zero():
    # Why identical images need not give 0: k exact copies of a target vector share eq 8's mass.
    x = _rand(1, 16, 20, seed=6, dtype=torch.float64)
    t = torch.cat([x, x], dim=2)  # every target vector twice
    assert float(contextual_loss(t, t)) == pytest.approx(math.log(2), abs=1e-6)
    # In float32 the two copies' cosines can differ by one rounding step, which eq 6 amplifies by
    # 1 / (h eps) = 2e5 into logit differences of ~0.01: still log 2 to within 1e-2.
    assert float(contextual_loss(t.float(), t.float())) == pytest.approx(math.log(2), abs=1e-2)


def test_permutation_invariance():
    g = _rand(2, 16, 7, 9, seed=7)
    t = _rand(2, 16, 8, 5, seed=8)
    ref = contextual_loss(g, t)
    pg = torch.randperm(63, generator=torch.Generator().manual_seed(0))
    pt = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    g_perm = g.reshape(2, 16, -1)[:, :, pg]
    t_perm = t.reshape(2, 16, -1)[:, :, pt]
    assert float(contextual_loss(g_perm, t)) == pytest.approx(float(ref), abs=1e-5)
    assert float(contextual_loss(g, t_perm)) == pytest.approx(float(ref), abs=1e-5)
    assert float(contextual_loss(g_perm, t_perm)) == pytest.approx(float(ref), abs=1e-5)


def test_batch_is_mean_of_images():
    g = _rand(3, 8, 6, 6, seed=9)
    t = _rand(3, 8, 5, 5, seed=10)
    each = [float(contextual_loss(g[i : i + 1], t[i : i + 1])) for i in range(3)]
    assert float(contextual_loss(g, t)) == pytest.approx(float(np.mean(each)), abs=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 50, 96, 97, 1000])
def test_chunked_equals_unchunked(chunk):
    g = _rand(2, 32, 8, 12, seed=11, dtype=torch.float32).requires_grad_()  # 96 positions
    t = _rand(2, 32, 10, 7, seed=12, dtype=torch.float32).requires_grad_()
    full = contextual_loss(g, t, chunk_size=10_000)
    gg_full, gt_full = torch.autograd.grad(full, (g, t))
    part = contextual_loss(g, t, chunk_size=chunk)
    gg, gt = torch.autograd.grad(part, (g, t))
    assert float(part.detach()) == pytest.approx(float(full.detach()), abs=1e-5)
    torch.testing.assert_close(gg, gg_full, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gt, gt_full, rtol=1e-4, atol=1e-6)


def test_default_chunking_equals_unchunked(monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_BYTES", 2 * 500 * 4 * 37)  # 37 rows per chunk
    assert default_chunk_rows(500, batch=2) == 37
    g = _rand(2, 16, 700, seed=13).requires_grad_()
    t = _rand(2, 16, 500, seed=14).requires_grad_()
    a = contextual_loss(g, t)
    ga = torch.autograd.grad(a, g)[0]
    b = contextual_loss(g, t, chunk_size=700)
    gb = torch.autograd.grad(b, g)[0]
    assert float(a.detach()) == pytest.approx(float(b.detach()), abs=1e-5)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# contextual loss: gradients


def test_gradcheck_float64():
    g = _rand(2, 5, 3, 3, seed=15, dtype=torch.float64).requires_grad_()
    t = _rand(2, 5, 2, 4, seed=16, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: contextual_loss(a, b, 0.5, 1e-5, 2), (g, t))
    assert torch.autograd.gradcheck(lambda a, b: contextual_loss(a, b, 0.1, 1e-5, None), (g, t), fast_mode=True)


def test_gradients_finite_with_ties_and_zero_vectors():
    """Ties in the row and column maxima, and a generated vector equal to the target's mean (zero
    after centring: the norm clamp of the cosine): finite, and the plain loss's value and gradients."""
    from ctxstyle.method.function import contextual_loss as plain_contextual_loss

    x = _rand(1, 8, 10, seed=17, dtype=torch.float64)
    t0 = torch.cat([x[:, :, :6], x[:, :, :6]], dim=2)  # duplicated target columns (row-max ties)
    g0 = torch.cat([x, x, t0.mean(dim=2, keepdim=True)], dim=2)  # duplicated rows (column-max ties), the mean
    g, t = g0.clone().requires_grad_(), t0.clone().requires_grad_()
    plain = plain_contextual_loss(g, t)
    pg, pt = torch.autograd.grad(plain, (g, t))
    for chunk in (1, 4, None):
        loss = contextual_loss(g, t, chunk_size=chunk)
        gg, gt = torch.autograd.grad(loss, (g, t))
        assert torch.isfinite(loss) and torch.isfinite(gg).all() and torch.isfinite(gt).all()
        assert float(loss.detach()) == pytest.approx(float(plain.detach()), rel=1e-9)
        torch.testing.assert_close(gg, pg, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(gt, pt, rtol=1e-7, atol=1e-10)


def test_gradient_descent_decreases_loss():
    t = _rand(1, 16, 6, 6, seed=18)
    g = _rand(1, 16, 6, 6, seed=19).requires_grad_()
    opt = torch.optim.Adam([g], lr=0.1)
    with torch.no_grad():
        first = float(contextual_loss(g, t))
    for _ in range(15):
        opt.zero_grad()
        contextual_loss(g, t).backward()
        opt.step()
    with torch.no_grad():
        assert float(contextual_loss(g, t)) < 0.5 * first


def test_bf16_input_is_computed_in_float32():
    g = _rand(1, 16, 5, 5, seed=20)
    t = _rand(1, 16, 5, 5, seed=21)
    gb = g.bfloat16().requires_grad_()
    loss = contextual_loss(gb, t.bfloat16())
    assert loss.dtype == torch.float32
    ref = contextual_loss(gb.detach().float(), t.bfloat16().float())
    assert float(loss.detach()) == pytest.approx(float(ref), abs=1e-5)
    loss.backward()
    assert gb.grad.dtype == torch.bfloat16 and torch.isfinite(gb.grad.float()).all()


def test_float32_under_autocast():
    g = _rand(2, 16, 30, seed=27).requires_grad_()
    t = _rand(2, 16, 25, seed=28)
    ref = contextual_loss(g, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = contextual_loss(g, t)
    assert loss.dtype == torch.float32
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    g = _rand(2, 32, 9, 7, seed=25).requires_grad_()
    t = _rand(2, 32, 6, 8, seed=26).requires_grad_()
    cpu = contextual_loss(g, t, chunk_size=5)
    grads_cpu = torch.autograd.grad(cpu, (g, t))
    gc, tc = g.detach().cuda().requires_grad_(), t.detach().cuda().requires_grad_()
    for chunk in (5, None):
        gpu = contextual_loss(gc, tc, chunk_size=chunk)
        assert gpu.device.type == "cuda"
        grads_gpu = torch.autograd.grad(gpu, (gc, tc))
        assert float(gpu.detach()) == pytest.approx(float(cpu.detach()), abs=1e-4)
        for a, b in zip(grads_gpu, grads_cpu):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# contextual loss: band width


def test_band_width_limits():
    g = _rand(1, 8, 7, 5, seed=22)
    t = _rand(1, 8, 6, 4, seed=23)
    nt = 24
    # Large h flattens eq 8 to 1/Nt everywhere: CX -> 1/Nt, loss -> log Nt.
    assert float(contextual_loss(g, t, band_width=1e4)) == pytest.approx(math.log(nt), abs=1e-3)
    # Small h makes eq 8 one-hot on each generated feature's nearest target: CX -> fraction of
    # target features that are somebody's nearest neighbour (cosine after centring).
    mu = t.reshape(1, 8, -1).mean(2, keepdim=True)
    gn = F.normalize(g.reshape(1, 8, -1) - mu, dim=1)[0]
    tn = F.normalize(t.reshape(1, 8, -1) - mu, dim=1)[0]
    hit = (gn.T @ tn).argmax(dim=1).unique().numel()
    assert float(contextual_loss(g, t, band_width=1e-3)) == pytest.approx(-math.log(hit / nt), abs=1e-3)
    # In between, smaller h -> sharper eq 8 -> lower loss here.
    losses = [float(contextual_loss(g, t, band_width=h)) for h in (0.05, 0.5, 5.0)]
    assert losses[0] < losses[1] < losses[2] < math.log(nt)


def test_identical_stays_zero_for_any_band_width():
    x = _rand(1, 32, 6, 6, seed=24)
    for h in (0.01, 0.5, 10.0):
        assert abs(float(contextual_loss(x, x, band_width=h))) < 1e-3


# ---------------------------------------------------------------------------------------------
# contextual loss: input errors


@pytest.mark.parametrize(
    ("g", "t", "name", "words"),
    [
        (torch.zeros(4, 4), torch.zeros(1, 4, 4), "generated", "shape"),
        (torch.zeros(1, 4, 4), torch.zeros(1, 1, 4, 4, 4), "target", "shape"),
        (torch.zeros(1, 4, 3, 3), torch.zeros(1, 5, 3, 3), "target", "channels"),
        (torch.zeros(2, 4, 3, 3), torch.zeros(1, 4, 3, 3), "target", "batch"),
        (torch.full((1, 4, 3, 3), float("nan")), torch.zeros(1, 4, 3, 3), "generated", "NaN"),
        (torch.zeros(1, 4, 3, 3), torch.full((1, 4, 3, 3), float("inf")), "target", "infinite"),
        (torch.zeros(1, 4, 0, 3), torch.zeros(1, 4, 3, 3), "generated", "empty"),
        (torch.zeros(1, 4, 3, 3, dtype=torch.long), torch.zeros(1, 4, 3, 3), "generated", "floating"),
        (np.zeros((1, 4, 3, 3)), torch.zeros(1, 4, 3, 3), "generated", "Tensor"),
    ],
)
def test_input_errors(g, t, name, words):
    with pytest.raises(InputError) as err:
        contextual_loss(g, t)
    assert err.value.source == name
    assert words in str(err.value)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"band_width": 0.0}, "band_width"),
    ({"band_width": float("nan")}, "band_width"),
    ({"eps": -1.0}, "eps"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"chunk_size": 2.5}, "chunk_size"),
])
def test_parameter_errors(kwargs, name):
    x = _rand(1, 4, 3, 3)
    with pytest.raises(InputError) as err:
        contextual_loss(x, x, **kwargs)
    assert err.value.source == name

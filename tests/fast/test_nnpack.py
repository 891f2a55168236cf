"""ctxstyle.fast.nnpack: direct NNPACK convolutions equal F.conv2d, follow weight changes, and run
PyTorch's own operators on one thread only while inside ``threads()``."""

from __future__ import annotations

import pytest
import torch
from ctxstyle.fast import inference as M
from ctxstyle.fast import nnpack
from torch import nn

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not nnpack.available(), reason="no usable NNPACK in this torch build")]


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _conv(cin: int, cout: int, padding: int, seed: int) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, 3, padding=padding)


def _expected(conv: nn.Conv2d, x: torch.Tensor, relu: bool) -> torch.Tensor:
    with torch.no_grad():
        y = conv(x)
    return y.relu() if relu else y


@pytest.mark.parametrize("algorithm", ["wt8x8", "ft16x16"])
@pytest.mark.parametrize("cin,cout,padding,size", [(3, 16, 1, 23), (16, 8, 0, 18), (32, 32, 2, 16)])
@pytest.mark.parametrize("relu", [False, True])
def test_plan_equals_conv2d(algorithm, cin, cout, padding, size, relu):
    conv = _conv(cin, cout, padding, seed=cin + size)
    x = torch.randn(1, cin, size, size + 3)
    got = nnpack.Conv3x3Plan(conv, size, size + 3, relu, algorithm)(x)
    want = _expected(conv, x, relu)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    if relu:
        assert float(got.min()) >= 0.0


def test_conv3x3_follows_in_place_weight_updates():
    """A kernel transform is cached per layer and size; an optimizer step must invalidate it."""
    conv = _conv(16, 16, 1, seed=0)
    x = torch.randn(1, 16, 20, 20)
    assert torch.allclose(nnpack.conv3x3(conv, x), _expected(conv, x, False), atol=1e-4)
    with torch.no_grad():
        conv.weight.mul_(-2.0)
        conv.bias.add_(1.0)
    assert torch.allclose(nnpack.conv3x3(conv, x), _expected(conv, x, False), atol=1e-4)
    conv.weight = nn.Parameter(torch.randn_like(conv.weight) * 0.1)  # a new tensor altogether
    assert torch.allclose(nnpack.conv3x3(conv, x), _expected(conv, x, False), atol=1e-4)


def test_inference_tensor_weights_are_never_cached():
    """Weights made under inference mode have no version counter: an in-place change under
    inference mode would go unnoticed, so such layers get a fresh plan on every call."""
    with torch.inference_mode():
        conv = _conv(8, 8, 1, seed=6)
        x = torch.randn(1, 8, 18, 18)
        first = nnpack.conv3x3(conv, x)
        conv.weight.mul_(-1.0)
        assert torch.allclose(nnpack.conv3x3(conv, x), conv(x), atol=1e-4)
        assert not torch.allclose(first, conv(x), atol=1e-4)


def test_availability_check_leaves_the_global_rng_alone():
    nnpack.available.cache_clear()
    torch.manual_seed(123)
    assert nnpack.available()
    after_check = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after_check, torch.rand(3))


def test_plans_per_layer_are_bounded():
    conv = _conv(8, 8, 1, seed=1)
    for size in (16, 17, 18, 19):
        x = torch.randn(1, 8, size, size)
        assert torch.allclose(nnpack.conv3x3(conv, x, relu=True), _expected(conv, x, True), atol=1e-4)
    assert len(nnpack._plans[conv]) == nnpack._PLANS_PER_CONV


def test_algorithm_choice_does_not_depend_on_threads():
    """FFT tiles only for layers with <= 64 channels on both sides and >= 128x128 outputs; the
    choice has no thread-count input, so an image gives the same result alone or in a batch."""
    assert nnpack.choose_algorithm(64, 64, 256, 256) == "ft16x16"
    for shape in ((64, 128, 128, 128), (128, 64, 128, 128), (64, 64, 64, 64), (256, 256, 256, 256)):
        assert nnpack.choose_algorithm(*shape) == "wt8x8"


def test_single_threaded_context_keeps_nnpack_on_the_caller():
    torch.set_num_threads(2)
    conv = _conv(16, 32, 1, seed=7)
    x = torch.randn(1, 16, 40, 40)
    outside = nnpack.conv3x3(conv, x)
    with nnpack.single_threaded():
        assert nnpack._nnpack_threads() == 1
        with nnpack.threads():  # does nothing inside
            assert torch.get_num_threads() == 2 and nnpack._nnpack_threads() == 1
        inside = nnpack.conv3x3(conv, x)
    assert nnpack._nnpack_threads() == 2
    assert torch.equal(inside, outside)


def test_threads_context_single_threads_torch_and_restores():
    torch.set_num_threads(2)
    conv = _conv(16, 32, 1, seed=2)
    x = torch.randn(1, 16, 40, 40)
    outside = nnpack.conv3x3(conv, x)
    with nnpack.threads():
        assert torch.get_num_threads() == 1
        assert nnpack._nnpack_threads() == 2
        with nnpack.threads():  # nesting keeps the outer setting
            assert torch.get_num_threads() == 1 and nnpack._nnpack_threads() == 2
        inside = nnpack.conv3x3(conv, x)
    assert torch.get_num_threads() == 2
    assert torch.equal(inside, outside)  # each output is computed by one thread: same sums


def test_threads_context_restores_after_an_error():
    torch.set_num_threads(2)
    with pytest.raises(ValueError), nnpack.threads():
        raise ValueError("boom")
    assert torch.get_num_threads() == 2 and nnpack._nnpack_threads() == 2


def test_run_inference_fuses_the_relu_and_falls_back(monkeypatch):
    conv = _conv(16, 16, 1, seed=3)
    x = torch.randn(1, 16, 40, 40)
    want = _expected(conv, x, True)
    with torch.inference_mode():
        for direct in (True, False):  # ctxstyle.fast.nnpack, torch's NNPACK operator
            assert torch.allclose(M.run_modules([conv, nn.ReLU()], x, direct), want, atol=1e-4)
        monkeypatch.setattr(nnpack, "available", lambda: False)  # e.g. a torch build without it
        assert nnpack.conv3x3(conv, x) is None
        with nnpack.threads():
            assert torch.get_num_threads() == 1  # the one_torch_thread fixture's count, untouched
        assert torch.allclose(M.run_modules([conv, nn.ReLU()], x), want, atol=1e-4)


def test_bad_input_size_is_a_clear_error():
    conv = _conv(8, 8, 0, seed=4)
    plan = nnpack.Conv3x3Plan(conv, 16, 16, False)
    assert plan(torch.randn(1, 8, 16, 16)).shape == (1, 8, 14, 14)
    with pytest.raises(ValueError, match="planned for"):
        plan(torch.randn(1, 8, 12, 16))
    with pytest.raises(ValueError, match="planned for"):
        plan(torch.randn(2, 8, 16, 16))


"""Probe (issue 19): would NNPACK's Winograd convolutions speed up a float32 training step?

``python -m reproduce.benchmarks.encoder_nnpack [--quick] [--threads 2] [--rounds 7] [--out DIR]``
(or as part of ``python -m reproduce.benchmarks``) writes ``encoder_nnpack{,_quick}.{md,json}``;
``--quick``: the smoke profile's step, one round.

A float32 decoder step of the cpu profile runs the frozen encoder three times (content forward,
generated forward, backward to the generated image), more than half of the step (``training.md``), all 3x3
stride-1 convolutions with fixed weights. Stylization gains 2x from NNPACK's batch-1 Winograd
kernels (:mod:`ctxstyle.fast.nnpack`); this probe asks whether training would, on the machine it
runs on. The input gradient of ``y = conv(x, W, padding=1)`` is ``conv(dy, W^T flipped,
padding=1)``, so forward and backward both go through precomputed NNPACK plans (PyTorch's build
has no NNPACK backward routines). The patch lives here, not in the library: it is a measurement.

Three measurements, each interleaved round by round with the plain (oneDNN) path:

1. each eligible encoder convolution alone (forward, batch of the profile, best of rounds);
2. the encoder's forward and forward + backward to the image, as a step runs it;
3. whole ``ours`` training steps (``training_losses`` + backward + Adam), with the decoder gradient's
   relative difference to the plain step (the patch must change rounding only).

NNPACK runs either on its own thread pool per convolution ("NNPACK pool": PyTorch's operators on
one thread meanwhile, as the stylization path) or one image per Python worker thread with NNPACK
single-threaded in each ("NNPACK workers").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import weakref
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "lib") not in sys.path:
    sys.path.insert(0, str(REPO / "lib"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from reproduce.benchmarks.machine import machine_info, source_version  # noqa: E402
from reproduce.benchmarks.stylization import DEFAULT_OUT  # noqa: E402

#: Convolutions patched: 3x3 stride 1 zero padding 1, >= 64 channels on both sides (the 3-channel
#: first layer stays on oneDNN, as in the stylization path), inputs of >= 16x16 positions.
MIN_CHANNELS = 64
MIN_POSITIONS = 16 * 16
RUNNERS = ("NNPACK pool", "NNPACK workers")


def _eligible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding == (1, 1)
            and conv.padding_mode == "zeros" and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS)


def _on_pool(plan, x: Tensor) -> Tensor:
    from ctxstyle.fast import nnpack

    with nnpack.threads():
        return torch.cat([plan(x[i : i + 1]) for i in range(x.shape[0])])


_WORKERS: ThreadPoolExecutor | None = None


def _on_workers(plan, x: Tensor) -> Tensor:
    from ctxstyle.fast import nnpack

    global _WORKERS
    n = torch.get_num_threads()
    _WORKERS = _WORKERS or ThreadPoolExecutor(n)
    out: list[Tensor | None] = [None] * x.shape[0]

    def work(indices):
        with nnpack.single_threaded():
            for i in indices:
                out[i] = plan(x[i : i + 1])

    futures = [_WORKERS.submit(work, range(k, x.shape[0], n)) for k in range(n)]
    wait(futures)
    for f in futures:
        f.result()
    return torch.cat(out)


class _Plans:
    """NNPACK plans of one frozen convolution and of its input gradient (W^T flipped), per size."""

    def __init__(self, conv: nn.Conv2d, runner: str):
        self.conv, self.run = conv, _on_pool if runner == "NNPACK pool" else _on_workers
        self.transposed = nn.Conv2d(conv.out_channels, conv.in_channels, 3, padding=1, bias=False)
        with torch.no_grad():
            self.transposed.weight.copy_(conv.weight.detach().float().transpose(0, 1).flip(2, 3))
        self.plans: dict[tuple, object] = {}

    def plan(self, backward: bool, height: int, width: int):
        from ctxstyle.fast.nnpack import Conv3x3Plan

        key = (backward, height, width)
        if key not in self.plans:
            self.plans[key] = Conv3x3Plan(self.transposed if backward else self.conv, height, width, relu=False)
        return self.plans[key]


class _FrozenConv(torch.autograd.Function):
    """y = conv(x) and dx = conv^T(dy) through NNPACK; the frozen weights get no gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, plans: _Plans) -> Tensor:  # noqa: D102
        ctx.plans, ctx.size = plans, tuple(x.shape[-2:])
        ctx.channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        y = plans.run(plans.plan(False, *ctx.size), x.contiguous())
        return y.contiguous(memory_format=torch.channels_last) if ctx.channels_last else y

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        dx = ctx.plans.run(ctx.plans.plan(True, *ctx.size), grad.contiguous())
        return (dx.contiguous(memory_format=torch.channels_last) if ctx.channels_last else dx), None


#: Plans per convolution and runner, kept across ``with`` blocks (kernel transforms are computed once,
#: as a patched training run would: the encoder's weights are frozen).
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def nnpack_encoder(encoder: nn.Module, runner: str | None):
    """Inside: the encoder's eligible convolutions through NNPACK (``runner``: one of :data:`RUNNERS`;
    None: unchanged) for float32 CPU inputs of >= :data:`MIN_POSITIONS` positions. The weights must
    not change while plans exist (they are frozen in training)."""
    convs = [m for m in encoder.modules() if _eligible(m)] if runner else []
    for conv in convs:
        plans = _PLANS.setdefault(conv, {}).get(runner) or _PLANS[conv].setdefault(runner, _Plans(conv, runner))

        def forward(x, conv=conv, plans=plans):
            if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[-2] * x.shape[-1] < MIN_POSITIONS:
                return F.conv2d(x, conv.weight, conv.bias, padding=1)
            return _FrozenConv.apply(x, plans)

        conv.forward = forward
    try:
        yield len(convs)
    finally:
        for conv in convs:
            del conv.forward


def _interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Each function once per round, in turn, after one warm-up call each; wall seconds per call."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def layer_rows(net, content: Tensor, rounds: int) -> list[dict]:
    """Each eligible encoder convolution alone: oneDNN (channels_last, as training runs it) vs NNPACK."""
    from ctxstyle.fast.nnpack import Conv3x3Plan

    rows, h = [], net.encoder.normalize(content)
    with torch.no_grad():
        for name in net.encoder.layer_names:
            for m in net.encoder.stages[name]:
                if _eligible(m) and h.shape[-2] * h.shape[-1] >= MIN_POSITIONS:
                    x_cl = h.contiguous(memory_format=torch.channels_last)
                    x = h.contiguous()
                    plan = Conv3x3Plan(m, *h.shape[-2:], relu=False)
                    times = _interleaved({"oneDNN": lambda: m(x_cl), "NNPACK pool": lambda: _on_pool(plan, x),
                                          "NNPACK workers": lambda: _on_workers(plan, x)}, rounds)
                    best = {k: min(v) for k, v in times.items()}
                    rows.append({"layer": name, "shape": f"{m.in_channels}->{m.out_channels} at {h.shape[-2]}x{h.shape[-1]}",
                                 **{f"{k} ms": 1e3 * v for k, v in best.items()},
                                 **{f"x {k}": best["oneDNN"] / best[k] for k in RUNNERS}})
                h = m(h)
    return rows


def run(out: Path = DEFAULT_OUT, threads: int = 2, rounds: int = 7, quick: bool = False) -> Path:
    from reproduce.benchmarks.training import _ours_step, profile_sizes, setup

    from ctxstyle.method.net import VGG_STYLE_LAYERS
    from ctxstyle.train import training_losses

    torch.set_num_threads(threads)
    profile, rounds = ("smoke", 1) if quick else ("cpu", rounds)
    meta = {**machine_info(threads), "code": source_version(REPO), "rounds": rounds, "quick": quick,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    size, batch, layer = profile_sizes()[profile]
    meta.update(profile=profile, size=size, batch=batch, adain_layer=layer)
    print(f"encoder NNPACK probe: {size} px x {batch}, {threads} threads, load {meta['load_average']}", flush=True)
    cases = {k: setup("ours", size, batch, adain_layer=layer) for k in ("plain", *RUNNERS)}
    cfg, net, _, content, style = cases["plain"]

    # the decoder gradient with and without the patch (same net, same batch)
    def grads(runner):
        with nnpack_encoder(net.encoder, runner):
            losses = training_losses(net, content, style, cfg, fast=True)
            net.decoder.zero_grad(set_to_none=True)
            losses["total"].backward()
        return float(losses["total"].detach()), torch.cat([p.grad.flatten() for p in net.decoder.parameters()])

    loss0, g0 = grads(None)
    agreement = {}
    for runner in RUNNERS:
        loss1, g1 = grads(runner)
        agreement[runner] = {"loss_abs_diff": abs(loss1 - loss0),
                             "grad_rel_diff": float((g1 - g0).norm() / g0.norm())}
    net.decoder.zero_grad(set_to_none=True)

    layers = layer_rows(net, content.contiguous(), rounds)
    enc_layers = list(VGG_STYLE_LAYERS)

    def forward(runner):
        def fn():
            with nnpack_encoder(net.encoder, runner), torch.no_grad():
                net.encode(content, enc_layers)
        return fn

    def forward_backward(runner):
        def fn():
            x = content.clone().requires_grad_(True)
            with nnpack_encoder(net.encoder, runner):
                feats = net.encode(x, enc_layers)
                sum(f.float().pow(2).mean() for f in feats.values()).backward()
        return fn

    def step(key):
        def fn():
            with nnpack_encoder(cases[key][1].encoder, None if key == "plain" else key):
                _ours_step(*cases[key])
        return fn

    parts = {}
    for what, make in (("encoder forward", forward), ("encoder forward + backward", forward_backward)):
        parts[what] = _interleaved({k: make(None if k == "plain" else k) for k in ("plain", *RUNNERS)}, rounds)
    parts["training step (ours)"] = _interleaved({k: step(k) for k in ("plain", *RUNNERS)}, rounds)
    whole = []
    for what, times in parts.items():
        base = statistics.median(times["plain"])
        for k, v in times.items():
            whole.append({"measure": what, "variant": "oneDNN (plain)" if k == "plain" else k,
                          "median_s": statistics.median(v), "best_s": min(v), "x_plain": base / statistics.median(v)})
            print(f"  {what:28s} {k:15s} median {statistics.median(v):.4f} s  x plain {base / statistics.median(v):.2f}",
                  flush=True)
    meta["load_average_end"] = machine_info(threads)["load_average"]
    stem = Path(out) / ("encoder_nnpack" + ("_quick" if quick else "") + _policy_suffix(meta["omp_wait_policy"]))
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "agreement": agreement, "layers": layers,
                                                     "whole": whole}, indent=1))
    stem.with_suffix(".md").write_text("\n".join(report_lines(meta, agreement, layers, whole)) + "\n")
    print(f"wrote {stem}.md, .json", flush=True)
    return stem.with_suffix(".md")


def _policy_suffix(policy: str) -> str:
    """File-name suffix for a run under a non-default OpenMP wait policy (``_omp_passive``)."""
    return f"_omp_{policy.lower()}" if policy else ""


def verdict(record: dict) -> str:
    """One sentence: whether the best NNPACK variant's training step beats the plain one, and by how much."""
    step = {r["variant"]: r["x_plain"] for r in record["whole"] if r["measure"] == "training step (ours)"}
    best = max(RUNNERS, key=lambda k: step[k])
    if step[best] > 1.0:
        return f"NNPACK in the training step pays on this machine: {step[best]:.2f}x the plain step ({best})"
    return (f"NNPACK in the training step does not pay on this machine: the best variant ({best}) is "
            f"{step[best]:.2f}x the plain step")


def report_lines(meta: dict, agreement: dict, layers: list[dict], whole: list[dict]) -> list[str]:
    """The markdown report (every number from the run's record)."""
    lines = [
        "# Probe: the frozen encoder's convolutions through NNPACK in a float32 training step",
        "",
        f"`python -m reproduce.benchmarks.encoder_nnpack --threads {meta['threads']} --rounds {meta['rounds']}` "
        f"({meta['date']}; code {meta['code']}; {meta['cpu']}, CPU flags {meta['cpu_flags']}, {meta['logical_cpus']} "
        f"logical CPUs, torch {meta['torch']}, {meta['threads']} threads; load average {meta['load_average']} at the "
        f"start, {meta['load_average_end']} at the end; OpenMP wait policy "
        f"{meta['omp_wait_policy'] or 'unset (the default: threads spin after each parallel region)'}). "
        f"{meta['profile'].capitalize()} profile's step: {meta['size']} px crops x {meta['batch']}, "
        f"AdaIN at {meta['adain_layer']}, `ours`, float32, channels_last. What the probe does: "
        "`reproduce/benchmarks/encoder_nnpack.py`'s docstring.",
        "",
        f"**{verdict({'whole': whole})}.** Same values as the plain step up to rounding: "
        + "; ".join(f"{k}: decoder gradient relative difference {a['grad_rel_diff']:.1e}, loss difference "
                    f"{a['loss_abs_diff']:.1e}" for k, a in agreement.items()) + ".",
        "",
        "## Whole passes (medians over interleaved rounds; x plain > 1: faster)",
        "",
        "| measure | variant | median (s) | best (s) | x plain |",
        "|---|---|---:|---:|---:|",
        *(f"| {r['measure']} | {r['variant']} | {r['median_s']:.4f} | {r['best_s']:.4f} | {r['x_plain']:.2f} |"
          for r in whole),
        "",
        "## Each eligible convolution alone (forward, best of rounds)",
        "",
        "| layer | convolution | oneDNN (ms) | NNPACK pool (ms) | NNPACK workers (ms) | x pool | x workers |",
        "|---|---|---:|---:|---:|---:|---:|",
        *(f"| {r['layer']} | {r['shape']} | {r['oneDNN ms']:.2f} | {r['NNPACK pool ms']:.2f} | "
          f"{r['NNPACK workers ms']:.2f} | {r['x NNPACK pool']:.2f} | {r['x NNPACK workers']:.2f} |" for r in layers),
        "",
        "Alone, a convolution can be faster on NNPACK than on oneDNN while the whole pass is not: in a pass the "
        "convolutions alternate with PyTorch's own multi-threaded operators (ReLU, pooling, the layers left on "
        "oneDNN), whose threads and NNPACK's compete for the same cores. A run with `OMP_WAIT_POLICY=PASSIVE` "
        "(PyTorch's threads sleep instead of spinning; `encoder_nnpack_omp_passive.md` where it was run) tests that "
        "explanation; it also slows PyTorch's own parallel operators, so it is no setting for the library.",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smoke profile's step, one round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from ctxstyle.fast import nnpack

    if not nnpack.available():
        print("encoder NNPACK probe: NNPACK is not available in this PyTorch build; nothing to measure")
        return 1
    run(args.out, args.threads, args.rounds, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

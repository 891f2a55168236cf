"""Probe (issue 19): would NNPACK's Winograd convolutions speed up a float32 training step?

``python -m reproduce.benchmarks.encoder_nnpack [--quick] [--threads 2] [--rounds 7] [--out DIR]``
(or as part of ``python -m reproduce.benchmarks``) writes ``encoder_nnpack{,_quick}.{md,json}``;
``--quick``: the smoke profile's step, one round.

A float32 decoder step of the cpu profile runs the frozen encoder three times (content forward,
generated forward, backward to the generated image), a large share of the step (``training.md``),
all 3x3 stride-1 convolutions with fixed weights. Stylization gains much from NNPACK's batch-1
Winograd kernels (:mod:`ctxstyle.fast.nnpack`, ``stylization.md``); this probe asks whether training
would, on the machine it runs on. The input gradient of ``y = conv(x, W, padding=1)`` is ``conv(dy, W^T flipped,
padding=1)``, so forward and backward both go through precomputed NNPACK plans (PyTorch's build
has no NNPACK backward routines). The patch lives here, not in the library: it is a measurement.

Three measurements, each interleaved round by round with the plain (oneDNN) path:

1. each eligible encoder convolution alone (forward, batch of the profile, best of rounds);
2. the encoder's forward and forward + backward to the image, as a step runs it;
3. whole ``ours`` training steps (``training_losses`` + backward + Adam), with the decoder gradient's
   relative difference to the plain step, set beside the plain step's own difference between two
   memory layouts (the patch must change rounding only).

NNPACK runs either on its own thread pool per convolution ("NNPACK pool": PyTorch's operators on
one thread meanwhile, as the stylization path) or one image per Python worker thread with NNPACK
single-threaded in each ("NNPACK workers").
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "lib") not in sys.path:
    sys.path.insert(0, str(REPO / "lib"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from ctxstyle.fast.inference import cpu_autocast  # noqa: E402
from reproduce.benchmarks.machine import command_line, flags_phrase, machine_info, source_version  # noqa: E402
from reproduce.benchmarks import DEFAULT_OUT, read_record  # noqa: E402

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


_WORKERS: dict[int, ThreadPoolExecutor] = {}


def _on_workers(plan, x: Tensor) -> Tensor:
    """One image per worker thread (``torch.get_num_threads()`` of them), NNPACK single-threaded in each."""
    from ctxstyle.fast import nnpack

    n = torch.get_num_threads()
    pool = _WORKERS.setdefault(n, ThreadPoolExecutor(n, thread_name_prefix="encoder-nnpack"))
    out: list[Tensor | None] = [None] * x.shape[0]

    def work(indices):
        with nnpack.single_threaded():
            for i in indices:
                out[i] = plan(x[i : i + 1])

    futures = [pool.submit(work, range(k, x.shape[0], n)) for k in range(n)]
    wait(futures)
    for f in futures:
        f.result()
    return torch.cat(out)


class _Plans:
    """NNPACK plans of one frozen convolution and of its input gradient (W^T flipped), per input size;
    made anew when the convolution's weights have changed."""

    def __init__(self, conv: nn.Conv2d):
        self.conv = conv
        self.state, self.plans = None, {}

    def plan(self, backward: bool, height: int, width: int):
        from ctxstyle.fast.nnpack import Conv3x3Plan, weights_version

        if self.state != weights_version(self.conv):
            self.state, self.plans = weights_version(self.conv), {}
            self.transposed = nn.utils.skip_init(nn.Conv2d, self.conv.out_channels, self.conv.in_channels, 3,
                                                 padding=1, bias=False)  # skip_init: the RNG is left alone
            with torch.no_grad():
                self.transposed.weight.copy_(self.conv.weight.detach().float().transpose(0, 1).flip(2, 3))
        key = (backward, height, width)
        if key not in self.plans:
            self.plans[key] = Conv3x3Plan(self.transposed if backward else self.conv, height, width, relu=False)
        return self.plans[key]


class _FrozenConv(torch.autograd.Function):
    """y = conv(x) and dx = conv^T(dy) through NNPACK; the frozen weights get no gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, plans: _Plans, run) -> Tensor:  # noqa: D102
        ctx.plans, ctx.run, ctx.size = plans, run, tuple(x.shape[-2:])
        ctx.channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        y = run(plans.plan(False, *ctx.size), x.contiguous())
        return y.contiguous(memory_format=torch.channels_last) if ctx.channels_last else y

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        dx = ctx.run(ctx.plans.plan(True, *ctx.size), grad.contiguous())
        return (dx.contiguous(memory_format=torch.channels_last) if ctx.channels_last else dx), None, None


class NNPACKEncoder:
    """``with NNPACKEncoder(encoder, runner):`` the encoder's eligible convolutions run through NNPACK
    (``runner``: one of :data:`RUNNERS`; None: unchanged) for float32 CPU inputs of at least
    :data:`MIN_POSITIONS` positions; smaller maps, other dtypes and autocast take ``F.conv2d``. The
    plans (kernel transforms) live as long as this object, so a run makes them once, as a patched
    training run would; they are made anew if the weights change. The block yields the number of
    convolutions patched; on leaving it (also by an exception) the modules are as before."""

    def __init__(self, encoder: nn.Module, runner: str | None):
        if runner is not None and runner not in RUNNERS:
            raise ValueError(f"runner must be one of {RUNNERS} or None, got {runner!r}")
        self.run = _on_pool if runner == "NNPACK pool" else _on_workers
        self.convs = [m for m in encoder.modules() if _eligible(m)] if runner else []
        self.plans = {conv: _Plans(conv) for conv in self.convs}
        self.patched: list[nn.Conv2d] = []

    def _forward(self, conv: nn.Conv2d, x: Tensor) -> Tensor:
        if (x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4 or cpu_autocast()
                or x.shape[-2] * x.shape[-1] < MIN_POSITIONS):
            return F.conv2d(x, conv.weight, conv.bias, padding=1)
        return _FrozenConv.apply(x, self.plans[conv], self.run)

    def __enter__(self) -> int:
        if self.patched:
            raise RuntimeError("NNPACKEncoder: already inside this block")
        try:
            for conv in self.convs:
                if "forward" in vars(conv):
                    raise RuntimeError(f"NNPACKEncoder: {conv} is already patched")
                conv.forward = functools.partial(self._forward, conv)
                self.patched.append(conv)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return len(self.convs)

    def __exit__(self, *exc) -> None:
        while self.patched:
            del self.patched.pop().forward


def _interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Each function once per round, in turn, after one warm-up call each; wall seconds per call."""
    from reproduce.benchmarks.training import interleaved_rounds

    for fn in fns.values():
        fn()
    return interleaved_rounds(fns, rounds)


def layer_rows(net, content: Tensor, patchers: dict, rounds: int) -> list[dict]:
    """Each patched encoder convolution alone, called as a pass calls it (channels_last input, the
    NNPACK variants' layout copies included): oneDNN vs each runner, best of rounds."""
    rows, h = [], net.encoder.normalize(content).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for name in net.encoder.layer_names:
            for m in net.encoder.stages[name]:
                if _eligible(m) and h.shape[-2] * h.shape[-1] >= MIN_POSITIONS:
                    def call(runner, m=m, x=h):
                        with patchers[runner] if runner else contextlib.nullcontext():
                            return m(x)
                    times = _interleaved({k: functools.partial(call, k) for k in (None, *RUNNERS)}, rounds)
                    best = {("oneDNN" if k is None else k): min(v) for k, v in times.items()}
                    rows.append({"layer": name, "shape": f"{m.in_channels}->{m.out_channels} at {h.shape[-2]}x{h.shape[-1]}",
                                 **{f"{k} ms": 1e3 * v for k, v in best.items()},
                                 **{f"x {k}": best["oneDNN"] / best[k] for k in RUNNERS}})
                h = m(h)
    return rows


def _decoder_gradient(net, cfg, content: Tensor, style, patcher=None) -> tuple[float, Tensor]:
    from ctxstyle.train import training_losses

    with patcher or contextlib.nullcontext():
        losses = training_losses(net, content, style, cfg, fast=True)
        net.decoder.zero_grad(set_to_none=True)
        losses["total"].backward()
    grad = torch.cat([p.grad.flatten() for p in net.decoder.parameters()])
    net.decoder.zero_grad(set_to_none=True)
    return float(losses["total"].detach()), grad


def run(out: Path = DEFAULT_OUT, threads: int = 2, rounds: int = 7, quick: bool = False) -> Path:
    from reproduce.benchmarks.training import ours_step, profile_sizes, setup

    from ctxstyle.method.net import VGG_STYLE_LAYERS

    torch.set_num_threads(threads)
    profile, rounds = ("smoke", 1) if quick else ("cpu", rounds)
    meta = {**machine_info(threads), "code": source_version(REPO), "rounds": rounds, "quick": quick,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    size, batch, layer = profile_sizes()[profile]
    meta.update(profile=profile, size=size, batch=batch, adain_layer=layer)
    print(f"encoder NNPACK probe: {size} px x {batch}, {threads} threads, load {meta['load_average']}", flush=True)
    cases = {k: setup("ours", size, batch, adain_layer=layer) for k in ("plain", *RUNNERS)}
    cfg, net, _, content, style = cases["plain"]
    patchers = {k: NNPACKEncoder(net.encoder, k) for k in RUNNERS}

    # the decoder gradient with and without the patch (same net, same batch), and the plain step's
    # own spread under another memory layout (NCHW instead of channels_last: rounding alone)
    loss0, g0 = _decoder_gradient(net, cfg, content, style)
    nchw = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    loss_l, g_l = _decoder_gradient(nchw, cfg, content.contiguous(), style)
    agreement = {"oneDNN in NCHW (reference: rounding alone)": {
        "loss_abs_diff": abs(loss_l - loss0), "grad_rel_diff": float((g_l - g0).norm() / g0.norm())}}
    for runner in RUNNERS:
        loss1, g1 = _decoder_gradient(net, cfg, content, style, patchers[runner])
        agreement[runner] = {"loss_abs_diff": abs(loss1 - loss0), "grad_rel_diff": float((g1 - g0).norm() / g0.norm())}

    layers = layer_rows(net, content, patchers, rounds)
    enc_layers = list(VGG_STYLE_LAYERS)

    def forward(runner):
        with patchers[runner] if runner else contextlib.nullcontext(), torch.no_grad():
            net.encode(content, enc_layers)

    def forward_backward(runner):
        x = content.clone().requires_grad_(True)
        with patchers[runner] if runner else contextlib.nullcontext():
            feats = net.encode(x, enc_layers)
            sum(f.float().pow(2).mean() for f in feats.values()).backward()

    step_patchers = {k: NNPACKEncoder(cases[k][1].encoder, k) for k in RUNNERS}

    def step(runner):
        with step_patchers[runner] if runner else contextlib.nullcontext():
            ours_step(*cases[runner or "plain"])

    parts = {what: _interleaved({k: functools.partial(fn, k) for k in (None, *RUNNERS)}, rounds)
             for what, fn in (("encoder forward", forward), ("encoder forward + backward", forward_backward),
                              ("training step (ours)", step))}
    whole = []
    for what, times in parts.items():
        base = statistics.median(times[None])
        for k, v in times.items():
            whole.append({"measure": what, "variant": k or "oneDNN (plain)", "median_s": statistics.median(v),
                          "best_s": min(v), "x_plain": base / statistics.median(v),
                          "x_plain_best": min(times[None]) / min(v)})
            print(f"  {what:28s} {k or 'plain':15s} median {statistics.median(v):.4f} s  x plain "
                  f"{base / statistics.median(v):.2f}", flush=True)
    meta["load_average_end"] = machine_info(threads)["load_average"]
    stem = Path(out) / ("encoder_nnpack" + ("_quick" if quick else "") + _policy_suffix(meta["omp_wait_policy"]))
    record = {"meta": meta, "agreement": agreement, "layers": layers, "whole": whole}
    default = stem.parent / f"encoder_nnpack{'_quick' if quick else ''}.json"
    if meta["omp_wait_policy"] and default.is_file():  # the plain step under the default policy, for comparison
        record["default_policy"] = json.loads(default.read_text())
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text("\n".join(report_lines(record, stem.parent)) + "\n")
    record.pop("default_policy", None)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(f"wrote {stem}.md, .json", flush=True)
    return stem.with_suffix(".md")


def _policy_suffix(policy: str) -> str:
    """File-name suffix for a run under a non-default OpenMP wait policy (``_omp_passive``)."""
    return f"_omp_{policy.lower()}" if policy else ""


#: A variant "pays" from this ratio to the plain step on (median and best of rounds both): less is
#: within what a shared machine's noise can give.
PAYS = 1.05


def _step_rows(record: dict) -> dict[str, dict]:
    return {r["variant"]: r for r in record["whole"] if r["measure"] == "training step (ours)"}


def verdict(record: dict) -> str:
    """One sentence: whether the best NNPACK variant's training step beats the same run's plain step."""
    step = _step_rows(record)
    best = max(RUNNERS, key=lambda k: step[k]["x_plain"])
    x, x_best = step[best]["x_plain"], step[best].get("x_plain_best", step[best]["x_plain"])
    policy = record["meta"].get("omp_wait_policy")
    under = f" under OMP_WAIT_POLICY={policy}" if policy else ""
    if min(x, x_best) >= PAYS:
        return f"NNPACK in the training step pays on this machine{under}: {x:.2f}x that run's plain step ({best})"
    return (f"NNPACK in the training step does not pay on this machine{under}: the best variant ({best}) is "
            f"{x:.2f}x that run's plain step (median; {x_best:.2f}x best of rounds; 'pays' needs >= {PAYS}x on both)")


def _agreement_sentence(agreement: dict) -> str:
    ref_key = next(k for k in agreement if k not in RUNNERS)
    ref = agreement[ref_key]["grad_rel_diff"]
    parts = [f"{k}: {agreement[k]['grad_rel_diff']:.1e} (loss {agreement[k]['loss_abs_diff']:.1e})" for k in RUNNERS]
    worst = max(agreement[k]["grad_rel_diff"] for k in RUNNERS)
    within = worst <= 10 * max(ref, 1e-12)
    return ("Decoder gradient of one step, relative difference to the plain step: " + "; ".join(parts)
            + f"; the plain step with the network in NCHW instead of channels_last (rounding alone): {ref:.1e} "
            + f"(loss {agreement[ref_key]['loss_abs_diff']:.1e}). "
            + ("The NNPACK variants stay within 10x of that rounding difference: same step, other rounding."
               if within else "**The NNPACK variants differ by more than 10x that rounding difference: check "
               "the patch before trusting the timings.**"))


def _reading(record: dict) -> str:
    """What the per-convolution and whole-pass ratios say together (computed from the record)."""
    layers = record["layers"]
    fwd = {r["variant"]: r["x_plain"] for r in record["whole"] if r["measure"] == "encoder forward"}
    best = max(RUNNERS, key=lambda k: fwd[k])
    faster = sum(1 for r in layers if max(r[f"x {k}"] for k in RUNNERS) > 1.0)
    text = (f"{faster} of {len(layers)} patched convolutions are faster on NNPACK alone (best runner, layout copies "
            f"included) and the encoder's whole forward pass is {fwd[best]:.2f}x the plain one ({best}).")
    if faster and fwd[best] < 1.0:
        text += (" A likely cause, not measured apart here: inside a pass the convolutions alternate with "
                 "PyTorch's own multi-threaded operators (ReLU, pooling, the layers left on oneDNN), whose "
                 "OpenMP threads keep spinning after each operator and compete with NNPACK's threads for the same "
                 "cores. A run under `OMP_WAIT_POLICY=PASSIVE` (threads sleep instead of spinning; "
                 "`encoder_nnpack_omp_passive.md` where it was run) tests that reading.")
    return text


def report_lines(record: dict, out: Path | None = None) -> list[str]:
    """The markdown report (every number from the run's record; ``out``: the folder it is written to)."""
    meta, layers, whole = record["meta"], record["layers"], record["whole"]
    env = f"OMP_WAIT_POLICY={meta['omp_wait_policy']} " if meta.get("omp_wait_policy") else ""
    flags = "--quick" if meta.get("quick") else f"--rounds {meta['rounds']}"
    command = command_line(meta, f"python -m reproduce.benchmarks.encoder_nnpack --threads {meta['threads']} {flags}", out)
    shared = float(meta["load_average"].split()[0]) >= 0.5 * (meta.get("logical_cpus") or 1)
    lines = [
        "# Probe: the frozen encoder's convolutions through NNPACK in a float32 training step",
        "",
        f"`{env}{command}` "
        f"({meta['date']}; code {meta['code']}; {meta['cpu']}, CPU flags {flags_phrase(meta)}, {meta['logical_cpus']} "
        f"logical CPUs, torch {meta['torch']}, {meta['threads']} threads; load average {meta['load_average']} at the "
        f"start, {meta['load_average_end']} at the end"
        + (": **shared machine**, absolute times are noisy; every ratio compares variants timed interleaved in one "
           "process" if shared else "") + "). "
        f"The {meta['profile']} profile's sizes ({meta['size']} px crops x {meta['batch']}, AdaIN at "
        f"{meta['adain_layer']}), `ours`, in float32 and channels_last (on a CPU with bf16 units the profile itself "
        "trains in bf16). What the probe does: `reproduce/benchmarks/encoder_nnpack.py`'s docstring.",
        "",
        f"**{verdict(record)}.** " + _agreement_sentence(record["agreement"]),
    ]
    default = record.get("default_policy")
    if default:
        here, there = _step_rows(record), _step_rows(default)
        best = max(RUNNERS, key=lambda k: here[k]["x_plain"])
        plain0 = there["oneDNN (plain)"]["median_s"]
        lines += ["", f"Against the plain step of the run under the default policy ({default['meta']['date']}, "
                      f"another process): the best NNPACK step here ({best}, {here[best]['median_s']:.4f} s) is "
                      f"{plain0 / here[best]['median_s']:.2f}x that run's plain step ({plain0:.4f} s); the plain "
                      f"step here is {plain0 / here['oneDNN (plain)']['median_s']:.2f}x it."]
    lines += [
        "",
        "## Whole passes (interleaved rounds; x plain > 1: faster)",
        "",
        "| measure | variant | median (s) | best (s) | x plain (medians) | x plain (bests) |",
        "|---|---|---:|---:|---:|---:|",
        *(f"| {r['measure']} | {r['variant']} | {r['median_s']:.4f} | {r['best_s']:.4f} | {r['x_plain']:.2f} | "
          f"{r.get('x_plain_best', float('nan')):.2f} |" for r in whole),
        "",
        "## Each patched convolution alone (forward, channels_last input as in a pass, best of rounds)",
        "",
        "| layer | convolution | oneDNN (ms) | NNPACK pool (ms) | NNPACK workers (ms) | x pool | x workers |",
        "|---|---|---:|---:|---:|---:|---:|",
        *(f"| {r['layer']} | {r['shape']} | {r['oneDNN ms']:.2f} | {r['NNPACK pool ms']:.2f} | "
          f"{r['NNPACK workers ms']:.2f} | {r['x NNPACK pool']:.2f} | {r['x NNPACK workers']:.2f} |" for r in layers),
        "",
        _reading(record),
    ]
    return lines


def render(json_path: Path) -> Path:
    """Write the Markdown of a recorded probe (its ``encoder_nnpack*.json``) again; runs nothing.
    A record made under a non-default wait policy is set beside the default record in its folder."""
    json_path = Path(json_path)
    record = read_record(json_path, "an encoder NNPACK probe", ("meta", "layers", "whole"))
    meta = record["meta"]
    default = json_path.parent / f"encoder_nnpack{'_quick' if meta.get('quick') else ''}.json"
    if meta.get("omp_wait_policy") and default.is_file():
        record["default_policy"] = json.loads(default.read_text())
    md = json_path.with_suffix(".md")
    md.write_text("\n".join(report_lines(record, json_path.parent)) + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smoke profile's step, one round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="write the Markdown of a recorded probe (its .json) again; runs nothing")
    args = parser.parse_args(argv)
    if args.render is not None:
        print(f"wrote {render(args.render)}", flush=True)
        return 0
    from ctxstyle.fast import nnpack

    if not nnpack.available():
        print("encoder NNPACK probe: NNPACK is not available in this PyTorch build; nothing to measure")
        return 1
    run(args.out, args.threads, args.rounds, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

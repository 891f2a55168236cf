"""Benchmark: decoder training step time per profile and loss, and where the time goes.

``python -m reproduce.benchmarks.training [--quick] [--threads 2] [--out DIR]`` (or as part of
``python -m reproduce.benchmarks``). Writes ``training{,_quick}.csv``, ``.md`` and ``.json``.

For each profile of ``reproduce/profiles.yaml`` (its ``image_size`` and ``batch_size``: smoke
32 px x 2, cpu 64 px x 4, paper 256 px x 8) and each method (``ours``, ``adain``,
``contextual``), one training step exactly as :func:`ctxstyle.train.train` runs it
(``build_net``, channels_last per the config, Adam; ``training_losses`` + ``zero_grad`` +
``backward`` + ``step``) on smooth random images (blurred noise; the contextual loss's backward
cost depends a little on the data). Forward hooks on the encoder and decoder time their calls
(encoder call 1 = content, 2 = style, 3 = generated); "losses" is the rest of the forward
(AdaIN, contextual / style / MSE losses); backward and optimizer are timed around their calls.
One step per loss of the ``cpu`` profile (with ``--quick``: the ``smoke`` profile, contextual loss
only) is also run under ``torch.profiler`` for a table of the top operators. The paper profile (256 px x 8 on CPU) is
timed for one step only (no warm-up: it takes tens of seconds per step here).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "lib"
if str(LIB) not in sys.path:
    sys.path.insert(0, str(LIB))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from reproduce.benchmarks.machine import (bf16_hardware, command_line, flags_phrase, load_average,  # noqa: E402
                                          machine_info)
from reproduce.benchmarks import DEFAULT_OUT, read_record  # noqa: E402
from reproduce.benchmarks.stylization import count_flops  # noqa: E402
from reproduce.runner import PROFILES_PATH, environment, load_profiles  # noqa: E402

LOSSES = ("reconstruction", "ours", "adain", "contextual")
PHASES = ("encoder_content", "encoder_style", "encoder_generated", "decoder", "losses", "backward", "optimizer")


def profile_sizes(path: Path = PROFILES_PATH) -> dict[str, tuple[int, int, str]]:
    """``{profile: (training crop size, batch size, AdaIN layer)}``: what one decoder step sees."""
    profiles = load_profiles(path)
    out = {}
    for name, p in profiles.items():
        common = p.get("common") or {}
        if "image_size" in common:
            out[name] = (int(common.get("crop_size") or common["image_size"]), int(common["batch_size"]),
                         str(common.get("adain_layer", "relu4_1")))
    return out


def smooth_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    low = torch.rand(n, 1, max(2, size // 8), max(2, size // 8), generator=gen)
    img = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (img + 0.05 * torch.rand(n, 1, size, size, generator=gen)).clamp_(0, 1)


class PhaseTimer:
    """Wall time of every encoder / decoder forward call, via forward (pre-)hooks."""

    def __init__(self, net):
        self.calls: list[tuple[str, float]] = []
        self._start: dict[str, float] = {}
        self.handles = []
        for name, module in (("encoder", net.encoder), ("decoder", net.decoder)):
            self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            self.handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(module, args):
            self._start[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.calls.append((name, time.perf_counter() - self._start.pop(name)))
        return hook

    def reset(self):
        self.calls = []

    def remove(self):
        for h in self.handles:
            h.remove()


_NETS: dict = {}


def _build_net(cfg):
    """``build_net(cfg)``, built once per set of layers and copied (loading the weights takes ~2 s)."""
    from ctxstyle.train import build_net

    key = (cfg.encoder, cfg.adain_layer, cfg.method, cfg.style_layers, cfg.content_layers, cfg.cx_style_layers,
           cfg.seed)
    if key not in _NETS:
        torch.manual_seed(cfg.seed)
        _NETS[key] = build_net(cfg)
    return copy.deepcopy(_NETS[key])


def setup(loss: str, size: int, batch: int, seed: int = 0, **overrides):
    from ctxstyle.train import TrainConfig

    cfg = TrainConfig(method=loss, image_size=size, batch_size=batch, seed=seed, **overrides)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = _build_net(cfg)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    content, style = smooth_images(batch, size, gen), smooth_images(batch, size, gen)
    with torch.no_grad():
        net.decoder.calibrate(net.encode(content, [cfg.adain_layer])[cfg.adain_layer])
    if cfg.channels_last:
        content = content.contiguous(memory_format=torch.channels_last)
        style = style.contiguous(memory_format=torch.channels_last)
    if cfg.method == "reconstruction":
        style = None
    elif cfg.style_from_statistics:  # as ctxstyle.train.train: the style bank's statistics, computed once
        from ctxstyle.train import style_statistics

        style = style_statistics(net, style, {cfg.adain_layer, *cfg.loss_style_layers})
    optimizer = torch.optim.Adam(net.decoder.parameters(), lr=cfg.lr)
    net.decoder.train()
    return cfg, net, optimizer, content, style


def timed_step(cfg, net, optimizer, content, style, timer: PhaseTimer) -> dict:
    from ctxstyle.train import training_losses

    timer.reset()
    t0 = time.perf_counter()
    losses = training_losses(net, content, style, cfg, fast=True)
    t1 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    t2 = time.perf_counter()
    optimizer.step()
    t3 = time.perf_counter()
    enc = [t for name, t in timer.calls if name == "encoder"]
    dec = sum(t for name, t in timer.calls if name == "decoder")
    if not isinstance(style, torch.Tensor):  # style statistics given, or none: no style encoding
        enc.insert(1, 0.0)
    enc += [0.0] * (3 - len(enc))
    return {
        "step_s": t3 - t0, "forward_s": t1 - t0,
        "encoder_content": enc[0], "encoder_style": enc[1], "encoder_generated": sum(enc[2:]),
        "decoder": dec, "losses": (t1 - t0) - sum(enc) - dec, "backward": t2 - t1, "optimizer": t3 - t2,
        "loss": float(losses["total"].detach()),
    }


@contextlib.contextmanager
def old_mean_std():
    """``ctxstyle.method.function.mean_std`` as before issue 8 (``Tensor.var``) everywhere training uses it."""
    from ctxstyle import train
    from ctxstyle.method import function, net

    from reproduce.benchmarks.stylization import old_mean_std as old

    saved = [(mod, mod.mean_std) for mod in (function, net, train)]
    for mod, _ in saved:
        mod.mean_std = old
    try:
        yield
    finally:
        for mod, fn in saved:
            mod.mean_std = fn


def bench_case(profile: str, loss: str, size: int, batch: int, warmup: int, steps: int, before: bool = False,
               **overrides) -> dict:
    cfg, net, optimizer, content, style = setup(loss, size, batch, **overrides)
    timer = PhaseTimer(net)
    flops = None
    with old_mean_std() if before else contextlib.nullcontext():
        for i in range(warmup):
            if i == 0:  # the warm-up step also counts the FLOPs (forward + backward)
                flops = count_flops(lambda: timed_step(cfg, net, optimizer, content, style, timer))
            else:
                timed_step(cfg, net, optimizer, content, style, timer)
        records = [timed_step(cfg, net, optimizer, content, style, timer) for _ in range(steps)]
    timer.remove()
    best = min(records, key=lambda r: r["step_s"])
    row = {"profile": profile, "loss": loss + (" (before: Tensor.var)" if before else ""), "size": size,
           "batch": batch, "channels_last": cfg.channels_last,
           "warmup": warmup, "steps": steps, "step_s": best["step_s"],
           "step_median_s": statistics.median(r["step_s"] for r in records),
           "images_per_s": batch / best["step_s"], **{p: best[p] for p in PHASES}, "loss_value": best["loss"],
           "gflop_per_step": flops / 1e9 if flops else None,
           "gflops": flops / 1e9 / best["step_s"] if flops else None,
           "steps_s": " ".join(f"{r['step_s']:.4f}" for r in records)}
    print(f"  {profile:6s} {size:4d} px x{batch}  {row['loss']:16s}{'' if cfg.channels_last else ' (NCHW)'} "
          f"step {row['step_s']:8.3f} s (median {row['step_median_s']:.3f})  "
          + "  ".join(f"{p} {100 * row[p] / row['step_s']:.0f}%" for p in PHASES), flush=True)
    return row


def profile_table(profile: str, loss: str, size: int, batch: int, top: int = 15, **overrides) -> dict:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    cfg, net, optimizer, content, style = setup(loss, size, batch, **overrides)
    timer = PhaseTimer(net)
    timed_step(cfg, net, optimizer, content, style, timer)  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        timed_step(cfg, net, optimizer, content, style, timer)
    timer.remove()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "percent": 100 * e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:top]]
    return {"profile": profile, "loss": loss, "size": size, "batch": batch, "total_self_ms": total / 1e3, "ops": rows}


def plan(quick: bool) -> list[tuple[str, int, int]]:
    """(profile, warm-up steps, timed steps)."""
    if quick:
        return [("smoke", 1, 1)]
    return [("smoke", 1, 5), ("cpu", 1, 3), ("paper", 0, 1)]


#: Our steps set beside the reference training loop: (label, method).
REFERENCE_VARIANTS = (("warm start (reconstruction)", "reconstruction"), ("ours (contextual)", "ours"),
                      ("AdaIN (mse)", "adain"))
REFERENCE_LABEL = "reference (pytorch-AdaIN train loop)"
#: Issue 19's goal: our training step at least this many times as fast as the reference loop.
GOAL_X_REFERENCE = 2.0


def ours_step(cfg, net, optimizer, content, style) -> float:
    from ctxstyle.train import training_losses

    losses = training_losses(net, content, style, cfg, fast=True)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimizer.step()
    return float(losses["total"].detach())


def interleaved_rounds(steps: dict, rounds: int) -> dict[str, list[float]]:
    """One call of every step in turn per round (a busy moment of a shared machine hits them all);
    wall seconds per call."""
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(rounds):
        for label, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    return times


def _compiled_step(cfg, net, optimizer, content, style):
    """:func:`ours_step` with ``training_losses`` under ``torch.compile`` (inductor, default mode); the
    first call compiles (inductor, with ``TORCHINDUCTOR_CACHE_DIR`` pointing at a fresh folder: cold)."""
    from ctxstyle.train import training_losses

    loss = torch.compile(lambda c, s: training_losses(net, c, s, cfg, fast=True)["total"])

    def step() -> float:
        total = loss(content, style)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return float(total.detach())
    return step


def reference_comparison(profile: str, size: int, batch: int, adain_layer: str, rounds: int,
                         bf16: bool, compiled: bool = False) -> list[dict]:
    """Our training steps against the reference AdaIN training loop, one step each in turn.

    The reference (:class:`reproduce.benchmarks.reference_adain.ReferenceTrainer`) re-encodes
    the content and style batches every step, fp32, NCHW; ours run as ``ctxstyle.train.train``
    runs them (channels_last, style-bank statistics computed once, the warm start without style).
    With ``bf16`` every variant also runs under bf16 autocast (``TrainConfig.bf16``); with ``compiled``
    ours also runs with its losses under ``torch.compile`` (the first call, which compiles, is timed
    apart as ``compile_s``; FLOPs are the eager step's). Each round
    times one step of every variant in turn, so that a busy moment of a shared machine hits all
    of them; a variant's time is the median over rounds, and its ratio the reference's median
    over its own (> 1: ours faster).
    """
    from reproduce.benchmarks.reference_adain import ReferenceTrainer

    from ctxstyle.method.net import VGG_STYLE_LAYERS

    cases = {}
    for label, loss in REFERENCE_VARIANTS:
        for use_bf16 in (False, True) if bf16 else (False,):
            cfg, net, optimizer, content, style = setup(loss, size, batch, adain_layer=adain_layer, bf16=use_bf16)
            cases[label + (" bf16" if use_bf16 else "")] = (cfg, net, optimizer, content, style)
    cfg0, net0 = cases["ours (contextual)"][:2]
    gen = torch.Generator().manual_seed(cfg0.seed)
    ref_content, ref_style = smooth_images(batch, size, gen), smooth_images(batch, size, gen)
    reference = ReferenceTrainer(net0, VGG_STYLE_LAYERS, lr=cfg0.lr)
    steps = {REFERENCE_LABEL: lambda: reference.step(ref_content, ref_style)}
    steps.update({label: (lambda c=c: ours_step(*c)) for label, c in cases.items()})
    flops = {label: count_flops(fn) for label, fn in steps.items()}  # also the warm-up step
    compile_s = {}
    with contextlib.ExitStack() as stack:
        if compiled:  # a cold compile: inductor's on-disk caches in a fresh folder, removed afterwards
            cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="ctxstyle-inductor-"))
            stack.enter_context(environment("TORCHINDUCTOR_CACHE_DIR", cache))
        for use_bf16 in ((False, True) if bf16 else (False,)) if compiled else ():
            eager = "ours (contextual)" + (" bf16" if use_bf16 else "")
            label = eager + " torch.compile"
            step = _compiled_step(*setup("ours", size, batch, adain_layer=adain_layer, bf16=use_bf16))
            t0 = time.perf_counter()
            step()  # compiles
            compile_s[label] = time.perf_counter() - t0
            steps[label], flops[label] = step, flops[eager]
        times = interleaved_rounds(steps, rounds)
    ref_median = statistics.median(times[REFERENCE_LABEL])
    rows = []
    for label, values in times.items():
        median = statistics.median(values)
        rows.append({"profile": profile, "size": size, "batch": batch, "adain_layer": adain_layer, "variant": label,
                     "rounds": rounds, "step_median_s": median, "step_best_s": min(values),
                     "x_reference": ref_median / median, "gflop_per_step": flops[label] / 1e9,
                     "gflops": flops[label] / 1e9 / median, "steps_s": " ".join(f"{v:.4f}" for v in values),
                     "compile_s": compile_s.get(label)})
        print(f"  {profile:6s} {size:4d} px x{batch} {adain_layer}  {label:38s} median {median:7.3f} s  "
              f"x reference {ref_median / median:5.2f}", flush=True)
    return rows


def run(out: Path = DEFAULT_OUT, quick: bool = False, threads: int = 2) -> Path:
    from reproduce.benchmarks.machine import bf16_usable

    torch.set_num_threads(threads)
    meta = machine_info(threads)
    meta["quick"] = quick
    print(f"training benchmark: {threads} threads, load {meta['load_average']}", flush=True)
    from reproduce.benchmarks.stylization import PeakProbe

    sizes = profile_sizes()
    rows, tables, reference_rows = [], [], []
    t0 = time.perf_counter()
    probe = PeakProbe(quick)
    probe.probe(3 if quick else 5)
    bf16 = bf16_usable(meta)
    meta["bf16_units"] = bf16
    for profile, warmup, steps in plan(quick):
        size, batch, layer = sizes[profile]
        if profile == ("smoke" if quick else "cpu"):
            reference_rows += reference_comparison(profile, size, batch, layer, 2 if quick else 7, bf16,
                                                   compiled=not quick)
        for loss in LOSSES:
            rows.append(bench_case(profile, loss, size, batch, warmup, steps, adain_layer=layer))
        if profile == ("smoke" if quick else "cpu"):
            rows.append(bench_case(profile, "ours", size, batch, warmup, steps, channels_last=False,
                                   adain_layer=layer))
            rows.append(bench_case(profile, "ours", size, batch, warmup, steps, before=True, adain_layer=layer))
            for loss in LOSSES[:2] if quick else LOSSES:
                tables.append(profile_table(profile, loss, size, batch, adain_layer=layer))
    probe.probe(3 if quick else 5)
    meta["fp32_peak_gflops"] = probe.gflops
    for r in rows + reference_rows:
        r["fraction_of_peak"] = r["gflops"] / probe.gflops if r.get("gflops") else None
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    meta["load_average_end"] = load_average()
    stem = Path(out) / ("training_quick" if quick else "training")
    write_outputs(rows, tables, meta, stem, reference_rows)
    print(f"wrote {stem}.csv, .md, .json", flush=True)
    return stem


FIELDS = ["profile", "loss", "size", "batch", "channels_last", "warmup", "steps", "step_s", "step_median_s",
          "images_per_s", "gflop_per_step", "gflops", "fraction_of_peak", *PHASES, "loss_value", "steps_s"]


REFERENCE_FIELDS = ["profile", "size", "batch", "adain_layer", "variant", "rounds", "step_median_s", "step_best_s",
                    "x_reference", "gflop_per_step", "gflops", "fraction_of_peak", "steps_s", "compile_s"]


def write_outputs(rows: list[dict], tables: list[dict], meta: dict, stem: Path,
                  reference_rows: list[dict] | None = None) -> None:
    reference_rows = reference_rows or []
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.parent / f"{stem.name}_reference.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=REFERENCE_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(reference_rows)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "reference": reference_rows,
                                                     "profiles": tables}, indent=2, default=str))
    cmd = command_line(meta, f"python -m reproduce.benchmarks{' --quick' if meta['quick'] else ''} "
                             f"--threads {meta['threads']}", stem.parent)
    lines = [
        "# Training step: time per profile and loss, and where it goes",
        "",
        f"`{cmd}` ({meta['date']}; {meta['cpu']}, {meta['logical_cpus']} logical CPUs, torch {meta['torch']}, "
        f"{meta['threads']} threads; load average {meta['load_average']} at the start, "
        f"{meta.get('load_average_end', '?')} at the end: **shared machine**, absolute times are noisy). "
        f"CPU flags: {flags_phrase(meta)} ({bf16_hardware(meta['cpu_flags'], bool(meta.get('bf16_capped')))}).",
        "",
        *reference_lines(reference_rows),
        "## Where the time goes",
        "",
        "One step = `training_losses` + `zero_grad` + `backward` + `optimizer.step`, as `ctxstyle.train.train` "
        "runs it (channels_last unless marked NCHW). Time = best of the timed steps after the warm-up; "
        "phases in % of that step.",
        "",
        "| profile | size x batch | loss | step (s) | images/s | GFLOP/step | GFLOP/s (% of peak) | enc. content "
        "| enc. style | enc. generated | decoder | losses (+AdaIN) | backward | optimizer |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pct = [f"{100 * r[p] / r['step_s']:.0f}%" for p in PHASES]
        gf = (f"{r['gflop_per_step']:.1f} | {r['gflops']:.1f} ({100 * r['fraction_of_peak']:.0f}%)"
              if r.get("gflops") else "| ")
        lines.append(f"| {r['profile']} | {r['size']} x {r['batch']} | {r['loss']}{'' if r['channels_last'] else ' (NCHW)'} "
                     f"| {r['step_s']:.3f} | {r['images_per_s']:.2f} | {gf} | " + " | ".join(pct) + " |")
    lines += [
        "",
        "Warm-up / timed steps: " + ", ".join(sorted({f"{r['profile']} {r['warmup']}/{r['steps']}" for r in rows}))
        + ". Backward = decoder weights + the generated image's path through the encoder (and the losses). "
        "GFLOP/step: `FlopCounterMode` over the first warm-up step (forward + backward: convolutions, matmuls; "
        "none where no warm-up ran); peak = float32 matmul, best of probes at the start and end "
        f"({meta.get('fp32_peak_gflops', float('nan')):.1f} GFLOP/s).",
        "",
    ]
    for t in tables:
        lines += [
            f"## torch.profiler: {t['profile']} ({t['size']} px x {t['batch']}), {t['loss']}: top operators",
            "",
            f"One step after a warm-up step; self CPU time, total {t['total_self_ms']:.0f} ms.",
            "",
            "| operator | self CPU (ms) | % | calls |",
            "|---|---:|---:|---:|",
            *[f"| `{o['op']}` | {o['self_ms']:.1f} | {o['percent']:.1f} | {o['calls']} |" for o in t["ops"]],
            "",
        ]
    stem.with_suffix(".md").write_text("\n".join(lines))


def reference_lines(reference_rows: list[dict]) -> list[str]:
    """The markdown table of :func:`reference_comparison` (empty without rows)."""
    if not reference_rows:
        return []
    r0 = reference_rows[0]
    lines = [f"## Against the reference training loop ({r0['profile']} profile: {r0['size']} px crops x {r0['batch']}, "
             f"AdaIN at {r0['adain_layer']})", "",
             "The reference is the training step of `naoto0804/pytorch-AdaIN` (content and style re-encoded every "
             "step, full style statistics every step, fp32, NCHW; `reproduce/benchmarks/reference_adain.py`); ours "
             "run as `ctxstyle.train.train` runs them (channels_last, the style bank's statistics computed once, "
             "the warm start without style). One step of every variant in turn per round; median over "
             f"{r0['rounds']} rounds after a warm-up step; x reference = the reference's median / the variant's "
             "(> 1: faster).", "",
             "| variant | step (s, median) | best (s) | x reference | GFLOP/step | GFLOP/s (% of fp32 peak) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in reference_rows:
        peak = f" ({100 * r['fraction_of_peak']:.0f}%)" if r.get("fraction_of_peak") else ""
        lines.append(f"| {r['variant']} | {r['step_median_s']:.3f} | {r['step_best_s']:.3f} | {r['x_reference']:.2f} "
                     f"| {r['gflop_per_step']:.1f} | {r['gflops']:.1f}{peak} |")
    lines += [""]
    by_variant = {r["variant"]: r for r in reference_rows}
    for r in reference_rows:
        if not r.get("compile_s"):
            continue
        eager = by_variant[r["variant"].removesuffix(" torch.compile")]
        saved = eager["step_median_s"] - r["step_median_s"]
        payback = (f"pays back its compile time after {r['compile_s'] / saved:,.0f} steps" if saved > 0
                   else "never pays back its compile time (no faster than eager)")
        lines.append(f"- `{r['variant']}`: compiling took {r['compile_s']:.0f} s (first step); the compiled step is "
                     f"{eager['step_median_s'] / r['step_median_s']:.2f}x the eager one (medians), so it {payback}.")
    if any(r.get("compile_s") for r in reference_rows):
        lines += ["", "`torch.compile` would be used in training only where it paid back its compile time within "
                  "one notebook's decoder training (issue 19).", ""]
    return lines + goal_lines(reference_rows)


def goal_lines(reference_rows: list[dict]) -> list[str]:
    """Issue 19's goal checked on the rows, and what float32 would need to meet it.

    At equal GFLOP/s a step is faster than the reference only by doing fewer FLOPs, so
    ``reference GFLOP / ours GFLOP`` is the ratio at the reference's efficiency; the goal needs
    ``ours GFLOP / (reference time / goal)`` GFLOP/s, given as a share of the float32 matmul peak.
    Above 100 % no direct convolution gets there: only fewer multiplications (Winograd, FFT) or
    less work per step can. Empty without the reference, ours in float32, their FLOP counts or the peak.
    """
    by = {r["variant"]: r for r in reference_rows}
    ref, ours = by.get(REFERENCE_LABEL), by.get("ours (contextual)")
    if (not ref or not ours or not ref.get("fraction_of_peak") or not ours.get("fraction_of_peak")
            or not ref.get("gflop_per_step") or not ours.get("gflop_per_step")):
        return []
    peak = ref["gflops"] / ref["fraction_of_peak"]
    goal = GOAL_X_REFERENCE
    verdicts = []
    for label in ("ours (contextual)", "ours (contextual) bf16"):
        r = by.get(label)
        if r:
            x = r["x_reference"]
            shown = f"{x:.2f}" if x >= goal or float(f"{x:.2f}") < goal else f"{x:.3f}"  # 1.995 is not "2.00"
            verdicts.append(f"`{label}` {shown}x: {'met' if x >= goal else 'not met'}")
    equal = ref["gflop_per_step"] / ours["gflop_per_step"]
    needed = ours["gflop_per_step"] / (ref["step_median_s"] / goal)
    share = needed / peak
    reading = ("more than the peak, so in float32 only fewer multiplications (Winograd or FFT convolutions, "
               "`encoder_nnpack.md`) or less work per step can reach the goal" if share > 1 else
               "within the peak, which therefore does not rule it out")
    return [f"**Goal: {goal:g}x the reference loop** (issue 19): " + "; ".join(verdicts) + ". "
            f"In float32 ours does {ours['gflop_per_step']:.1f} GFLOP per step against the reference's "
            f"{ref['gflop_per_step']:.1f}, so at the reference's efficiency ({100 * ref['fraction_of_peak']:.0f}% of "
            f"the float32 peak) it would be {equal:.2f}x the reference; it runs at "
            f"{100 * ours['fraction_of_peak']:.0f}%, hence {ours['x_reference']:.2f}x. {goal:g}x would take "
            f"{needed:.0f} GFLOP/s of the step's work counted as direct convolutions and matmuls, "
            f"{100 * share:.0f}% of the float32 peak "
            f"({peak:.0f} GFLOP/s): {reading}.", ""]


def render(json_path: Path) -> Path:
    """Write the CSVs and Markdown of a recorded run (its ``training*.json``) again; runs nothing."""
    recorded = read_record(json_path, "a training benchmark", ("rows", "profiles", "meta"))
    stem = Path(json_path).with_suffix("")
    write_outputs(recorded["rows"], recorded["profiles"], recorded["meta"], stem, recorded.get("reference") or [])
    return stem


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.benchmarks.training", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="write the CSVs and Markdown of a recorded run (its training.json) again; runs nothing")
    args = p.parse_args(argv)
    if args.render is not None:
        print(f"wrote {render(args.render)}.csv, .md, .json", flush=True)
        return 0
    run(Path(args.out), args.quick, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())

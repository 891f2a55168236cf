"""Benchmark: stylization throughput of ctxstyle's inference path vs a reference AdaIN loop.

``python -m reproduce.benchmarks.stylization [--quick] [--threads 2] [--out DIR]`` (or as part of
``python -m reproduce.benchmarks``). Writes ``stylization{,_quick}.csv``, ``.md`` and ``.json``.

Cost only: the network is ``ctxstyle.train.build_net(TrainConfig())`` (VGG19 to relu4_1 with the
packaged ImageNet weights, or a random-init encoder where they cannot be resolved) and an
untrained (randomly initialised) decoder, which costs exactly what a trained one costs. Only the
decoder's last convolution is rescaled so that outputs spread over (0, 1) instead of clamping to
0 or 1, which makes the output comparison with the reference meaningful; it changes no cost.

Variants, all in the same process and interleaved round by round (so they see the same load):

* ``reference``: :class:`reproduce.benchmarks.reference_adain.ReferenceAdaIN`, the per-image
  float32 loop of common AdaIN test scripts (``torch.no_grad``, NCHW, style re-encoded for every
  content image); its throughput does not depend on the batch size;
* ``before``: :class:`ctxstyle.stylize.Stylizer` as it was before issue 8 (inference mode, style
  features computed once, batches of ``batch``, oneDNN convolutions, NCHW):
  ``FastStyleTransferNet.winograd = False``;
* ``channels_last``: the same with the network and inputs in channels_last;
* ``nnpack_op``: :class:`~ctxstyle.stylize.Stylizer` as it was before the direct NNPACK binding:
  NNPACK through ``torch._nnpack_spatial_convolution`` (``FastStyleTransferNet.direct_nnpack = False``);
* ``ours``: the current :class:`~ctxstyle.stylize.Stylizer` (NNPACK Winograd / FFT 3x3 convolutions
  on CPU float32, called directly: :mod:`ctxstyle.fast.nnpack`, :mod:`ctxstyle.fast.inference`; NNPACK's fast path
  is its one-image inference, so at batch 1 images go one after another on all threads, and larger
  batches run one image per worker thread, ``FastStyleTransferNet.parallel_images``);
* ``bf16``: ``channels_last`` under ``torch.autocast("cpu", torch.bfloat16)``, at 128 px only
  (bf16 is ~10-150x slower than fp32 on CPUs without AVX512-BF16/AMX).

Style features of the non-reference variants are computed once before timing (amortised over
all contents, the intended use). GFLOP/s counts the direct-convolution FLOPs of the work done
(conv FLOPs = 2 Cin Cout k^2 Hout Wout, by ``torch.utils.flop_counter.FlopCounterMode``):
encoder + decoder per image, plus a second encoder pass (the style) for the reference. Winograd
performs fewer multiplications than that count, so "effective" GFLOP/s may exceed the measured
peak (a large float32 matmul timed in the same run).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "lib"
if str(LIB) not in sys.path:
    sys.path.insert(0, str(LIB))

import torch  # noqa: E402

from reproduce.benchmarks import DEFAULT_OUT, read_record  # noqa: E402
from reproduce.benchmarks.machine import (bf16_hardware, bf16_usable, command_line,  # noqa: E402
                                          flags_phrase, load_average, machine_info, source_version)
from reproduce.benchmarks.reference_adain import ReferenceAdaIN, calc_mean_std  # noqa: E402

VARIANTS = ("reference", "before", "channels_last", "nnpack_op", "ours", "bf16")
TOLERANCE = 1e-4  # max abs difference to the reference output ([0, 1] images) that counts as equal


# ---------------------------------------------------------------------------------------------
# machine, peak, network


def _best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class PeakProbe:
    """Float32 matmul GFLOP/s, the machine's practical peak, probed repeatedly during the run
    (on a shared machine a single probe may land in a busy moment): the best probe counts."""

    def __init__(self, quick: bool = False):
        self.n = 512 if quick else 2048
        self.a, self.b = torch.randn(self.n, self.n), torch.randn(self.n, self.n)
        self.probes: list[float] = []

    def probe(self, repeats: int = 2) -> float:
        self.probes.append(2 * self.n**3 / _best_time(lambda: self.a @ self.b, repeats) / 1e9)
        return self.probes[-1]

    @property
    def gflops(self) -> float:
        return max(self.probes) if self.probes else float("nan")


def measure_bf16_matmul(quick: bool = False) -> tuple[int, float]:
    m = 128 if quick else 512
    a16, b16 = torch.randn(m, m).bfloat16(), torch.randn(m, m).bfloat16()
    return m, 2 * m**3 / _best_time(lambda: a16 @ b16, 1 if quick else 2) / 1e9


def measure_peak(quick: bool = False, probe: PeakProbe | None = None) -> dict:
    """Float32 matmul GFLOP/s (best of the probes so far, plus one now) and bf16 matmul GFLOP/s."""
    probe = probe or PeakProbe(quick)
    probe.probe(3 if quick else 5)
    m, bf16 = measure_bf16_matmul(quick)
    return {"fp32_matmul_n": probe.n, "fp32_gflops": probe.gflops, "fp32_probes": len(probe.probes),
            "bf16_matmul_n": m, "bf16_gflops": bf16}


def build_bench_net():
    """``build_net(TrainConfig())``; a random-init encoder where the weights are unavailable."""
    from ctxstyle.errors import WeightsNotFoundError
    from ctxstyle.train import TrainConfig, build_net

    cfg = TrainConfig()
    try:
        net = build_net(cfg)
    except (WeightsNotFoundError, OSError) as exc:  # cost is the same with random weights
        from ctxstyle.backbones import build_encoder
        from ctxstyle.method.net import StyleTransferNet

        print(f"packaged weights unavailable ({type(exc).__name__}); using a random-init encoder", flush=True)
        encoder = build_encoder(cfg.encoder, pretrained=False)
        net = StyleTransferNet(encoder.truncate(cfg.adain_layer), cfg.adain_layer)
    torch.manual_seed(0)
    return net.eval()


@torch.no_grad()
def spread_outputs(net, content, style) -> None:
    """Rescale the decoder's input and last convolution so outputs are ~0.5 +- 0.15 (cost-neutral)."""
    from ctxstyle.method.function import adain

    layer = net.adain_layer
    c = net.encoder(content, [layer])[layer]
    net.decoder.calibrate(c)
    out = net.decoder(adain(c, net.encoder(style, [layer])[layer]))
    last = [m for m in net.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    scale = 0.15 / out.std().clamp_min(1e-8)
    last.weight.mul_(scale)
    last.bias.mul_(scale).add_(0.5 - out.mean() * scale)


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# stylization


class Variants:
    """The stylization functions compared, all sharing one network's weights."""

    def __init__(self, net, style):
        from ctxstyle.fast.inference import accelerate
        from ctxstyle.stylize import Stylizer

        self.reference = ReferenceAdaIN(net)
        self.style = style
        ours = accelerate(copy.deepcopy(net))
        ours.winograd = True
        nnpack_op = accelerate(copy.deepcopy(net))
        nnpack_op.direct_nnpack = False
        before = accelerate(copy.deepcopy(net))
        before.winograd = False
        cl = accelerate(copy.deepcopy(net)).to(memory_format=torch.channels_last)
        cl.winograd = False
        self.stylizers = {"ours": Stylizer(ours), "nnpack_op": Stylizer(nnpack_op), "before": Stylizer(before),
                          "channels_last": Stylizer(cl)}
        self.feats = {k: s.style_features(style) for k, s in self.stylizers.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            self.feats["bf16"] = self.stylizers["channels_last"].style_features(style)

    def run(self, variant: str, contents, batch: int):
        if variant == "reference":
            return self.reference(contents, self.style)
        if variant == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = self.stylizers["channels_last"](contents, style_feats=self.feats["bf16"], batch_size=batch)
            return out.float()
        return self.stylizers[variant](contents, style_feats=self.feats[variant], batch_size=batch)


def plan(quick: bool) -> list[dict]:
    """Per image size: ``cases`` as (variant, batch, images per timed run, interleaved rounds).

    Sized for a 2-core machine (the full plan takes ~3 min there idle): batch-1 variants and the
    reference on a few images over several rounds, batch 8 on 8 images; at 512 px the module-path
    variants at batch 1 only; ``nnpack_op`` runs one image at a time whatever the batch, so only at
    each size's first batch size; ``ours`` at every batch size (batch 1: one image after another,
    NNPACK on all threads; larger: images on parallel worker threads,
    ``FastStyleTransferNet.parallel_images``), at 512 px also batch 4; bf16 only at 128 px.
    """
    def cases(batches, n1, r1, n8, r8, bf16=(), ours_batch=None):
        out = [("reference", 1, n1, r1)]
        for b in batches:
            n, r = (n1, r1) if b == 1 else (n8, r8)
            out += [("before", b, n, r), ("channels_last", b, n, r)]
            out += [("nnpack_op", b, n, r)] if b == batches[0] else []
            out += [("ours", b, n, r)]
        out += [("ours", *ours_batch)] if ours_batch else []
        return out + [("bf16", b, n, 1) for b, n in bf16]

    if quick:
        return [{"size": 32, "cases": cases((1, 2), 2, 1, 2, 1, bf16=((1, 1),))},
                {"size": 64, "cases": cases((2,), 2, 1, 2, 1)}]
    return [
        {"size": 128, "cases": cases((1, 8), 4, 2, 8, 2, bf16=((1, 1),)), "grid": True},
        {"size": 256, "cases": cases((1, 8), 4, 3, 8, 3), "grid": True},
        {"size": 512, "cases": cases((1,), 1, 2, 0, 0, ours_batch=(4, 4, 1)), "grid": True},
    ]


def bench_size(net, case: dict, probe: PeakProbe, seed: int = 0, *, native_bf16: bool) -> tuple[list[dict], dict]:
    size, cases = case["size"], case["cases"]
    n_max = max(n for _, _, n, _ in cases)
    gen = torch.Generator().manual_seed(seed + size)
    contents = torch.rand(n_max, 1, size, size, generator=gen)
    style = torch.rand(1, 1, size, size, generator=gen)
    spread_outputs(net, contents[:2], style)
    v = Variants(net, style)
    # FLOPs per image (module path, batch 1): content encoder + decoder; the reference adds a style pass
    layer = net.adain_layer
    with torch.inference_mode():
        enc_flops = count_flops(lambda: net.encoder(contents[:1], [layer]))
        feat = net.encoder(contents[:1], [layer])[layer]
        dec_flops = count_flops(lambda: net.decoder(feat))
    flops_img = {k: enc_flops + dec_flops for k in VARIANTS}
    flops_img["reference"] = 2 * enc_flops + dec_flops

    timings = {(vr, b): {"walls": [], "cpus": []} for vr, b, _, _ in cases}
    outputs = {}
    warm = min(n_max, torch.get_num_threads())
    for variant, b, _, _ in cases:  # warm-up: oneDNN primitives, NNPACK plans, allocator, worker threads
        v.run(variant, contents[: 1 if b == 1 else min(b, warm)], b)
    for rnd in range(max(r for _, _, _, r in cases)):
        probe.probe()
        for variant, b, n, rounds in cases:
            if rnd >= rounds:
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            out = v.run(variant, contents[:n], b)
            timings[(variant, b)]["walls"].append(time.perf_counter() - t0)
            timings[(variant, b)]["cpus"].append(time.process_time() - c0)
            outputs[(variant, b)] = out
    ref_out = outputs[("reference", 1)]
    ref_n = ref_out.shape[0]
    ref_walls = timings[("reference", 1)]["walls"]
    ref_ips = ref_n / min(ref_walls)
    rows = []
    for variant, b, n, _ in cases:
        walls, cpus = timings[(variant, b)]["walls"], timings[(variant, b)]["cpus"]
        wall = min(walls)
        ips = n / wall
        gflops = flops_img[variant] * ips / 1e9
        m = min(n, ref_n)
        rows.append({
            "size": size, "batch": b, "variant": variant,
            "dtype": "bf16" if variant == "bf16" else "fp32", "images": n, "rounds": len(walls),
            "wall_s": wall, "wall_median_s": statistics.median(walls), "cpu_s": min(cpus),
            "images_per_s": ips, "x_reference": ips / ref_ips,
            # the same ratio round by round (each variant against the reference timed first in that round):
            # less exposed to one lucky or unlucky round on a shared machine
            "x_reference_rounds_median": statistics.median(
                (n / w) / (ref_n / rw) for w, rw in zip(walls, ref_walls)),
            "gflop_per_image": flops_img[variant] / 1e9, "gflops": gflops,
            "fraction_of_peak": gflops / probe.gflops,  # recomputed with the final peak in run()
            "max_abs_diff": float((outputs[(variant, b)][:m] - ref_out[:m]).abs().max()),
            "walls": " ".join(f"{w:.4f}" for w in walls),
        })
        r = rows[-1]
        print(f"  {size:4d} px  b{b}  {variant:13s} {ips:8.3f} img/s  x{r['x_reference']:5.2f}  "
              f"{gflops:7.1f} GFLOP/s ({100 * r['fraction_of_peak']:5.1f}% of peak)  max|diff| {r['max_abs_diff']:.1e}",
              flush=True)
    ran = {(vr, b) for vr, b, _, _ in cases}
    for b in (1, 8) if case.get("grid") else ():  # the full grid's cases (batch 1, 8 x fp32, bf16) left out
        for variant in ("before", "channels_last", "bf16"):
            if (variant, b) not in ran:
                rows.append({"size": size, "batch": b, "variant": variant, "dtype": "bf16" if variant == "bf16" else "fp32",
                             "images": 0, "status": "not run (too slow)" if variant == "bf16" and not native_bf16
                             else "not run (time budget)",
                             "gflop_per_image": flops_img[variant] / 1e9})
    return rows, {"enc_gflop": enc_flops / 1e9, "dec_gflop": dec_flops / 1e9}


def check_same_kind(record: Path, meta: dict) -> None:
    """Refuse (SystemExit naming the file) to add a run of another CPU kind to a folder whose
    stylization record came from one: its runs file gathers one kind's spread (the summary judges
    the 4x goal per folder). Kind = the CPU flags and instruction-set caps of :func:`machine_info`."""
    try:
        old = json.loads(Path(record).read_text())["meta"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record yet (or not one): nothing to mix with
    kind = lambda m: (m.get("cpu_flags"), m.get("isa_cap") or {})  # noqa: E731
    if kind(old) != kind(meta):
        raise SystemExit(f"{record}: recorded on another CPU kind ({flags_phrase(old)}); this one is "
                         f"{flags_phrase(meta)}: write this run to another folder (--out)")


def run(out: Path = DEFAULT_OUT, quick: bool = False, threads: int = 2, seed: int = 0) -> Path:
    torch.set_num_threads(threads)
    meta = machine_info(threads)
    check_same_kind(Path(out) / ("stylization_quick.json" if quick else "stylization.json"), meta)
    print(f"stylization benchmark: {meta['cpu']} ({meta['cpu_flags']}), torch {meta['torch']}, "
          f"{threads} threads, load {meta['load_average']}", flush=True)
    probe = PeakProbe(quick)
    probe.probe(3 if quick else 5)
    print(f"  peak probe: fp32 matmul {probe.gflops:.1f} GFLOP/s", flush=True)
    net = build_bench_net()
    meta["weights"] = (net.encoder.provenance or {}).get("source", "?")
    from ctxstyle.fast import nnpack

    meta["nnpack_direct"] = nnpack.available()  # ctxstyle.fast.nnpack usable: 'ours' calls NNPACK directly
    meta["quick"] = quick
    rows, flops = [], {}
    t0 = time.perf_counter()
    micro = hot_path_micro_subprocess(quick, threads=1)
    for case in plan(quick):
        size_rows, size_flops = bench_size(net, case, probe, seed, native_bf16=bf16_usable(meta))
        rows += size_rows
        flops[case["size"]] = size_flops
    peak = measure_peak(quick, probe)
    for r in rows:
        if r.get("gflops") is not None:
            r["fraction_of_peak"] = r["gflops"] / peak["fp32_gflops"]
    print(f"  peak: fp32 matmul {peak['fp32_gflops']:.1f} GFLOP/s (best of {peak['fp32_probes']} probes), "
          f"bf16 matmul {peak['bf16_gflops']:.2f} GFLOP/s", flush=True)
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    meta["load_average_end"] = load_average()
    meta["source"] = source_version(REPO)
    stem = Path(out) / ("stylization_quick" if quick else "stylization")
    headline = write_outputs(rows, meta, peak, flops, stem, micro)
    if not quick:
        append_run(Path(out) / RUNS_FILE, meta, headline)
    print(f"wrote {stem}.csv, .md, .json", flush=True)
    return stem


#: One line per full run (appended, never rewritten): how the headline ratio spreads over runs.
RUNS_FILE = "stylization_runs.csv"
RUN_FIELDS = ["date", "source", "threads", "load_average", "load_average_end", "reference_images_per_s",
              "ours_images_per_s", "ours_best_batch", "ours_x_reference", "ours_x_reference_rounds_median",
              "ours_one_x_reference"]


def append_run(path: Path, meta: dict, headline: dict) -> None:
    """Add this run's headline (256 px in a full run) to ``path`` (see :data:`RUNS_FILE`)."""
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RUN_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({**{k: meta.get(k) for k in ("date", "source", "threads", "load_average", "load_average_end")},
                    **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in headline.items()}})


# ---------------------------------------------------------------------------------------------
# hot-path micro-benchmarks (the library changes of issue 8, each before vs after)


#: ``ctxstyle.method.function.mean_std`` before issue 8 (``Tensor.var``, as the reference script), for before/after timings.
old_mean_std = calc_mean_std


def hot_path_micro_subprocess(quick: bool = False, threads: int = 1) -> list[dict]:
    """:func:`hot_path_micro` in a fresh process with ``threads`` threads (1: per-op algorithmic
    speed-ups, which 2 contended threads swamp in noise; and NNPACK sizes its thread pool once per
    process, at its first call, so the parent's pool keeps the benchmark's thread count)."""
    import subprocess

    cmd = [sys.executable, "-m", "reproduce.benchmarks.stylization", "--micro", "--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(LIB), str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd + (["--quick"] if quick else []), cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  micro-benchmarks failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
        return []
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    for r in rows:
        print(f"  micro: {r['what']:50s} {r['shape']:24s} {r['before_ms']:8.2f} -> {r['after_ms']:8.2f} ms "
              f"(x{r['x']:.2f}, max|diff| {r['max_abs_diff']:.1e})", flush=True)
    return rows


def hot_path_micro(quick: bool = False) -> list[dict]:
    """Before / after of each inference hot-path change, one layer or op, batch 1, min of repeats."""
    from ctxstyle.fast import inference as M
    from ctxstyle.fast import nnpack
    from ctxstyle.method.function import mean_std
    from torch import nn

    reps = 2 if quick else 5
    s = 32 if quick else 64  # the 256 px image's relu3_x maps are 64 x 64
    rows = []

    def add(what, shape, before, after, note=""):
        tb, ta = _best_time(before, reps), _best_time(after, reps)
        ob, oa = before(), after()
        pairs = zip(ob, oa) if isinstance(ob, tuple) else [(ob, oa)]
        diff = float(max((a - b).abs().max() for a, b in pairs))
        rows.append({"what": what, "shape": shape, "before_ms": 1e3 * tb, "after_ms": 1e3 * ta, "x": tb / ta,
                     "max_abs_diff": diff, "note": note})

    with torch.inference_mode():
        x = torch.rand(1, 256, s, s)
        conv = nn.Conv2d(256, 256, 3, padding=1)
        if nnpack.torch_available():
            add("3x3 conv 256->256 (NNPACK Winograd, torch's operator, vs oneDNN)", f"1x256x{s}x{s}",
                lambda: conv(x), lambda: M.run_modules([conv], x, direct=False))
        if nnpack.available():
            relu = nn.ReLU()
            for cin, cout, side in ((256, 256, s), (64, 64, 4 * s), (3, 64, 4 * s)):
                with torch.inference_mode(False):  # a model's weights: ordinary tensors, so plans are cached
                    c = nn.Conv2d(cin, cout, 3, padding=1)
                xi = torch.rand(1, cin, side, side)
                before = ((lambda c=c, xi=xi: M.run_modules([c, relu], xi, direct=False)) if cin >= 16
                          else (lambda c=c, xi=xi: torch.relu_(c(xi))))
                add(f"3x3 conv {cin}->{cout} + ReLU (direct NNPACK vs "
                    + ("torch NNPACK op)" if cin >= 16 else "oneDNN; not adopted: the first layer stays on oneDNN)"),
                    f"1x{cin}x{side}x{side}", before, lambda c=c, xi=xi: nnpack.conv3x3(c, xi, relu=True))
        x4 = torch.rand(1, 64, 4 * s, 4 * s)
        pool = nn.MaxPool2d(2, 2)
        add("max pool 2x2 (row-pair then column-pair maxima vs aten)", f"1x64x{4 * s}x{4 * s}", lambda: pool(x4),
            lambda: M.run_modules([pool], x4))
        up, pad = nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1)
        for c, side in ((256, s // 2), (64, 2 * s)):
            xu = torch.rand(1, c, side, side)
            add("2x nearest upsampling + reflection pad (one buffer vs aten)", f"1x{c}x{side}x{side}",
                lambda xu=xu: pad(up(xu)), lambda xu=xu: M.run_modules([up, pad], xu))
        last = nn.Conv2d(64, 1, 3)
        x4p = torch.rand(1, 64, 4 * s + 2, 4 * s + 2)
        add("3x3 conv 64->1 (9-plane matmul vs oneDNN)", f"1x64x{4 * s + 2}x{4 * s + 2}", lambda: last(x4p),
            lambda: M.run_modules([last], x4p))
        f = torch.rand(1, 512, s // 2, s // 2)
        add("AdaIN mean/std (two-pass vs Tensor.var)", f"1x512x{s // 2}x{s // 2}", lambda: old_mean_std(f),
            lambda: mean_std(f))
        f = torch.rand(4, 64, s, s).contiguous(memory_format=torch.channels_last)
        add("style-loss mean/std (two-pass vs Tensor.var)", f"4x64x{s}x{s} channels_last", lambda: old_mean_std(f),
            lambda: mean_std(f))
        cl = conv.to(memory_format=torch.channels_last)
        xcl = x.contiguous(memory_format=torch.channels_last)
        conv_nchw = nn.Conv2d(256, 256, 3, padding=1)
        conv_nchw.load_state_dict(cl.state_dict())
        conv_nchw = conv_nchw.to(memory_format=torch.contiguous_format)
        add("3x3 conv 256->256 (oneDNN channels_last vs NCHW)", f"1x256x{s}x{s}", lambda: conv_nchw(x),
            lambda: cl(xcl))
    return rows


# ---------------------------------------------------------------------------------------------
# outputs


FIELDS = ["size", "batch", "variant", "dtype", "images", "rounds", "wall_s", "wall_median_s", "cpu_s",
          "images_per_s", "x_reference", "x_reference_rounds_median", "gflop_per_image", "gflops", "fraction_of_peak", "max_abs_diff",
          "status", "walls"]


def _f(x, spec: str) -> str:
    return "" if x is None or x == "" else format(x, spec)


def summary(rows: list[dict], size: int = 256) -> dict:
    """Headline figures at ``size`` (best batch): ours / reference, and the before / after ratio."""
    at = [r for r in rows if r["size"] == size and r.get("images_per_s")]
    if not at:
        return {}

    def best(variant):
        cands = [r for r in at if r["variant"] == variant]
        return max(cands, key=lambda r: r["images_per_s"]) if cands else None

    ours, before, ref, cl = best("ours"), best("before"), best("reference"), best("channels_last")
    out = {"size": size}
    if ours and ref:
        out.update(ours_x_reference=ours["x_reference"], ours_images_per_s=ours["images_per_s"],
                   ours_best_batch=ours["batch"], ours_x_reference_rounds_median=ours.get("x_reference_rounds_median"),
                   reference_images_per_s=ref["images_per_s"], ours_fraction_of_peak=ours["fraction_of_peak"],
                   reference_fraction_of_peak=ref["fraction_of_peak"], ours_max_abs_diff=ours["max_abs_diff"])
    if ours and before:
        out["ours_x_before"] = ours["images_per_s"] / before["images_per_s"]
        out["before_x_reference"] = before["x_reference"]
    if cl and before:
        out["channels_last_x_before"] = cl["images_per_s"] / before["images_per_s"]
    one = [r for r in at if r["variant"] == "ours" and r["batch"] == 1]
    many = [r for r in at if r["variant"] == "ours" and r["batch"] > 1]
    if one and many:  # images on parallel worker threads vs one after another on all threads
        batched = max(many, key=lambda r: r["images_per_s"])
        out.update(ours_parallel_batch=batched["batch"],
                   ours_parallel_x_one=batched["images_per_s"] / one[0]["images_per_s"],
                   ours_one_x_reference=one[0]["x_reference"])
    op = best("nnpack_op")
    if ours and op:
        out["ours_x_nnpack_op"] = ours["images_per_s"] / op["images_per_s"]
        out["nnpack_op_x_reference"] = op["x_reference"]
    return out


def speed_phrase(ratio: float) -> str:
    """``ratio`` (> 1: faster) in words, e.g. 2.49 -> '2.49x faster', 0.25 -> '4.00x slower',
    1 / 137.7 -> '138x slower'."""
    times = ratio if ratio >= 1 else 1 / max(ratio, 1e-12)
    shown = f"{times:.2f}" if float(f"{times:.2f}") < 10 else f"{times:.0f}"
    return f"{shown}x" + (" faster" if ratio >= 1 else " slower")


def render(json_path: Path) -> dict:
    """Write the CSV and Markdown of a recorded run again from its JSON (same numbers; for a change in
    how the report is worded). A bf16 case left out on a CPU with bf16 units is marked by time budget."""
    d = read_record(json_path, "a stylization benchmark", ("meta", "peak", "flops", "rows", "micro"))
    if bf16_usable(d["meta"]):
        for r in d["rows"]:
            if r.get("status") == "not run (too slow)":
                r["status"] = "not run (time budget)"
    return write_outputs(d["rows"], d["meta"], d["peak"], d["flops"], Path(json_path).with_suffix(""), d["micro"])


def write_outputs(rows: list[dict], meta: dict, peak: dict, flops: dict, stem: Path, micro: list[dict] = ()) -> dict:
    """The CSV, JSON and Markdown record of a run; returns its headline (:func:`summary` at 256 px,
    or the largest size run)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    sizes = sorted({r["size"] for r in rows})
    headline = summary(rows, 256 if 256 in sizes else sizes[-1])
    stem.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "peak": peak, "flops": flops, "summary": headline, "rows": rows, "micro": list(micro)},
        indent=2, default=str))
    cmd = command_line(meta, f"python -m reproduce.benchmarks{' --quick' if meta['quick'] else ''} "
                             f"--threads {meta['threads']}", stem.parent)
    lines = [
        "# Stylization throughput: ctxstyle vs a reference AdaIN loop",
        "",
        f"`{cmd}` ({meta['date']}; {meta['cpu']}, {flags_phrase(meta)}, {meta['logical_cpus']} logical CPUs, "
        f"torch {meta['torch']}, {meta['threads']} threads; load average {meta['load_average']} at the start, "
        f"{meta.get('load_average_end', '?')} at the end: **the machine was shared**, so absolute times are "
        "noisy; every ratio compares variants timed interleaved in the same process, under the same load).",
        "",
        f"Measured peak: float32 matmul ({peak['fp32_matmul_n']}^2, best of {peak['fp32_probes']} probes spread "
        f"over the run) **{peak['fp32_gflops']:.1f} GFLOP/s**; "
        f"bf16 matmul ({peak['bf16_matmul_n']}^2) **{peak['bf16_gflops']:.2f} GFLOP/s** "
        f"({speed_phrase(peak['bf16_gflops'] / max(peak['fp32_gflops'], 1e-9))} than float32; "
        f"{bf16_hardware(meta['cpu_flags'], bool(meta.get('bf16_capped')))}).",
        "",
        "Network: VGG19 to relu4_1 + mirrored decoder (`build_net(TrainConfig())`, encoder weights "
        f"{meta['weights']}), **untrained decoder: cost only** (same cost as a trained one). FLOPs per image: "
        + ", ".join(f"{s} px: encoder {v['enc_gflop']:.2f} + decoder {v['dec_gflop']:.2f} GFLOP"
                    for s, v in flops.items()) + ".",
        "",
    ]
    if headline.get("ours_x_reference"):
        lines += [
            f"**At {headline['size']} px: ours {headline['ours_images_per_s']:.2f} images/s = "
            f"{headline['ours_x_reference']:.2f}x the reference loop** (batch {headline['ours_best_batch']}; "
            f"{headline['reference_images_per_s']:.2f} images/s; median of the round-by-round ratios "
            f"{headline['ours_x_reference_rounds_median']:.2f}x); "
            f"{100 * headline['ours_fraction_of_peak']:.0f}% of the fp32 peak in direct-convolution-equivalent "
            f"FLOPs (reference: {100 * headline['reference_fraction_of_peak']:.0f}%); "
            + (f"before this issue the library path was {headline['before_x_reference']:.2f}x the reference; "
               f"now {headline['ours_x_before']:.2f}x faster than that. " if "ours_x_before" in headline else "")
            + f"Output max |ours - reference| = {headline['ours_max_abs_diff']:.1e}.",
            "",
        ]
    lines += [
        "| size | batch | variant | images/s | x reference | x reference, median of rounds | GFLOP/image | GFLOP/s | % of fp32 peak | max abs diff vs reference | wall s (min of rounds) | CPU s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("status"):
            lines.append(f"| {r['size']} | {r['batch']} | {r['variant']} | {r['status']} | | | "
                         f"{_f(r.get('gflop_per_image'), '.2f')} | | | | | |")
            continue
        lines.append(
            f"| {r['size']} | {r['batch'] if r['variant'] != 'reference' else '1 (loop)'} | {r['variant']} "
            f"| {r['images_per_s']:.3f} | {r['x_reference']:.2f} | {r['x_reference_rounds_median']:.2f} "
            f"| {r['gflop_per_image']:.2f} | {r['gflops']:.1f} "
            f"| {100 * r['fraction_of_peak']:.1f} | {r['max_abs_diff']:.1e} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} |")
    bf = [r for r in rows if r["variant"] == "bf16" and r.get("images_per_s")]
    lines += [
        "",
        "Variants: **reference** = per-image float32 loop as in common AdaIN test scripts (`torch.no_grad`, "
        "NCHW, the style re-encoded for every content image; `reproduce/benchmarks/reference_adain.py`); "
        "**before** = `Stylizer` before issue 8 (inference mode, style features reused, batches, oneDNN, NCHW); "
        "**channels_last** = the same in channels_last; **nnpack_op** = the `Stylizer` before the direct NNPACK "
        "binding (NNPACK through `torch._nnpack_spatial_convolution`); **ours** = the current `Stylizer` (NNPACK "
        "Winograd / FFT 3x3 convolutions called directly, `ctxstyle.fast.nnpack`: kernels transformed once, ReLU fused, "
        "PyTorch's own operators on one thread meanwhile; NNPACK's fast path is its batch-1 inference, so images go "
        "one at a time: at batch 1 one after another with NNPACK on all threads, at batch 8 on parallel worker "
        "threads, one image per thread, NNPACK and PyTorch single-threaded in each); **bf16** = channels_last under CPU bf16 autocast. Style features of non-reference variants are "
        "computed once before timing. GFLOP/s = direct-convolution FLOPs of the work done / wall time (Winograd "
        "does fewer multiplications, so it can exceed the matmul peak). Timings: minimum wall time over "
        "interleaved rounds after a warm-up (one image; for a batched variant, one per worker thread; all rounds "
        "in the CSV); x reference = best images/s over best "
        "reference images/s; 'median of rounds' = the median over rounds of each round's ratio to that round's "
        "reference (timed first in the same round); CPU s = process CPU time of "
        f"the same run. Tolerance for 'same output': {TOLERANCE:g}.",
    ]
    if bf:
        worst = max(r["max_abs_diff"] for r in bf)
        slow = max(r["wall_s"] / r["images"] for r in bf)
        best_ours = {size: max((r["images_per_s"] for r in rows if r["variant"] == "ours" and r["size"] == size
                                and r.get("images_per_s")), default=None) for size in {r["size"] for r in bf}}
        vs_ours = [r["images_per_s"] / best_ours[r["size"]] for r in bf if best_ours[r["size"]]]
        used = worst <= TOLERANCE and vs_ours and min(vs_ours) > 1
        text = (f"bf16 (measured at {', '.join(str(x) for x in sorted(best_ours))} px): "
                f"{speed_phrase(min(r['x_reference'] for r in bf))} than the float32 reference loop"
                + (f", {speed_phrase(max(vs_ours))} than ours (the float32 fast path)" if vs_ours else "")
                + f"; max |diff| {worst:.1e} {'>' if worst > TOLERANCE else '<='} {TOLERANCE:g}: "
                + ("within the tolerance and faster." if used else "not used."))
        if bf16_usable(meta):
            text += " Cases marked 'not run' were left out to keep the benchmark short."
        else:
            text += (f" Cases marked 'not run' would take minutes each (up to {slow:.1f} s per image already at "
                     "the sizes run).")
        lines += ["", text]
    if micro:
        lines += ["", "## Hot-path changes, one op at a time (1 thread, in a subprocess; batch 1, best of repeats)", "",
                  "| change | input | before (ms) | after (ms) | speed-up | max abs diff |",
                  "|---|---|---:|---:|---:|---:|",
                  *[f"| {m['what']} | {m['shape']} | {m['before_ms']:.2f} | {m['after_ms']:.2f} | {m['x']:.2f}x "
                    f"| {m['max_abs_diff']:.1e} |" for m in micro]]
    lines.append("")
    stem.with_suffix(".md").write_text("\n".join(lines))
    return headline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.benchmarks.stylization", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test); writes stylization_quick.*")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--micro", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="write the CSV and Markdown of a recorded run (its stylization.json) again; runs nothing")
    args = p.parse_args(argv)
    if args.render is not None:
        render(args.render)
        return 0
    if args.micro:  # worker of hot_path_micro_subprocess: JSON rows on the last line
        torch.set_num_threads(args.threads)
        print(json.dumps(hot_path_micro(args.quick)))
        return 0
    run(Path(args.out), args.quick, args.threads, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

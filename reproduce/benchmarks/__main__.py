"""All benchmarks: ``python -m reproduce.benchmarks [--quick] [--threads 2] [--out DIR]``.

Parts (``--parts``, default all): ``stylization`` (:mod:`.stylization`), ``contextual``
(:mod:`.contextual`, run through its own CLI), ``training`` (:mod:`.training`), ``encoder-nnpack``
(:mod:`.encoder_nnpack`, a probe; skipped without NNPACK) and ``end-to-end`` (:mod:`.end_to_end`); then ``README.md`` (``README_quick.md`` with ``--quick``) in
the output folder summarises every figure found there. ``--end-to-end-only`` regenerates just the
end-to-end table (and the summary), e.g. after a new ``python -m reproduce --profile cpu`` run.
``--quick`` is a smoke test on tiny sizes (a minute or two).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from reproduce.benchmarks import DEFAULT_OUT, read_csv
from reproduce.benchmarks.machine import bf16_hardware, bf16_usable, command_line, flags_phrase

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "lib"
if str(LIB) not in sys.path:
    sys.path.insert(0, str(LIB))

PARTS = ("stylization", "contextual", "training", "encoder-nnpack", "end-to-end")


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _runs_lines(out: Path, quick: bool) -> list[str]:
    """Every full stylization run recorded in ``stylization_runs.csv``: the spread of the headline."""
    from reproduce.benchmarks.stylization import RUNS_FILE

    runs = [] if quick else read_csv(out / RUNS_FILE)
    if not runs:
        return []
    ratios = sorted(float(r["ours_x_reference"]) for r in runs)
    medians = sorted(float(r["ours_x_reference_rounds_median"]) for r in runs if r.get("ours_x_reference_rounds_median"))
    lines = ["", f"Every full run so far (`{RUNS_FILE}`, appended by each run; 256 px, ours at its best batch):", "",
             "| date | code | reference images/s | ours images/s | batch | ours x reference | median of rounds |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['date']} | {r['source']} | {float(r['reference_images_per_s']):.2f} "
                     f"| {float(r['ours_images_per_s']):.2f} | {r['ours_best_batch']} | {float(r['ours_x_reference']):.2f} "
                     f"| {float(r['ours_x_reference_rounds_median']):.2f} |")
    lines += ["", f"Over these {len(runs)} runs: ours x reference {ratios[0]:.2f}-{ratios[-1]:.2f} (median {statistics.median(ratios):.2f})"
              + (f"; median of rounds {medians[0]:.2f}-{medians[-1]:.2f} (median {statistics.median(medians):.2f})." if medians else ".")]
    return lines


def _kinds_lines(out: Path, quick: bool) -> list[str]:
    """Issue 19's restated goal, 4x the reference at 256 px on each CPU kind measured: one row per
    stylization record in ``out`` and its subfolders (one folder per CPU kind), judged on the
    medians over that kind's recorded runs."""
    from reproduce.benchmarks.stylization import RUNS_FILE

    if quick:
        return []
    rows = []
    for folder in [out, *sorted(p for p in out.iterdir() if p.is_dir())]:
        record, runs = _load_json(folder / "stylization.json"), read_csv(folder / RUNS_FILE)
        if not record or not runs:
            continue
        meta = record.get("meta") or {}
        best = statistics.median([float(r["ours_x_reference"]) for r in runs])
        rounds = [float(r["ours_x_reference_rounds_median"]) for r in runs if r.get("ours_x_reference_rounds_median")]
        median = statistics.median(rounds) if rounds else None
        verdict = ("a stand-in, not judged (NNPACK, most of ours, ignores the caps)" if meta.get("isa_cap") else
                   _goal_verdict({"ours_x_reference": best, "ours_x_reference_rounds_median": median}))
        name = "this folder" if folder == out else f"`{folder.name}/`"
        shown = "-" if median is None else f"{median:.2f}" + (
            f" (over {len(rounds)} run{'s' if len(rounds) > 1 else ''})" if len(rounds) < len(runs) else "")
        rows.append(f"| {name} | {meta.get('cpu', '?')}, {flags_phrase(meta)} | {len(runs)} "
                    f"| {best:.2f} | {shown} | {verdict} |")
    if not rows:
        return []
    return ["", "Goal 4x the reference at 256 px **on each CPU kind measured** (issue 19), judged on the medians over "
            f"each kind's recorded runs (`{RUNS_FILE}`):", "",
            "| record | CPU | runs | ours x reference (median over runs) | median of rounds (median over runs) | goal |",
            "|---|---|---:|---:|---:|---|", *rows]


def _bf16_verdict(sty: dict, by_size: dict) -> str:
    """What the bf16 rows measured, in words: speed against the reference and ours, output difference."""
    from reproduce.benchmarks.stylization import TOLERANCE

    sizes = sorted(size for size, d in by_size.items() if "bf16" in d)
    if not sizes:
        return "bf16 was not run."
    diffs = [float(r["max_abs_diff"]) for r in sty["rows"] if r.get("variant") == "bf16" and r.get("images_per_s")]
    parts = []
    for size in sizes:
        d = by_size[size]
        speed = ("slower than the float32 reference" if d["bf16"] < 1 else
                 f"{d['bf16']:.2f}x the reference but " + ("slower than" if d["bf16"] < d.get("ours", 0) else "faster than")
                 + " ours in float32")
        parts.append(f"at {size} px bf16 is {speed}")
    within = bool(diffs) and max(diffs) <= TOLERANCE
    text = "; ".join(parts)
    return (text[:1].upper() + text[1:] + f"; its largest output difference is {max(diffs):.1e} ("
            + ("within" if within else "outside") + f" the {TOLERANCE:g} tolerance)"
            + ("." if within else ", so it is not used."))


def _goal_verdict(h: dict) -> str:
    """The 4x goal judged on both ratios (best over best, and the median of round-by-round ratios)."""
    best, median = h["ours_x_reference"], h.get("ours_x_reference_rounds_median") or h["ours_x_reference"]
    if min(best, median) >= 4:
        return "met"
    if max(best, median) >= 4:
        return f"met by one measure only (best over best {best:.2f}x, median of rounds {median:.2f}x)"
    return "not met"


def write_summary(out: Path, quick: bool) -> Path:
    """``README.md`` summarising stylization, contextual loss, training and end-to-end figures in ``out``."""
    sfx = "_quick" if quick else ""
    from reproduce.benchmarks.stylization import speed_phrase  # (imports torch: not at module level)

    sty = _load_json(out / f"stylization{sfx}.json")
    tra = _load_json(out / f"training{sfx}.json")
    ctx = read_csv(out / f"contextual_loss{sfx}.csv")
    lines = ["# Benchmarks" + (" (quick smoke run: tiny sizes, not representative)" if quick else ""), "",
             f"`{command_line({}, 'python -m reproduce.benchmarks' + (' --quick' if quick else ''), out)}` writes "
             "everything here"
             + (" (`--end-to-end-only` refreshes the end-to-end table)" if (out / "end_to_end.md").is_file() else "")
             + "; a record made under instruction-set caps names them in its command. **Timings come from a 2-core "
             "machine that is sometimes shared** (each file records the load average at its start and end): absolute times can be "
             "noisy, so every comparison below is a ratio of variants timed interleaved in the same process, under "
             "the same load.", ""]
    meta = (sty or tra or {}).get("meta")
    if meta:
        lines += [f"Machine{' (stylization)' if sty else ''}: {meta['cpu']} ({flags_phrase(meta)}), "
                  f"{meta['logical_cpus']} logical CPUs, "
                  f"torch {meta['torch']}, Python {meta['python']}, {meta['threads']} torch threads, "
                  f"NNPACK {'available' if meta.get('nnpack') else 'unavailable'}; run {meta['date']}, load average "
                  f"{meta['load_average']} at the start.", ""]
        if meta["threads"] == 1 and not quick:
            lines += ["Threads: this run used `--threads 1` (the CLI default is 2). On this shared 2-core machine "
                      "(load average ~4-5 from other jobs) 2 threads made everything slower, not faster: an "
                      "interrupted 2-thread run measured a smoke training step at ~5 s instead of 0.26 s and a lower "
                      "matmul peak, because every parallel op waits for whichever thread is descheduled. With "
                      "~2 runnable jobs per core, this process got about half a core: the peak below (the best of "
                      "several matmul probes spread over the run) is that share, and GFLOP/s fractions are relative "
                      "to it (an uncontended single-thread 2048^2 matmul reached ~90 GFLOP/s during development).", ""]
    if sty:
        peak, h = sty["peak"], sty.get("summary") or {}
        lines += ["## 1. Stylization (`stylization.md`)", "",
                  f"- Measured peak: float32 matmul {peak['fp32_gflops']:.1f} GFLOP/s; bf16 matmul "
                  f"{peak['bf16_gflops']:.2f} GFLOP/s ("
                  f"{speed_phrase(peak['bf16_gflops'] / max(peak['fp32_gflops'], 1e-9))} than float32: "
                  f"{bf16_hardware(meta.get('cpu_flags', ''), bool(meta.get('bf16_capped')))})."]
        if h.get("ours_x_reference"):
            lines.append(
                f"- **{h['size']} px: ours {h['ours_images_per_s']:.2f} images/s = {h['ours_x_reference']:.2f}x the "
                f"reference per-image AdaIN loop** (batch {h.get('ours_best_batch', '?')}; "
                f"{h['reference_images_per_s']:.2f} images/s"
                + (f"; median of the round-by-round ratios {h['ours_x_reference_rounds_median']:.2f}x"
                   if h.get("ours_x_reference_rounds_median") else "") + "); "
                f"{100 * h['ours_fraction_of_peak']:.0f}% of the fp32 peak in direct-convolution FLOPs "
                f"(reference {100 * h['reference_fraction_of_peak']:.0f}%); max |ours - reference| = "
                f"{h['ours_max_abs_diff']:.1e}.")
        flops = (sty.get("flops") or {}).get(str(h.get("size"))) or (sty.get("flops") or {}).get(h.get("size"))
        if h.get("ours_x_reference") and flops:
            ours_gf, ref_gf = flops["enc_gflop"] + flops["dec_gflop"], 2 * flops["enc_gflop"] + flops["dec_gflop"]
            need = 4 * h["reference_images_per_s"] * ours_gf
            lines.append(
                f"- Goal 4x at {h['size']} px: {_goal_verdict(h)}. Reusing the "
                f"style's features removes a third of the work ({ours_gf:.1f} vs {ref_gf:.1f} GFLOP per image), "
                f"worth 1.5x at equal efficiency; the reference already runs at "
                f"{100 * h['reference_fraction_of_peak']:.0f}% of the peak, so the rest must come from doing fewer "
                f"multiplications (Winograd / FFT). 4x needs {need:.0f} direct-convolution-equivalent GFLOP/s = "
                f"{need / peak['fp32_gflops']:.1f}x the measured peak; ours reaches "
                f"{h['ours_fraction_of_peak']:.1f}x. Where the time goes (torch.profiler, 256 px, during "
                "development): with 2 threads on one image, ~83% in NNPACK's convolutions (~160 of ~195 ms), the rest "
                "in PyTorch's operators, which the fast path runs on one thread (copies for reflection padding and "
                "upsampling, pooling, the first layer on oneDNN, the last as a matmul); on one thread NNPACK takes "
                "~285 ms per image, so two threads gain only ~1.8x on it. Hence batches run one image per thread "
                "(`FastStyleTransferNet.parallel_images`)"
                + (f": at batch {h['ours_parallel_batch']} {h['ours_parallel_x_one']:.2f}x the images/s of one "
                   f"image after another on all threads (batch 1: {h['ours_one_x_reference']:.2f}x the reference; "
                   "~1.2x as the median of 8 interleaved rounds during development)"
                   if h.get("ours_parallel_x_one") else "")
                + ". Also measured during development: fresh 16 MB buffers cost ~1.6 us per 4 KiB page on first "
                "touch in this VM (~10k such page faults per image on worker threads), but keeping freed memory "
                "(glibc `mallopt`) changed no timing measurably, so the library leaves the allocator alone. "
                + ("Without bf16 matrix units (the goal's machine has them; this one emulates bf16 "
                   f"{peak['fp32_gflops'] / max(peak['bf16_gflops'], 1e-9):.0f}x slower than fp32) the remaining gap "
                   "would need faster convolution kernels than NNPACK's." if not bf16_usable(meta) else ""))
        if h.get("ours_x_before"):
            lines.append(f"- Before this issue the library path was {h['before_x_reference']:.2f}x the reference; "
                         f"now {h['ours_x_before']:.2f}x faster than before"
                         + (f" (channels_last alone: {h['channels_last_x_before']:.2f}x)." if "channels_last_x_before" in h else "."))
        if h.get("ours_x_nnpack_op") and sty["meta"].get("nnpack_direct"):
            lines.append(
                f"- Direct NNPACK calls (`ctxstyle.fast.nnpack`) vs torch's NNPACK operator (`nnpack_op`, the previous "
                f"fast path, {h['nnpack_op_x_reference']:.2f}x the reference): {h['ours_x_nnpack_op']:.2f}x. Most of "
                "it comes from one finding: PyTorch's OpenMP threads keep spinning after each of its operators and, "
                "with as many threads as cores, compete with NNPACK's threads; running PyTorch's operators on one "
                "thread inside the fast path (images up to 384x384) took a 256 px stylization from ~3.0 to ~4.3 "
                "images/s before any other change. Kernel transforms computed once per layer and size, the ReLU "
                "fused, 16x16 FFT tiles for layers to 64 channels on large maps, and one-buffer upsample + padding and "
                "max pooling add the rest (hot-path table in `stylization.md`).")
        by_size: dict[int, dict] = {}
        for r in sty["rows"]:
            if r.get("images_per_s"):
                d = by_size.setdefault(r["size"], {})
                d[r["variant"]] = max(d.get(r["variant"], 0.0), r["x_reference"])
        if by_size:
            lines += ["", "| size | before (x ref) | channels_last (x ref) | nnpack_op (x ref) | **ours (x ref)** | bf16 (x ref) |",
                      "|---:|---:|---:|---:|---:|---:|"]
            for size, d in sorted(by_size.items()):
                lines.append(f"| {size} | {d.get('before', float('nan')):.2f} | {d.get('channels_last', float('nan')):.2f} "
                             f"| {d.get('nnpack_op', float('nan')):.2f} | **{d.get('ours', float('nan')):.2f}** | "
                             + (f"{d['bf16']:.2f}" if "bf16" in d else "not run") + " |")
            lines += _runs_lines(out, quick) + _kinds_lines(out, quick)
            lines += ["", "Best batch (1 or 8; ours at 512 px: 1 or 4) per variant (nnpack_op runs one image at a time; ours "
                      "runs a batch's images on parallel worker threads, one image per thread). " + _bf16_verdict(sty, by_size)]
        lines.append("")
    if ctx:
        lines += ["## 2. Contextual loss (`contextual_loss.md`, produced by `reproduce.benchmarks.contextual`)", "",
                  "| N | C | ours (s) | naive (s) | speed-up | memory ratio |", "|---:|---:|---:|---:|---:|---:|"]
        by = {(r["impl"], r["n"], r["c"]): r for r in ctx}
        for (impl, n, c), r in by.items():
            if impl != "ours" or r.get("status") != "ok":
                continue
            v = by.get(("naive", n, c), {})
            ok = v.get("status") == "ok"
            lines.append(f"| {n} | {c} | {float(r['wall_s']):.3f} | "
                         + (f"{float(v['wall_s']):.3f} | {float(v['wall_s']) / float(r['wall_s']):.2f}x | "
                            f"{float(v['peak_extra_mb']) / max(float(r['peak_extra_mb']), 1e-9):.1f}x |"
                            if ok else f"{v.get('status', '')} | | |"))
        lines.append("")
    if tra:
        paper = [r["step_s"] for r in tra["rows"] if r["profile"] == "paper"]
        from reproduce.benchmarks.training import reference_lines

        ref = reference_lines(tra.get("reference") or [])
        tm = tra["meta"]
        lines += ["## 3. Training step (`training.md`)", "",
                  f"Machine of this section: {tm['cpu']} ({flags_phrase(tm)}), {tm['threads']} torch threads; "
                  f"run {tm['date']}.", "", *[("#" + l if l.startswith("## ") else l) for l in ref],
                  "| profile | size x batch | loss | step (s) | GFLOP/s (% of peak) | encoders | decoder "
                  "| losses | backward | optimizer |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in tra["rows"]:
            s = r["step_s"]
            enc = r["encoder_content"] + r["encoder_style"] + r["encoder_generated"]
            gf = f"{r['gflops']:.1f} ({100 * r['fraction_of_peak']:.0f}%)" if r.get("gflops") else ""
            lines.append(f"| {r['profile']} | {r['size']} x {r['batch']} | {r['loss']}"
                         f"{'' if r['channels_last'] else ' (NCHW)'} | {s:.3f} | {gf} | {100 * enc / s:.0f}% "
                         f"| {100 * r['decoder'] / s:.0f}% | {100 * r['losses'] / s:.0f}% | {100 * r['backward'] / s:.0f}% "
                         f"| {100 * r['optimizer'] / s:.0f}% |")
        lines += ["", "Forward phases by hooks on the encoder / decoder; backward covers the decoder's weights and "
                  "the generated image's path back through the encoder. Operator tables: `training.md`. "
                  "Sizes are each profile's training crops and AdaIN layer; the warm start (reconstruction) encodes "
                  "only the content, the mean/std losses use the style bank's statistics computed once. "
                  "Convolutions (forward and backward) take most of a step at every size; the contextual loss is "
                  "small at these sizes" + (" (see section 2 for larger N)" if ctx else "") + ". Rows "
                  "marked NCHW / 'before: Tensor.var' are the same step without channels_last / with the old "
                  "`mean_std`. No warm-up (hence no FLOP count) for the paper profile"
                  + (f": ~{min(paper):.0f}-{max(paper):.0f} s per step here." if paper else "."), ""]
    probes = [p for p in [out / f"encoder_nnpack{sfx}.json", *sorted(out.glob(f"encoder_nnpack{sfx}_omp_*.json"))]
              if p.is_file()]
    if probes:
        from reproduce.benchmarks.encoder_nnpack import verdict

        lines += ["## 3b. Probe: NNPACK for the frozen encoder in a float32 training step (`encoder_nnpack*.md`)", ""]
        for path in probes:
            probe = _load_json(path)
            pm = probe["meta"]
            lines += [f"- `{path.name}` ({pm['cpu']}, {flags_phrase(pm)}; {pm['threads']} threads; run "
                      f"{pm['date']}; the {pm['profile']} profile's sizes, {pm['size']} px x {pm['batch']}, float32): "
                      f"**{verdict(probe)}**; " + ", ".join(
                          f"{r['measure']}: {r['variant']} {r['x_plain']:.2f}x" for r in probe["whole"]
                          if r["variant"] != "oneDNN (plain)") + "."]
        lines.append("")
    e2e = out / "end_to_end.md"
    if e2e.is_file():
        body = e2e.read_text().split("\n", 2)[-1]
        lines += ["## 4. End to end (`end_to_end.md`)", "", body.strip(), ""]
    lines += [
        "## What changed in the library (issue 8)", "",
        "- `ctxstyle.fast.inference.FastStyleTransferNet.stylize` / `style_features` (used by `Stylizer`): on CPU float32, images "
        ">= 64x64 run one at a time; 3x3 convolutions with >= 16 channels and >= 16x16 outputs go to NNPACK, called "
        "directly (`ctxstyle.fast.nnpack`: `nnp_convolution_inference` from PyTorch's own library via ctypes, kernel "
        "transforms precomputed per layer and image size and invalidated when the weights change, ReLU fused, "
        "Winograd 8x8 or FFT 16x16 tiles per layer and thread count, its own thread pool, PyTorch's operators "
        "single-threaded meanwhile up to 384x384; checked against `F.conv2d` at first use, else "
        "`torch._nnpack_spatial_convolution`); with several threads, the images of a batch on that many worker "
        "threads at once, one image per thread, NNPACK and PyTorch single-threaded in each "
        "(`FastStyleTransferNet.parallel_images = False`: one after another); "
        "2x2 max pools as row-pair then column-pair maxima; nearest upsampling + reflection padding written into "
        "one buffer; the decoder's 64->1 convolution as a 9-plane matmul; AdaIN once per batch. "
        "`FastStyleTransferNet.winograd = False` restores the module path ('before'), `direct_nnpack = False` torch's "
        "NNPACK operator ('nnpack_op').",
        "- `ctxstyle.method.function.mean_std`: two-pass variance instead of `Tensor.var` (same values to ~1e-8, ~10x faster "
        "on this CPU); used by AdaIN and the eq 12 style loss, so training gains too.",
        "- Measured and not adopted: bf16 (see above); `torch.compile` (inductor, freezing) of the channels_last "
        "encoder + decoder at 128 px: 79 s to compile on this machine for 1-10% faster steps (one-off "
        "measurement during development, not rerun here); batching with oneDNN in NCHW (slower than batch 1 at "
        "256 px); channels_last for the module path gains 1.1-1.3x but the Winograd path needs NCHW; folding the "
        "gray-to-RGB normalisation into conv1_1 (exact, a third of its multiplications, but slower: as a 9-tap matmul "
        "or a one-channel NNPACK convolution 6.3-7.8 ms vs 4.6 ms for oneDNN's three-channel one at 256 px, one "
        "thread; oneDNN's one-channel convolution allocates a second output-sized buffer); glibc "
        "`mallopt` to keep freed memory (see above); the calling thread taking images too instead of waiting for the "
        "workers (page faults per image 4.6k -> 2.9k, images/s +1.6% as the median of 10 interleaved rounds: within "
        "the noise, not worth the extra code).", ""]
    path = out / f"README{sfx}.md"
    path.write_text("\n".join(lines))
    print(f"wrote {path}", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of every part")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default results/benchmarks)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--end-to-end-only", action="store_true", help="only the end-to-end table (and the summary)")
    p.add_argument("--results", default=str(REPO / "results"), help="folder with <profile>/runs.json")
    args = p.parse_args(argv)
    parts = ["end-to-end"] if args.end_to_end_only else [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)  # before any NNPACK call: its thread pool is sized once
    t0 = time.perf_counter()
    if "stylization" in parts:
        from reproduce.benchmarks import stylization

        stylization.run(out, args.quick, args.threads)
    if "contextual" in parts:
        from reproduce.benchmarks import contextual

        cargs = ["--threads", str(args.threads), "--out", str(out)] + (["--quick"] if args.quick else [])
        if contextual.main(cargs) != 0:
            print("contextual-loss benchmark failed", file=sys.stderr)
            return 1
    if "training" in parts:
        from reproduce.benchmarks import training

        training.run(out, args.quick, args.threads)
    if "encoder-nnpack" in parts:
        from ctxstyle.fast import nnpack
        from reproduce.benchmarks import encoder_nnpack

        if nnpack.available():
            encoder_nnpack.run(out, args.threads, quick=args.quick)
        else:
            print("encoder-nnpack probe skipped: NNPACK is not available in this PyTorch build", flush=True)
    if "end-to-end" in parts:
        from reproduce.benchmarks import end_to_end

        end_to_end.write(out, Path(args.results))
    write_summary(out, args.quick)
    print(f"benchmarks done in {time.perf_counter() - t0:.0f} s -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

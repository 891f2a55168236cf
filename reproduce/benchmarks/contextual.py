"""Benchmark: chunked contextual loss (``ctxstyle.fast.contextual``) vs the naive full-matrix one.

``python -m reproduce.benchmarks.contextual [--quick] [--threads 2] [--cap-gb 12] [--out DIR]``

For N positions per image (1k, 4k, 16k; ``--quick``: 256 and 1k) and C = 256 and 512 channels,
one image, generated and target both (1, C, N) ReLU-like random features (relu of N(0, 1)),
it times forward + backward (gradients w.r.t. both inputs) and measures the peak extra memory,
for ours and for :func:`reproduce.benchmarks.naive_contextual.naive_contextual_loss`, in the
same run. Every (implementation, N, C) case runs in a fresh subprocess:

* memory: the inputs are created, the process's peak-RSS mark is reset
  (``echo 5 > /proc/self/clear_refs``) and the baseline RSS read; after the first
  forward + backward the peak extra memory is ``VmHWM - baseline`` (``/proc/self/status``). This
  is resident memory, so it includes allocator overheads and the input gradients; if the reset
  is not permitted it falls back to ``ru_maxrss - baseline``.
* time: the first call is a warm-up; the best (minimum) wall time and process CPU time of the
  next repeats are reported, plus the median wall time. Other processes on a shared machine
  inflate wall times (the minimum is the least affected); the load average is recorded.

Cases the naive version would need more than ``--cap-gb`` for (estimated as 7 float32
N x N matrices, which matches its measured peak) are reported as "not run". Writes
``<out>/contextual_loss{,_quick}.csv``, ``.md`` and ``.png`` (time vs N, log-log).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from reproduce.benchmarks.machine import cpu_model, load_average

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "lib"
IMPLS = ("ours", "naive")
NAIVE_MATRICES = 7  # naive peak ~ 7 float32 (N x N) matrices (measured: 7.3 GB at N = 16k)


# ---------------------------------------------------------------------------------------------
# worker (one case per fresh process)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(impl: str, n: int, c: int, threads: int, repeats: int, seed: int) -> dict:
    import torch

    sys.path.insert(0, str(LIB))
    torch.set_num_threads(threads)
    if impl == "ours":
        from ctxstyle.fast.contextual import contextual_loss as fn
        from ctxstyle.fast.contextual import default_chunk_rows

        chunk_rows = min(default_chunk_rows(n), n)
    else:
        from reproduce.benchmarks.naive_contextual import naive_contextual_loss as fn

        chunk_rows = n
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(1, c, n, generator=gen).relu_().requires_grad_()
    t = torch.randn(1, c, n, generator=gen).relu_().requires_grad_()

    def step() -> float:
        g.grad = t.grad = None
        loss = fn(g, t)
        loss.backward()
        return float(loss.detach())

    hwm_ok = _reset_hwm()
    base = _rss_bytes()
    t0 = time.perf_counter()
    loss = step()
    first = time.perf_counter() - t0
    if hwm_ok:
        peak, method = _hwm_bytes(), "VmHWM after clear_refs"
    else:
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {
        "impl": impl, "n": n, "c": c, "status": "ok", "loss": loss, "first_s": first,
        "wall_s": min(walls) if walls else first,
        "wall_median_s": statistics.median(walls) if walls else first,
        "cpu_s": min(cpus) if cpus else float("nan"),
        "walls": walls, "peak_extra_mb": max(0, peak - base) / 2**20, "memory_method": method,
        "chunk_rows": chunk_rows, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------
# driver


def run_case(impl: str, n: int, c: int, threads: int, repeats: int, seed: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "reproduce.benchmarks.contextual", "--worker", impl, str(n), str(c),
           "--threads", str(threads), "--repeats", str(repeats), "--seed", str(seed)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(LIB), str(REPO), os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "n": n, "c": c, "status": f"failed: timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"impl": impl, "n": n, "c": c, "status": f"failed (exit {proc.returncode}): {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(x, spec: str) -> str:
    return "" if x is None or x == "" else format(x, spec)


def write_outputs(rows: list[dict], meta: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    fields = ["impl", "n", "c", "status", "wall_s", "wall_median_s", "cpu_s", "first_s", "peak_extra_mb", "loss", "chunk_rows",
              "memory_method", "walls"]
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "walls": " ".join(f"{x:.4f}" for x in r.get("walls", []))})

    by = {(r["impl"], r["n"], r["c"]): r for r in rows}
    lines = [
        "# Contextual loss: chunked (ours) vs naive full matrix",
        "",
        f"Forward + backward for one image, N positions for both generated and target, C channels, "
        f"{meta['threads']} threads. `python -m reproduce.benchmarks.contextual"
        f"{' --quick' if meta['quick'] else ''} --threads {meta['threads']}`.",
        "",
        "| N | C | ours time (s) | naive time (s) | speed-up | ours CPU (s) | naive CPU (s) | ours peak extra (MB) "
        "| naive peak extra (MB) | memory ratio | ours chunk rows | abs loss diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in meta["sizes"]:
        for c in meta["channels"]:
            o, v = by.get(("ours", n, c), {}), by.get(("naive", n, c), {})
            ok_o, ok_v = o.get("status") == "ok", v.get("status") == "ok"
            naive_t = _fmt(v.get("wall_s"), ".3f") if ok_v else v.get("status", "")
            naive_cpu = _fmt(v.get("cpu_s"), ".3f") if ok_v else ""
            naive_m = _fmt(v.get("peak_extra_mb"), ".0f") if ok_v else ""
            speed = _fmt(v["wall_s"] / o["wall_s"], ".2f") + "x" if ok_o and ok_v else ""
            mem = _fmt(v["peak_extra_mb"] / max(o["peak_extra_mb"], 1e-9), ".1f") + "x" if ok_o and ok_v else ""
            diff = _fmt(abs(o["loss"] - v["loss"]), ".1e") if ok_o and ok_v else ""
            lines.append(
                f"| {n} | {c} | {_fmt(o.get('wall_s'), '.3f') if ok_o else o.get('status', '')} | {naive_t} | {speed} "
                f"| {_fmt(o.get('cpu_s'), '.3f') if ok_o else ''} | {naive_cpu} "
                f"| {_fmt(o.get('peak_extra_mb'), '.0f') if ok_o else ''} | {naive_m} | {mem} "
                f"| {o.get('chunk_rows', '')} | {diff} |")
    lines += [
        "",
        "Times: best (minimum) of the timed repeats after one warm-up (medians in the CSV); CPU = process CPU "
        "time of the same best-of. Speed-up = naive / ours wall time; memory ratio = naive / "
        "ours peak extra resident memory. Each case ran in a fresh subprocess; peak extra memory = peak RSS "
        "(VmHWM, reset via /proc/self/clear_refs just before the first call) minus the RSS after creating the "
        "inputs, so it includes the input gradients and allocator overheads. Inputs: relu(N(0, 1)) features. "
        f"Naive cases estimated above {meta['cap_gb']} GB ({NAIVE_MATRICES} float32 N x N matrices) are not run.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in meta.items() if k not in ("sizes", "channels")],
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for impl, style in (("ours", "-o"), ("naive", "--s")):
        for c in meta["channels"]:
            pts = [(n, by[(impl, n, c)]["wall_s"]) for n in meta["sizes"]
                   if by.get((impl, n, c), {}).get("status") == "ok"]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{impl}, C={c}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("positions per image N")
    ax.set_ylabel("forward + backward wall time (s)")
    ax.set_title(f"Contextual loss, {meta['threads']} threads, torch {meta['torch']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.benchmarks.contextual", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small N only (smoke test); writes contextual_loss_quick.*")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--cap-gb", type=float, default=12.0, help="skip naive cases estimated above this (default 12)")
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks"), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", nargs=3, metavar=("IMPL", "N", "C"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        impl, n, c = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(worker(impl, n, c, args.threads, args.repeats or 1, args.seed)))
        return 0

    import torch

    sys.path.insert(0, str(LIB))
    from ctxstyle.fast.contextual import CHUNK_BYTES

    sizes = (256, 1024) if args.quick else (1024, 4096, 16384)
    channels = (256,) if args.quick else (256, 512)
    meta = {
        "quick": args.quick, "sizes": sizes, "channels": channels, "threads": args.threads,
        "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(), "cap_gb": args.cap_gb, "ours_chunk_mb": CHUNK_BYTES / 2**20,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_start": load_average(),
    }
    rows = []
    for n in sizes:
        repeats = args.repeats or (10 if n <= 1024 else 4 if n <= 4096 else 2)
        for c in channels:
            for impl in IMPLS:
                need_gb = NAIVE_MATRICES * n * n * 4 / 1e9
                if impl == "naive" and need_gb > args.cap_gb:
                    rows.append({"impl": impl, "n": n, "c": c, "status": f"not run: would need ~{need_gb:.0f} GB"})
                else:
                    rows.append(run_case(impl, n, c, args.threads, repeats, args.seed, timeout=1800))
                r = rows[-1]
                print(f"{impl:5s} N={n:6d} C={c:4d} " + (
                    f"{r['wall_s']:8.3f} s (cpu {r['cpu_s']:.3f} s)  peak extra {r['peak_extra_mb']:8.0f} MB  "
                    f"loss {r['loss']:.6f}" if r["status"] == "ok" else r["status"]), flush=True)
    meta["load_average_end"] = load_average()
    stem = Path(args.out) / ("contextual_loss_quick" if args.quick else "contextual_loss")
    write_outputs(rows, meta, stem)
    print(f"wrote {stem}.csv, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

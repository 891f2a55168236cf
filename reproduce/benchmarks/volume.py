"""Benchmark: one whole CT volume through ``ctxstyle stylize``, as a user runs it.

    python -m reproduce.benchmarks.volume [--checkpoint CKPT] [--shape 512 512 300] [--threads 2] [--out DIR]

Writes a synthetic volume (smooth random HU plus noise, ``--shape`` voxels, gzipped NIfTI) and a
style image into a temporary folder, runs the ``ctxstyle stylize`` command on them in a child
process (``--threads`` torch threads) and records the wall time, the command's own timing line
(seconds per slice, batch size) and the child's peak resident memory, with the CPU model and
flags. The decoder is ``--checkpoint`` (default: the ``ours`` decoder notebook 06 of
``results/cpu`` shows); its weights do not change the time, its AdaIN layer does. Writes
``volume.{md,json}`` into ``--out`` (default ``results/benchmarks``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reproduce.benchmarks import DEFAULT_OUT

REPO = Path(__file__).resolve().parents[2]


def default_checkpoint(results: Path = REPO / "results" / "cpu") -> Path | None:
    """The decoder notebook 06 shows (``ours``, first seed; from its record), else the newest ``ours``."""
    try:
        rel = json.loads((results / "records" / "06_explore.json").read_text())["parameters"]["decoder_checkpoint"]
        if (results / rel).is_file():
            return results / rel
    except (OSError, KeyError, ValueError):
        pass
    found = sorted((results / "checkpoints").glob("ours-*/checkpoint-last.pt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def make_inputs(folder: Path, shape: tuple[int, int, int], seed: int = 0) -> tuple[Path, Path]:
    """A gzipped NIfTI volume of smooth random HU (-1000..1500) and a PNG style image."""
    import nibabel as nib
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    h, w, d = shape
    low = torch.rand(1, 1, max(2, d // 16), max(2, h // 32), max(2, w // 32), generator=gen)
    vol = F.interpolate(low, size=(d, h, w), mode="trilinear", align_corners=False)[0, 0]
    vol = (vol * 2500 - 1000 + 40 * torch.randn(vol.shape, generator=gen)).permute(1, 2, 0).numpy().astype(np.float32)
    src = folder / "volume.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 1.0, 1.0])), str(src))
    style = folder / "style.png"
    Image.fromarray((np.asarray(torch.rand(128, 128, generator=gen)) * 255).astype(np.uint8)).save(style)
    return src, style


def run(checkpoint: Path, shape: tuple[int, int, int], threads: int, out: Path) -> dict:
    from reproduce.benchmarks.machine import machine_info

    meta = machine_info(threads)
    with tempfile.TemporaryDirectory(prefix="ctxstyle-volume-") as tmp:
        src, style = make_inputs(Path(tmp), shape)
        cmd = [str(Path(sys.executable).with_name("ctxstyle")), "stylize", str(src), str(style), "-o",
               str(Path(tmp) / "styled.nii.gz"), "--checkpoint", str(checkpoint)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torch's default thread count in the child
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if done.returncode != 0:
            raise SystemExit(f"ctxstyle stylize failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
        line = next((l for l in done.stderr.splitlines() if l.startswith("stylized ")), "")
        m = re.search(r"in ([\d.]+) s \(([\d.]+) s per slice, batches of (\d+)\)", line)
        result = {**meta, "shape": list(shape), "checkpoint": f"{checkpoint.parent.name}/{checkpoint.name}",
                  "command": "ctxstyle stylize volume.nii.gz style.png -o styled.nii.gz --checkpoint CKPT",
                  "wall_s": round(wall, 1), "stylize_s": float(m.group(1)) if m else None,
                  "s_per_slice": float(m.group(2)) if m else None, "batch": int(m.group(3)) if m else None,
                  "peak_rss_mib": round(peak_kib / 1024, 0) if peak_kib > before else None,
                  "input_mib": round(src.stat().st_size / 2**20, 1), "timing_line": line}
    out.mkdir(parents=True, exist_ok=True)
    (out / "volume.json").write_text(json.dumps(result, indent=2))
    h, w, d = shape
    (out / "volume.md").write_text("\n".join([
        "# One CT volume through `ctxstyle stylize`", "",
        f"`python -m reproduce.benchmarks.volume --shape {h} {w} {d} --threads {threads}` ({result['date']}; "
        f"{result['cpu']}, flags {result['cpu_flags']}, {threads} threads, torch {result['torch']}).", "",
        "| volume (voxels) | decoder | wall time (s) | stylizing (s) | s per slice | batch | peak memory (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| {h} x {w} x {d} | `{result['checkpoint']}` | {result['wall_s']} | {result['stylize_s']} "
        f"| {result['s_per_slice']} | {result['batch']} | {result['peak_rss_mib']} |", "",
        "Wall time: the whole command (start-up, checks, reading and writing the gzipped NIfTI); stylizing: "
        "the command's own timing line (the slices through the network and the writing); peak memory: the "
        "child process's maximum resident set.", ""]))
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.benchmarks.volume", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], metavar=("H", "W", "SLICES"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    checkpoint = args.checkpoint or default_checkpoint()
    if checkpoint is None or not Path(checkpoint).is_file():
        print("no decoder checkpoint: pass --checkpoint (e.g. from `ctxstyle train --method ours`)", file=sys.stderr)
        return 2
    run(Path(checkpoint), tuple(args.shape), args.threads, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

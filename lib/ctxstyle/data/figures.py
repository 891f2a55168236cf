"""Data figures: every style on example slices (``styles.png``) and HU histograms per patient
(``hu_histograms.png``), plus ``summary.json`` (protocol, slice counts, data version).

Run: ``python -m ctxstyle.data.figures [OUTDIR]`` or ``ctxstyle data figures`` (default
``<repo>/results/data``; that default also regenerates the block of ``docs/DATA.md`` between its
``data-summary`` markers from the new summary).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ctxstyle import settings

from ctxstyle.data.io import spine_mask
from ctxstyle.errors import InputError
from ctxstyle.store import marked_block, replace_marked_block
from ctxstyle.data.protocol import PROTOCOL
from ctxstyle.data.registry import DEFAULT_PATIENTS, data_version, load_patient
from ctxstyle.data.slices import load_slice_set
from ctxstyle.data.styles import STYLES, apply_style

__all__ = ["plot_styles", "plot_hu_histograms", "make_figures", "data_doc_block", "update_data_doc", "main"]


def _figure(**kw):
    """A pyplot-free Figure (leaves the caller's matplotlib backend alone)."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def plot_styles(path: str | Path, patients=("verse005", "verse014", "totalseg"), *,
                size: int = 128, plane: str = "axial", seed: int = 0) -> Path:
    """One mid-spine slice per patient (rows) under every style (columns), mask outlined."""
    ss = load_slice_set(patients, size=size, plane=plane)
    names = list(STYLES)
    fig = _figure(figsize=(1.9 * len(names), 2.1 * len(patients)))
    axes = fig.subplots(len(patients), len(names), squeeze=False)
    for i, pid in enumerate(patients):
        sub = ss.select(pid)
        area = sub.mask.reshape(len(sub), -1).sum(1)
        lo, hi = len(sub) // 4, max(len(sub) // 4 + 1, 3 * len(sub) // 4)
        k = lo + int(np.argmax(area[lo:hi]))  # largest mask in the middle half
        for j, name in enumerate(names):
            ax = axes[i, j]
            ax.imshow(apply_style(sub.hu[k], name, seed=seed, spacing_mm=ss.params["spacing_mm"]), cmap="gray", vmin=0, vmax=1)
            ax.contour(sub.mask[k], levels=[0.5], colors="#ff4040", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                role = STYLES[name].role
                ax.set_title(f"{name}\n({role})", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{pid}\nslice {int(sub.index[k])}", fontsize=8)
    fig.suptitle(f"Gray-scale styles ({plane}, {size}x{size} at {ss.params['spacing_mm']} mm; "
                 "red = spine mask)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_hu_histograms(path: str | Path, patients=DEFAULT_PATIENTS) -> tuple[Path, dict]:
    """HU histograms per patient: whole volume (left) and inside the vertebrae (right).

    Returns (path, {patient: {"median_vertebra_hu", "p1", "p99"}}).
    """
    fig = _figure(figsize=(11, 4))
    a0, a1 = fig.subplots(1, 2)
    bins = np.linspace(-1200, 2000, 161)
    stats = {}
    for pid in patients:
        ct, lab = load_patient(pid)
        m = spine_mask(lab.labels).astype(bool)
        inside = ct.hu[m]
        med = float(np.median(inside))
        stats[pid] = {"median_vertebra_hu": round(med, 1),
                      "p1_hu": round(float(np.percentile(ct.hu, 1)), 1),
                      "p99_hu": round(float(np.percentile(ct.hu, 99)), 1),
                      "label_source": lab.label_source}
        a0.hist(ct.hu.ravel(), bins=bins, histtype="step", density=True, label=pid)
        a1.hist(inside, bins=bins, histtype="step", density=True, label=f"{pid} (median {med:.0f})")
    a0.set_yscale("log")
    a0.set_title("all voxels")
    a1.set_title("inside vertebra masks")
    for ax in (a0, a1):
        ax.set_xlabel("HU")
        ax.legend(fontsize=7)
    a0.set_ylabel("density")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path, stats


#: The files :func:`make_figures` writes.
FIGURE_FILES = ("styles.png", "hu_histograms.png", "summary.json")


def make_figures(outdir: str | Path | None = None, *, force: bool = False) -> dict:
    """Write styles.png, hu_histograms.png and summary.json into ``outdir`` (default: the
    checkout's ``results/data``, which they regenerate, together with the generated block of the
    checkout's ``docs/DATA.md``). Anywhere else an existing file of those names is refused
    (InputError naming it) unless ``force``."""
    root = settings.repo_root()
    own = outdir is None and root is not None  # the project's own figures, regenerated in place
    if outdir is None:
        outdir = (root / "results" / "data") if root is not None else Path("results/data")
    outdir = Path(outdir)
    existing = [outdir / name for name in FIGURE_FILES if (outdir / name).exists()]
    if existing and not (own or force):
        raise InputError(existing[0], "exists; the figures never replace a file unless told to (--force)")
    doc = root / "docs" / "DATA.md" if own else None
    if doc is not None:
        marked_block(doc, DOC_START, DOC_END)  # refuse before any figure is drawn, not after
    t0 = time.perf_counter()
    styles_png = plot_styles(outdir / "styles.png")
    hist_png, stats = plot_hu_histograms(outdir / "hu_histograms.png")
    counts = {plane: load_slice_set(DEFAULT_PATIENTS, size=128, plane=plane).counts()
              for plane in ("axial", "sagittal")}
    summary = {
        "data_version": data_version(),
        "protocol": PROTOCOL.to_dict(),
        "slice_counts_128": counts,
        "hu_stats": stats,
        "figures": [styles_png.name, hist_png.name],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if doc is not None:
        update_data_doc(doc, summary)
    return summary


#: markers of the generated block of docs/DATA.md
DOC_START, DOC_END = "<!-- data-summary:start -->", "<!-- data-summary:end -->"


def data_doc_block(summary: dict) -> str:
    """The generated block of docs/DATA.md (slice counts and vertebra HU per scan) from a
    ``summary.json`` of :func:`make_figures`: what goes between its markers."""
    counts, stats = summary["slice_counts_128"], summary["hu_stats"]
    patients = list(counts["axial"])
    lines = ["", "<!-- generated by `ctxstyle data figures` from results/data/summary.json; do not edit by hand -->",
             "Slices per patient (size 128, 1 mm, empty dropped):", "",
             "| | " + " | ".join(patients) + " | total |", "|---" * (len(patients) + 2) + "|"]
    for plane, row in counts.items():
        lines.append(f"| {plane} | " + " | ".join(str(row.get(p, 0)) for p in patients) + f" | {sum(row.values())} |")
    median = {p: v["median_vertebra_hu"] for p, v in stats.items()}
    low, high = min(median, key=median.get), max(median, key=median.get)
    lines += ["", f"Median vertebra HU per scan: {median[low]:.0f} ({low}) to {median[high]:.0f} ({high}) "
              "(`hu_histograms.png`).", ""]
    return "\n".join(lines)


def update_data_doc(path: str | Path, summary: dict) -> bool:
    """Put :func:`data_doc_block` between the markers of ``path`` (docs/DATA.md); True if it changed."""
    return replace_marked_block(path, DOC_START, DOC_END, data_doc_block(summary))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ctxstyle.data.figures", description=__doc__.splitlines()[0])
    parser.add_argument("outdir", nargs="?", default=None, help="folder for the figures (default <repo>/results/data)")
    parser.add_argument("--force", action="store_true", help="replace existing figure files in OUTDIR")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    summary = make_figures(args.outdir, force=args.force)
    print(json.dumps({k: summary[k] for k in ("data_version", "slice_counts_128", "figures")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Anatomy showcase: a longer-trained decoder stylizing held-out CT slices into other gray scales.

    python -m reproduce.showcase [--configs ours adain] [--n 32] [--out results/showcase]

For each config ``reproduce/showcase/<name>.yaml`` it trains a decoder (or resumes / reloads
the one in ``<out>/checkpoints/<name>``), stylizes ``n`` test slices (verse014 + totalseg, never
seen in training or tuning) into each of the 5 target gray scales using a style image from
another test slice, and writes to ``<out>``:

* ``figures/showcase.png``: content X, style image Y, output G of each config, the ideal output
  (the same slice rendered in Y's gray scale) and G with the content's bone outline drawn on it;
* ``figures/showcase_zoom.png``: the same with zoomed windows where the outputs differ most;
* ``figures/showcase_training.png``: the loss curves;
* ``tables/showcase_metrics.csv/.md``: mean and std over pairs of LPIPS to the ideal output,
  bone Dice of the shape (rank-matched threshold), edge SSIM and the mean gray-level error, for
  every config, histogram matching, no transfer and the ideal output (``_val``: the same on the
  validation patient);
* ``records/showcase.json``: the command, configs, training steps and time, weights provenance
  and data version.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "lib") not in sys.path:
    sys.path.insert(0, str(REPO / "lib"))

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = Path("results") / "showcase"  # relative: run from the repository root
SHOWN = ("identity", "histmatch", "truth")
QUICK_STYLE_BANK = 16  # style images whose statistics a run with --iterations draws from
LABELS = {"ours": "ours, AdaIN at relu4_1\n(CX + style)", "ours_relu3_1": "ours, AdaIN at relu3_1\n(CX + style)",
          "adain_relu3_1": "AdaIN, at relu3_1\n(MSE + style)"}


def train_configs(names, out: Path, progress: bool, iterations: int | None = None) -> dict:
    """``{name: (Stylizer, seconds spent training in this call)}`` for each config name
    (``iterations`` overrides every config's, for a quick look or a smoke test, and then the style
    statistics come from :data:`QUICK_STYLE_BANK` style images)."""
    from ctxstyle.experiments import presets
    from ctxstyle.experiments.presets import config_from_yaml
    from ctxstyle.stylize import Stylizer
    from ctxstyle.train import train

    trained = {}
    for name in names:
        cfg = config_from_yaml(CONFIG_DIR / f"{name}.yaml")
        cfg.output_dir = str(out / "checkpoints" / name)
        if iterations:  # a quick look: also draw the style statistics from a small seeded bank
            cfg.iterations = int(iterations)
            cfg.style_bank_size = min(cfg.style_bank_size or QUICK_STYLE_BANK, QUICK_STYLE_BANK)
        t0 = time.perf_counter()
        path = train(cfg, progress=progress, fast=presets.FAST)
        trained[name] = (Stylizer.from_checkpoint(path, device=cfg.device, fast=presets.FAST), time.perf_counter() - t0)
    return trained


def bone_outline(hu, threshold: float):
    """Boolean outline (one pixel wide) of the region ``hu >= threshold``."""
    from scipy.ndimage import binary_erosion

    region = hu >= threshold
    return region & ~binary_erosion(region)


def plot_showcase(pairs, outputs, examples, columns, labels):
    """Rows: (pair, style) examples; columns: content, style, each output column, and the first
    column's output with the content's bone outline (HU >= BONE_HU) in red."""
    import matplotlib.pyplot as plt
    import numpy as np
    from ctxstyle.metrics.anatomy import BONE_HU
    from ctxstyle.experiments.style_transfer import SHORT_LABELS

    labels = {**SHORT_LABELS, **labels}
    titles = ["content X\n(source gray scale)", "style image Y", *[labels.get(c, c) for c in columns],
              f"{columns[0]} + content\nbone outline (HU >= {BONE_HU:g})"]
    fig, axes = plt.subplots(len(examples), len(titles), figsize=(1.9 * len(titles), 2.0 * len(examples)),
                             squeeze=False)
    for r, (i, s) in enumerate(examples):
        first = outputs[columns[0]][s][i]
        overlay = np.repeat(first[..., None], 3, axis=-1)
        overlay[bone_outline(pairs.hu[i], BONE_HU)] = (1.0, 0.15, 0.15)
        images = [pairs.content[i], pairs.refs[s][i], *[outputs[c][s][i] for c in columns], overlay]
        for c, img in enumerate(images):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
        axes[r, 0].set_ylabel(f"{pairs.patient[i]} #{pairs.index[i]}\n-> {s}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_training(histories):
    """Loss curves (50-step moving average) from ``{name: training history}``."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, hist in histories.items():
        steps = np.array([h["step"] for h in hist])
        for ax, key in zip(axes, ("content", "style")):
            v = np.array([h[key] for h in hist])
            k = min(50, len(v))
            smooth = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, label=name)
    axes[0].set_title("content loss (contextual for ours, relative MSE for AdaIN)", fontsize=8)
    axes[1].set_title("style loss (eq 12, relative)", fontsize=8)
    for ax in axes:
        ax.set_xlabel("step"), ax.set_yscale("log"), ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.showcase", description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["ours"], help="names of reproduce/showcase/<name>.yaml")
    p.add_argument("--n", type=int, default=32, help="test content slices (x 5 target styles)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--iterations", type=int, help="override every config's training steps (quick look / tests)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from ctxstyle.data.registry import data_version
    from ctxstyle.experiments.records import record_run, save_figure, save_table
    from ctxstyle.experiments.style_transfer import (evaluate, loss_history, method_outputs, pair_set, plot_examples, summarize)

    trained = train_configs(args.configs, args.out, progress=not args.no_progress, iterations=args.iterations)
    stylizers = {name: st for name, (st, _) in trained.items()}
    histories = {name: loss_history(st) for name, st in stylizers.items()}
    size = {st.config["image_size"] for st in stylizers.values()}
    run_size = max(int(st.config.get("data_kwargs", {}).get("load_size") or st.config["image_size"])
                   for st in stylizers.values())
    metrics = ("lpips_truth", "bone_dice_rank", "edge_ssim", "mean_gray_error")
    # the validation patient first: the same table on data that may guide choices, then the test split
    val = pair_set("val", run_size, n=args.n)
    val_summary = summarize(evaluate(val, method_outputs(val, stylizers, include=SHOWN, timing_pairs=0)[0]), metrics=metrics)
    pairs = pair_set("test", run_size, n=args.n)
    outputs, ms = method_outputs(pairs, stylizers, include=SHOWN)
    summary = summarize(evaluate(pairs, outputs), metrics=metrics)
    summary.insert(1, "ms_per_image", summary["method"].map(ms))
    tables = {"showcase_metrics": save_table(summary, args.out, "showcase_metrics"),
              "showcase_metrics_val": save_table(val_summary, args.out, "showcase_metrics_val")}

    # one example per target style, spread over the test contents (both patients)
    picks = [round(k * (len(pairs) - 1) / (len(pairs.styles) - 1)) for k in range(len(pairs.styles))]
    examples = list(zip(picks, pairs.styles))
    columns = [*stylizers, "histmatch", "truth"]
    figures = [save_figure(plot_showcase(pairs, outputs, examples, columns, LABELS), args.out, "showcase"),
               save_figure(plot_examples(pairs, outputs, examples, columns, labels=LABELS), args.out, "showcase_zoom"),
               save_figure(plot_training(histories), args.out, "showcase_training")]

    first = next(iter(stylizers.values()))
    steps = {name: st.config["iterations"] for name, st in stylizers.items()}
    record_run(
        args.out, "showcase", seeds=sorted({st.config["seed"] for st in stylizers.values()}),
        weights_provenance=first.weights_provenance, data_version=data_version(),
        parameters={"command": "python -m reproduce.showcase " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "configs": {name: st.config for name, st in stylizers.items()},
                    "training_image_size": sorted(size), "evaluation_image_size": run_size,
                    "test_contents": len(pairs), "val_contents": len(val), "styles": list(pairs.styles),
                    "training_steps": steps,
                    "training_seconds": {n: round(sum(h["seconds"] for h in hist), 1)
                                         for n, hist in histories.items()},
                    "training_seconds_this_call": {n: round(t, 1) for n, (_, t) in trained.items()}},
        tables=tables, figures=figures,
        notes=f"Decoders trained {steps} steps on random {sorted(size)} px crops of {run_size} px training "
              f"slices; evaluated on {len(pairs)} test slices x {len(pairs.styles)} target styles at {run_size} px.",
    )
    print(summary.to_string(index=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

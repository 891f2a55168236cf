"""bf16 check: the recipe's warm start and one method's fine-tuning under bf16 autocast, beside the
same runs in float32, scored on validation.

    python -m reproduce.precision --profile cpu [--method ours]

Issue 19 allows bf16 autocast for training only where the loss curves and the final metrics stay
within a measured tolerance of float32. This measures them: the profile's warm start (gate A: edge
SSIM and bone Dice (rank) at alpha = 0) and ``--method``'s fine-tuning at the learning rate the
float32 recipe chose on validation (its validation LPIPS to the ideal output), each trained once in
float32 and once with ``Recipe(precision="bf16")`` (cached by config hash; one side is the profile's
own runs: bf16 where the profile says ``precision: auto`` on a CPU with bf16 units), plus the loss
at the end of each run (mean of the last fifth) and how far the bf16 loss curve lies from the
float32 one. Outputs are scored in float32 either way. Speed is not
measured here (the float32 runs may have trained on another thread count): the training benchmark
(``python -m reproduce.benchmarks --parts training``) times both side by side.

Runs only on CPUs with bf16 units (AVX512-BF16 or AMX); elsewhere bf16 is emulated and many times
slower, and the command says so and writes nothing. It takes the recipe notebook 03 recorded in
``results/<profile>/records/`` (run it first) and sets the arithmetic of each side itself. Writes ``tables/precision_check.{csv,md}`` and
``records/precision_check.json`` under ``results/<profile>``. Validation data only.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "lib") not in sys.path:
    sys.path.insert(0, str(REPO / "lib"))


def _curve_gap(a: list[dict], b: list[dict], key: str = "total") -> float:
    """Mean |a - b| / mean |a| of two loss curves, each smoothed over windows of a twentieth of the run."""
    import numpy as np

    x = np.array([h.get(key, h["content"]) for h in a], dtype=float)
    y = np.array([h.get(key, h["content"]) for h in b], dtype=float)
    n = min(len(x), len(y))
    k = max(1, n // 20)
    smooth = lambda v: np.convolve(v[:n], np.ones(k) / k, mode="valid")  # noqa: E731
    xs, ys = smooth(x), smooth(y)
    return float(np.abs(xs - ys).mean() / max(np.abs(xs).mean(), 1e-12))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.precision", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--method", default="ours", help="the method whose fine-tuning is also run in bf16")
    p.add_argument("--results", type=Path, default=None, help="results folder (default results/<profile>)")
    args = p.parse_args(argv)

    import pandas as pd
    import torch

    from ctxstyle.experiments import records
    from ctxstyle.experiments import recipe as rc
    from ctxstyle.experiments import style_transfer as sx
    from ctxstyle.data import data_version
    from ctxstyle.experiments.presets import train_or_load

    from ctxstyle.cpu_isa import bf16_capped

    from .benchmarks.machine import bf16_hardware, cpu_flags
    from .report import machine_info
    from .threads import recorded_recipe

    flags = cpu_flags()
    if not rc.bf16_units():
        print(f"precision check skipped: {bf16_hardware(flags, bf16_capped())} (flags: {flags}); nothing written")
        return 0
    results_dir = args.results or REPO / "results" / args.profile
    recipe = dataclasses.replace(recorded_recipe(results_dir, check_arithmetic=False), precision="fp32")  # the float32 side (each side sets its arithmetic)
    checkpoints = results_dir / "checkpoints"
    pairs = rc.val_pairs(recipe)
    t0 = time.perf_counter()
    choice = rc.choose_lr(args.method, recipe, checkpoints, progress=True)  # the float32 recipe's lr choice (cached)
    rows = []
    recipe16 = dataclasses.replace(recipe, precision="bf16")
    warm32 = rc.warm_start(recipe, checkpoints, progress=True)
    warm16 = rc.warm_start(recipe16, checkpoints, progress=True)
    tuned32 = choice["stylizers"][choice["lr"]]
    cfg16 = rc.method_config(args.method, recipe16, lr=choice["lr"], seed=recipe.seeds[0], init_decoder=warm16.checkpoint)
    tuned16 = train_or_load(cfg16, checkpoints, args.method, progress=True)
    hist = {}
    for run, precision, st in (("warm start", "fp32", warm32), ("warm start", "bf16", warm16),
                               (f"{args.method} (lr {choice['lr']:g})", "fp32", tuned32),
                               (f"{args.method} (lr {choice['lr']:g})", "bf16", tuned16)):
        h = sx.loss_history(st)
        hist[(run, precision)] = h
        row = {"run": run, "precision": precision, "steps": len(h),
               "final loss (last fifth)": rc.plateaued(h)["last_fifth"]}
        if run == "warm start":
            scores = rc.reconstruction_scores(st, pairs)
            row.update({"edge SSIM (val)": scores["edge_ssim"], "bone Dice rank (val)": scores["bone_dice_rank"],
                        "gate A passed": scores["passed"]})
        else:
            row["LPIPS to ideal (val)"] = rc.val_score(st, pairs, Path(st.checkpoint).parent / "val_scores.json")
        row["loss curve gap vs fp32"] = 0.0 if precision == "fp32" else _curve_gap(hist[(run, "fp32")], h)
        row["config"] = Path(st.checkpoint).parent.name
        rows.append(row)
    table = pd.DataFrame(rows)
    print(table.round(4).to_string(index=False))
    paths = records.save_table(table, results_dir, "precision_check")
    records.record_run(
        results_dir, "precision_check", seeds=[0], weights_provenance=warm32.weights_provenance,
        data_version=data_version(),
        parameters={"command": "python -m reproduce.precision " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "profile": args.profile, "method": args.method, "lr": choice["lr"], "recipe": recipe.to_dict(),
                    "cpu_flags": flags, "seconds": round(time.perf_counter() - t0, 1),
                    "torch_threads": torch.get_num_threads(), "machine": machine_info()},
        tables={"precision_check": paths},
        notes="The warm start and one method's fine-tuning under bf16 autocast beside float32, on validation.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

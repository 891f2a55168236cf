"""Thread-count check: the recipe's warm start and `ours` decoder trained again with another torch
thread count (other kernels, other rounding), scored on validation, beside the profile's run.

    python -m reproduce.threads --profile cpu [--threads 1]

Bitwise determinism holds on one machine and thread count only. This shows how far the numbers
that decide the run (gate A, and the validation outcome of `ours` at its chosen lr) move when only
the thread count changes, next to the spread over decoder seeds that the tables already carry.
It reads the recipe notebook 03 recorded, its reference numbers and chosen lr from
``results/<profile>`` (run notebook 03 first), trains into
``results/<profile>/checkpoints/threads-<n>/`` (not committed; cached) and writes
``tables/thread_check.{csv,md}`` and ``records/thread_check.json``. Validation data only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "lib") not in sys.path:
    sys.path.insert(0, str(REPO / "lib"))

METRICS = ("lpips_truth", "bone_dice_rank", "edge_ssim")


def recorded_recipe(results_dir: Path, *, check_arithmetic: bool = True):
    """The recipe notebook 03 recorded in ``results_dir`` (run it first); a one-line exit naming the
    record when it is missing or unreadable, or (``check_arithmetic``) when this machine would
    train it in the other arithmetic (``Recipe.from_record``)."""
    from ctxstyle.errors import InputError
    from ctxstyle.experiments.recipe import Recipe

    path = results_dir / "records" / "03_style_transfer.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; run notebook 03 of this profile first")
    try:
        recorded = json.loads(path.read_text())["parameters"]["recipe"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: no recorded recipe ({type(exc).__name__}: {exc})") from None
    try:
        return Recipe.from_record(recorded, path, check_arithmetic=check_arithmetic)
    except InputError as exc:
        raise SystemExit(str(exc)) from None


def _trained_threads(results_dir: Path, recipe, lr: float, notebook_threads) -> str:
    """Which thread counts trained the profile run's warm start and `ours` seed-0 decoder (read from
    their checkpoints; a checkpoint that predates the record counts as the notebook's threads)."""
    from ctxstyle.experiments import recipe as rc
    from ctxstyle.experiments.presets import run_dir
    from ctxstyle.train import CHECKPOINT_LAST, load_checkpoint

    checkpoints = results_dir / "checkpoints"
    warm = rc.warm_start_dir(recipe, checkpoints) / CHECKPOINT_LAST
    ours = run_dir(rc.method_config("ours", recipe, lr=lr, seed=recipe.seeds[0], init_decoder=str(warm)), checkpoints,
                   "ours") / CHECKPOINT_LAST
    found = {what: (load_checkpoint(path).get("torch_threads") or notebook_threads) if path.is_file() else None
             for what, path in (("warm start", warm), ("ours", ours))}
    if found["warm start"] is None or found["ours"] is None:
        return f"{notebook_threads} threads"
    if found["warm start"] == found["ours"]:
        return f"{found['ours']} threads"
    return f"warm start {found['warm start']} threads, ours {found['ours']}"


def reference_numbers(results_dir: Path, recipe) -> dict:
    """Gate A of the profile's warm start, `ours`' chosen lr and its validation means and stds over
    decoder seeds, as the profile's run recorded them."""
    import pandas as pd

    record = json.loads((results_dir / "records" / "03_style_transfer.json").read_text())
    gate = pd.read_csv(results_dir / "tables" / "gate_a_warm_start.csv")
    gate = gate[gate["AdaIN layer"] == recipe.adain_layer].iloc[0]
    val = pd.read_csv(results_dir / "tables" / "validation_outcomes.csv").set_index("method").loc["ours"]
    lr = record["parameters"]["chosen_lr"]["ours"]
    return {"threads": _trained_threads(results_dir, recipe, lr, record["parameters"].get("torch_threads")), "lr": lr,
            "gate_a": {k: float(gate[k]) for k in ("edge_ssim", "bone_dice_rank")},
            "val_mean": {k: float(val[f"{k}_mean"]) for k in METRICS},
            "val_std": {k: float(val[f"{k}_std"]) for k in METRICS}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.threads", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the second run (default 1)")
    p.add_argument("--results", type=Path, default=None, help="results folder (default results/<profile>)")
    args = p.parse_args(argv)

    import pandas as pd
    import torch

    from ctxstyle.experiments import records
    from ctxstyle.experiments import recipe as rc
    from ctxstyle.experiments import style_transfer as sx
    from ctxstyle.experiments.presets import train_or_load

    from .report import machine_info

    results_dir = args.results or REPO / "results" / args.profile
    recipe = recorded_recipe(results_dir)
    ref = reference_numbers(results_dir, recipe)
    torch.set_num_threads(args.threads)
    checkpoints = results_dir / "checkpoints" / f"threads-{args.threads}"
    t0 = time.perf_counter()
    warm = rc.warm_start(recipe, checkpoints, progress=True)
    seed = recipe.seeds[0]
    ours = train_or_load(rc.method_config("ours", recipe, lr=ref["lr"], seed=seed, init_decoder=warm.checkpoint),
                         checkpoints, "ours", progress=True)
    train_s = time.perf_counter() - t0
    pairs = rc.val_pairs(recipe)
    gate = rc.reconstruction_scores(warm, pairs)
    outs, _ = sx.method_outputs(pairs, {"ours": ours}, include=(), timing_pairs=0)
    val = sx.evaluate(pairs, outs)
    rows = [{"number": f"gate A {k} (warm start, {recipe.adain_layer})", f"profile run ({ref['threads']})":
             ref["gate_a"][k], f"{args.threads} thread(s)": gate[k], "difference": gate[k] - ref["gate_a"][k],
             "std over decoder seeds": float("nan")} for k in ("edge_ssim", "bone_dice_rank")]
    rows += [{"number": f"val {k} of ours (seed {seed} here; profile: mean over seeds)",
              f"profile run ({ref['threads']})": ref["val_mean"][k],
              f"{args.threads} thread(s)": float(val[k].mean()), "difference": float(val[k].mean()) - ref["val_mean"][k],
              "std over decoder seeds": ref["val_std"][k]} for k in METRICS]
    table = pd.DataFrame(rows)
    print(table.round(4).to_string(index=False))
    paths = records.save_table(table, results_dir, "thread_check")
    records.record_run(
        results_dir, "thread_check", seeds=[seed],
        parameters={"command": "python -m reproduce.threads " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "profile": args.profile, "threads": args.threads, "recipe": recipe.to_dict(), "ours_lr": ref["lr"],
                    "train_seconds": round(train_s, 1), "gate_a_passed": gate["passed"],
                    "machine": machine_info()},
        tables={"thread_check": paths},
        notes="The same configs as the profile's run, trained with another thread count on the same machine.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

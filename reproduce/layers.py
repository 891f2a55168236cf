"""AdaIN-layer check: the recipe's warm start at other AdaIN layers, scored by gate A on validation
beside the profile's layer.

    python -m reproduce.layers --profile cpu [--layers relu4_1]

The cpu profile runs AdaIN at relu3_1, a deviation from the paper's relu4_1. This check trains the
profile's warm start (same data, crops, steps, lr and schedule; cached by config hash) at each layer
of ``--layers`` and scores gate A on the validation patient, so that the choice of layer rests on a
measurement. It is kept out of the reproduction itself because at the cpu profile a relu4_1 warm
start costs about as much as all of notebook 03's fine-tuning; notebook 03 shows the table it writes
(``tables/layer_check.{csv,md}``, ``records/layer_check.json``) and says whether its recipe is the
profile's. It takes the recipe notebook 03 recorded in ``results/<profile>/records/`` (run it
first) and refuses a machine that would train it in the other arithmetic (bf16 vs float32).
Trains into ``results/<profile>/checkpoints/`` (not committed). Validation data only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "lib") not in sys.path:
    sys.path.insert(0, str(REPO / "lib"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.layers", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--layers", nargs="+", default=["relu4_1"], help="AdaIN layers to measure beside the profile's")
    p.add_argument("--results", type=Path, default=None, help="results folder (default results/<profile>)")
    args = p.parse_args(argv)

    import pandas as pd
    import torch

    from ctxstyle.experiments import records
    from ctxstyle.experiments import recipe as rc
    from ctxstyle.experiments import style_transfer as sx
    from ctxstyle.data import data_version
    from ctxstyle.train import load_checkpoint

    from .report import machine_info
    from .threads import recorded_recipe

    results_dir = args.results or REPO / "results" / args.profile
    recipe = recorded_recipe(results_dir)
    checkpoints = results_dir / "checkpoints"
    pairs = rc.val_pairs(recipe)
    rows, t0 = [], time.perf_counter()
    for layer in dict.fromkeys([recipe.adain_layer, *args.layers]):
        warm = rc.warm_start(recipe.with_backbone(recipe.encoder, layer), checkpoints, progress=True)
        hist = sx.loss_history(warm)
        threads = load_checkpoint(warm.checkpoint).get("torch_threads")
        rows.append({"AdaIN layer": layer, "profile's layer": layer == recipe.adain_layer, "steps": len(hist),
                     "train_seconds": float(sum(h["seconds"] for h in hist)), "threads": threads if threads else "not recorded",
                     **rc.reconstruction_scores(warm, pairs), "config": Path(warm.checkpoint).parent.name})
    table = pd.DataFrame(rows).rename(columns={"passed": "gate A passed", "n": "val contents"})
    print(table.round(4).to_string(index=False))
    paths = records.save_table(table, results_dir, "layer_check")
    records.record_run(
        results_dir, "layer_check", seeds=[0], weights_provenance=warm.weights_provenance, data_version=data_version(),
        parameters={"command": "python -m reproduce.layers " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "profile": args.profile, "layers": list(dict.fromkeys([recipe.adain_layer, *args.layers])),
                    "recipe": recipe.to_dict(), "warm_start_key": rc.decoder_key(recipe),
                    "seconds": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads(),
                    "machine": machine_info()},
        tables={"layer_check": paths},
        notes="The profile's warm start at other AdaIN layers (same recipe), gate A on validation.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

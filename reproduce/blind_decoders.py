"""Held-out styles with decoders blind to them: notebook 04's held-out evaluation (its section 7) of
the decoder-made training sets, with the warm start and every decoder retrained without the style.

    python -m reproduce.blind_decoders --profile cpu [--sets ours adain warm]

Notebook 04 holds each target style h out of the references, copies and U-Net training of every
exemplar-using set, but its decoders saw h: the warm start reconstructs training slices rendered in
every style, and the ours / AdaIN decoders are fine-tuned from it with a style bank of all five
target styles and a learning rate chosen on validation renderings of all five. This command
measures what that trace is worth. For each h it trains the recipe's warm start on the source and
the four other styles, fine-tunes each method from it with a style bank of those four and chooses
its lr on validation renderings of those four (``Recipe.target_styles``; every other style is
rendered as in the full set). It scores gate A (the warm start at alpha = 0 on the validation
patient's source-style slices) and gate B (each chosen-lr run's loss plateaued) as notebook 03 does,
stylizes notebook 04's held-out copy plan of h with these decoders, retrains the U-Nets (notebook
04's configuration, seeds, device and data) and scores them on h.
The comparison is paired over (U-Net seed, held-out style, test patient) with notebook 04's
held-out rows: the same sets with decoders that saw h, no augmentation, and random window +
monotone LUT (the comparator notebook 04 named before any held-out score existed).

Reads notebook 04's record and held-out rows from ``results/<profile>`` (run the profile first),
takes the recipe, data and U-Net settings from that record, and refuses when the copy plan it rebuilds
differs from the recorded one (per-style counts), when this machine would train the decoders in
another arithmetic, or when a comparator's rows are missing; records the checksum of the held-out
rows it paired with (notebook 04 checks it against its own); trains into
``results/<profile>/checkpoints/`` (not committed; cached by config hash); writes
``tables/held_out_blind_decoders*.{csv,md}`` and ``records/held_out_blind_decoders.json``.
Decoders, their learning rates and gate A use validation data only; the test patients are scored
once, at the end, as in notebook 04.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "lib") not in sys.path:
    sys.path.insert(0, str(REPO / "lib"))

NAME = "held_out_blind_decoders"
DECODER_SETS = ("ours", "adain", "contextual", "warm")
COMPARATORS = ("baseline", "window_lut")  # no augmentation; the cheap comparator of notebook 04


def blind(name: str) -> str:
    """The row name of set ``name`` made by decoders blind to the held-out style."""
    return f"{name} (blind decoders)"


def read_notebook_run(results_dir: Path):
    """Notebook 04's record parameters, its held-out rows, their sha256 and the record's data version
    (a one-line error when missing)."""
    import pandas as pd

    from ctxstyle.checksums import file_sha256

    record, rows = results_dir / "records" / "04_segmentation.json", results_dir / "tables" / "segmentation_scores_raw_held_out.csv"
    for path in (record, rows):
        if not path.is_file():
            raise SystemExit(f"{path}: missing; run notebook 04 of this profile first (python -m reproduce)")
    rec = json.loads(record.read_text())
    return rec["parameters"], pd.read_csv(rows), file_sha256(rows), rec.get("data_version")


def comparisons(frame, sets, targets):
    """Paired Dice differences on the held-out styles: each blind set against the same set with
    decoders that saw the style, against no augmentation and against window + LUT."""
    import pandas as pd

    from ctxstyle.experiments import segmentation as seg

    rows = []
    for name in sets:
        for other in (name, *COMPARATORS):
            pair = frame[frame["train_set"].isin([blind(name), other])]
            r = seg.paired_vs_baseline(pair, targets, "dice", other).set_index("train_set").loc[blind(name)]
            rows.append({"set": name, "against": "the same set, decoders that saw the style" if other == name
                         else seg.set_label(other), "key": other, "Δ Dice (pp)": round(float(r.mean_diff), 2),
                         "CI low (pp)": round(float(r.ci_low), 2), "CI high (pp)": round(float(r.ci_high), 2),
                         "Wilcoxon p": f"{r.wilcoxon_p:.2g}", "pairs": int(r.n)})
    return pd.DataFrame(rows)


def _difference(r) -> str:
    """``+1.23 pp [0.45, 2.01] (higher)``: a paired difference, its 95 % CI and what the CI excludes."""
    lo, hi = r["CI low (pp)"], r["CI high (pp)"]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{r['Δ Dice (pp)']:+.2f} pp (no interval: {r['pairs']} pairs)"
    verdict = "higher" if lo > 0 else "lower" if hi < 0 else "no clear difference: the CI includes 0"
    return f"{r['Δ Dice (pp)']:+.2f} pp [{lo:+.2f}, {hi:+.2f}] ({verdict})"


def conclusion(table2, diffs, decoders) -> str:
    """What the measurement says, in words computed from its tables."""
    lines = []
    if not decoders["gate A passed"].all():
        failed = ", ".join(decoders.loc[~decoders["gate A passed"], "held-out style"])
        lines.append(f"**Gate A failed** for the warm start blind to {failed}: those decoders do not carry the anatomy, "
                     "and the rows of those styles below compare a failed recipe, not the trace.")
    dice = table2.set_index("key")["Dice target (%)"]
    for name, d in diffs.groupby("set", sort=False):
        same, base, cheap = (d.set_index("key").loc[k] for k in (name, *COMPARATORS))
        lines.append(
            f"`{name}`: held-out Dice {dice[blind(name)]} % (mean ± SD over seeds) with blind decoders, {dice[name]} % with "
            f"decoders that saw the style; blind minus seen {_difference(same)}. Blind minus no augmentation "
            f"{_difference(base)}; blind minus random window + monotone LUT {_difference(cheap)}.")
    lines.append("Differences are paired over (U-Net seed, held-out style, test patient) with a 95 % bootstrap CI; the "
                 "pairs share seeds and patients, so read the intervals and p values as descriptive.")
    return "\n".join(f"- {line}" for line in lines)


def _the_lr(stylizers: dict) -> float:
    """The one learning rate every seed of a method was trained with (the validation-chosen one)."""
    lrs = {st.config["lr"] for st in stylizers.values()}
    if len(lrs) != 1:
        raise RuntimeError(f"the seeds of one method were trained at different learning rates {sorted(lrs)}")
    return lrs.pop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.blind_decoders", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--sets", nargs="+", default=None,
                   help=f"decoder-made sets of {list(DECODER_SETS)} (default: those notebook 04 held out)")
    p.add_argument("--workers", type=int, default=None, help="training processes (default: the profile's train_workers)")
    p.add_argument("--results", type=Path, default=None, help="results folder (default results/<profile>)")
    args = p.parse_args(argv)

    import pandas as pd
    import torch

    from ctxstyle.data import PROTOCOL, data_version
    from ctxstyle.errors import InputError
    from ctxstyle.experiments import records
    from ctxstyle.experiments import recipe as rc
    from ctxstyle.experiments import segmentation as seg
    from ctxstyle.experiments.augment import copy_plan, held_out_plan, resize_copies, stylize_copies
    from ctxstyle.experiments.style_transfer import loss_history

    from .report import machine_info
    from .runner import load_profiles

    results_dir = args.results or REPO / "results" / args.profile
    params, seen, rows_sha256, params_data_version = read_notebook_run(results_dir)
    if params_data_version != data_version():
        raise SystemExit(f"{results_dir / 'records' / '04_segmentation.json'}: made with data version "
                         f"{params_data_version}, this data is {data_version()}")
    source, targets = PROTOCOL.source_style, list(PROTOCOL.target_styles)
    sets = args.sets or [s for s in params["held_out_sets"] if s in DECODER_SETS]
    if not sets or not set(sets) <= set(DECODER_SETS):
        raise SystemExit(f"--sets: choose decoder-made sets of {list(DECODER_SETS)}, got {sets}")
    missing = sorted(set([*sets, *COMPARATORS]) - set(seen["train_set"]))
    if missing:
        raise SystemExit(f"{results_dir / 'tables' / 'segmentation_scores_raw_held_out.csv'}: no rows of {missing}; "
                         "nothing to compare with")
    try:
        recipe = rc.Recipe.from_record(params["recipe"], results_dir / "records" / "04_segmentation.json")
    except InputError as exc:
        raise SystemExit(str(exc)) from None
    workers = args.workers or int((load_profiles().get(args.profile) or {}).get("common", {}).get("train_workers", 1))
    device = params.get("device", "cpu")  # notebook 04's U-Net device (records before it was recorded: cpu)
    checkpoints, seeds = results_dir / "checkpoints", [int(s) for s in params["seeds"]]
    pairing = {int(k): int(v) for k, v in params["unet_seed_to_decoder_seed"].items()}
    t0, timings = time.perf_counter(), {}

    # 1. decoders blind to each held-out style (validation only: lr choice and gate A)
    blind_recipes = {h: replace(recipe, target_styles=tuple(t for t in targets if t != h)) for h in targets}
    methods = [m for m in sets if m != "warm"]
    trained = rc.train_in_parallel([(blind_recipes[h], methods) for h in targets], checkpoints, workers=workers,
                                   threads=max(1, torch.get_num_threads() // workers))
    timings["decoders_s"] = trained["seconds"]
    decoders, rows = {}, []
    for h, r in blind_recipes.items():
        warm = rc.warm_start(r, checkpoints, progress=False)
        decoders[h] = {m: rc.trained_decoders(m, r, checkpoints, seeds=sorted(set(pairing.values())), progress=False)
                       for m in methods}
        decoders[h]["warm"] = {d: warm for d in pairing.values()}
        gate = rc.reconstruction_scores(warm, rc.val_pairs(r))
        plateaus = {m: [rc.plateaued(loss_history(st))["plateaued"] for st in decoders[h][m].values()] for m in methods}
        rows.append({"held-out style": h, "edge_ssim": round(gate["edge_ssim"], 4), "bone_dice_rank": round(gate["bone_dice_rank"], 4),
                     "gate A passed": gate["passed"], "val contents": gate["n"],
                     **{f"{m} lr": _the_lr(decoders[h][m]) for m in methods},
                     **{f"{m} gate B (seeds plateaued)": f"{sum(v)}/{len(v)}" for m, v in plateaus.items()},
                     "warm start": Path(warm.checkpoint).parent.name})
    decoder_table = pd.DataFrame(rows)
    print(decoder_table.to_string(index=False), flush=True)

    # 2. notebook 04's data, copy plan and U-Net configuration
    size, seg_size = int(params["image_size"]), int(params["seg_image_size"])
    x_src, m_src, pid = seg.load_split("train", source, seg_size, max_total=params["max_slices"])
    x_dec, _, pid_dec = seg.load_split("train", source, size, max_total=params["max_slices"])
    if not np.array_equal(pid, pid_dec):
        raise SystemExit("the decoder-size and U-Net-size training slices differ")
    plan = copy_plan(len(x_src), targets, params["copies_per_slice"], params["style_refs"], params["seed"])
    if plan.to_dict() != params["copy_plan"]:
        raise SystemExit(f"{results_dir}: notebook 04 recorded another copy plan ({params['copy_plan']})")
    refs = seg.style_references(targets, params["style_refs"], size, params["seed"], params["exemplar_patients"])
    cfg = seg.SegConfig(image_size=seg_size, base_channels=params["unet_base_channels"], depth=params["unet_depth"],
                        steps=params["unet_steps"], batch_size=params["unet_batch_size"], lr=params["unet_lr_choice"]["lr"],
                        device=device, seed=seeds[0])

    # 3. copies from the blind decoders, U-Nets retrained, scored on the held-out style and the source
    t1, made, jobs = time.perf_counter(), {}, {}
    for h in targets:
        ho_plan = held_out_plan(plan, h)
        for s in seeds:
            for name in sets:
                st = decoders[h][name][pairing[s]]
                if st.checkpoint not in made:
                    with torch.no_grad():
                        made[st.checkpoint] = resize_copies(stylize_copies(st, x_dec, refs, ho_plan, batch_size=64), seg_size)
                data = seg.build_training_sets(x_src, m_src, ho_plan, copies={name: made[st.checkpoint]})[name]
                jobs[name, s, h] = (name, data, s)
    timings["copies_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    models = seg.train_jobs(cfg, jobs, checkpoints_dir=checkpoints, workers=workers, progress=False)
    timings["unets_s"] = time.perf_counter() - t1
    test = {s: seg.load_split("test", s, seg_size, max_per_patient=params["eval_samples"]) for s in (source, *targets)}
    fresh = pd.concat([seg.evaluate_all({(n, s): m for (n, s, hh), m in models.items() if hh == h},
                                        {h: test[h], source: test[source]}, device=device).assign(held_out=h) for h in targets])
    fresh["train_set"] = fresh["train_set"].map(blind)
    frame = pd.concat([seen[seen["train_set"].isin([*COMPARATORS, *sets])], fresh], ignore_index=True)

    # 4. tables, conclusion, record
    labels = {blind(n): f"{seg.set_label(n)}, decoders blind to the held-out style" for n in sets}
    labels.update({n: f"{seg.set_label(n)}, decoders that saw it (notebook 04)" for n in sets})
    order = [*COMPARATORS, *[k for n in sets for k in (n, blind(n))]]
    frame["train_set"] = pd.Categorical(frame["train_set"], order, ordered=True)
    frame = frame.sort_values(["train_set", "held_out", "seed"], kind="stable").assign(train_set=lambda d: d["train_set"].astype(str))
    table2 = seg.table2(frame, source, targets, labels=labels)
    diffs = comparisons(frame, sets, targets)
    expected = len(seeds) * len(targets) * seen[seen["style"].isin(targets)]["patient"].nunique()
    if (diffs["pairs"] != expected).any():
        raise SystemExit(f"paired comparisons over {sorted(set(diffs['pairs']))} pairs instead of {expected} "
                         "(seeds x held-out styles x test patients): the rows do not match")
    by_style = seg.style_breakdown(frame[frame["style"].isin(targets)], "dice", labels)
    text = conclusion(table2, diffs, decoder_table)
    print(table2.drop(columns=["key"]).to_string(index=False), diffs.to_string(index=False), text, sep="\n\n")
    tables = {"table2": records.save_table(table2, results_dir, NAME),
              "paired": records.save_table(diffs, results_dir, f"{NAME}_paired"),
              "dice_by_style": records.save_table(by_style, results_dir, f"{NAME}_by_style"),
              "decoders": records.save_table(decoder_table, results_dir, f"{NAME}_decoders"),
              "scores_raw": records.save_table(fresh, results_dir, f"{NAME}_scores_raw")}
    timings["total_s"] = time.perf_counter() - t0
    records.record_run(
        results_dir, NAME, seeds=seeds, weights_provenance=decoders[targets[0]]["warm"][pairing[seeds[0]]].weights_provenance,
        data_version=data_version(),
        parameters={"command": "python -m reproduce.blind_decoders " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "profile": args.profile, "sets": sets, "recipe": recipe.to_dict(), "device": device,
                    "paired_with": {"rows": "tables/segmentation_scores_raw_held_out.csv", "sha256": rows_sha256,
                                    "data_version": params_data_version},
                    "blind_warm_starts": {h: rc.decoder_key(r) for h, r in blind_recipes.items()},
                    "unet": cfg.to_dict(), "unet_seed_to_decoder_seed": pairing, "decoder_runs": trained["runs"],
                    "workers": workers, "torch_threads": torch.get_num_threads(),
                    "timings_s": {k: round(v, 1) for k, v in timings.items()}, "machine": machine_info()},
        tables=tables,
        notes="Notebook 04's held-out evaluation of the decoder-made sets with every decoder (warm start, fine-tuned "
              "decoders, their lr choice) retrained without the held-out style; paired with notebook 04's held-out "
              "rows over (U-Net seed, held-out style, test patient), 95 % bootstrap CI.\n\n" + text)
    print(f"wrote {results_dir / 'tables' / NAME}*.md in {timings['total_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The comparison of `python -m reproduce.blind_decoders` (decoders blind to the held-out style) on
synthetic evaluation rows: signs, pairing and the computed wording."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from reproduce.blind_decoders import blind, comparisons, conclusion  # noqa: E402
from ctxstyle.experiments import segmentation as seg  # noqa: E402

TARGETS = ["a", "b"]


def _rows(dice_by_set):
    """Evaluation rows whose spine Dice is ``dice_by_set[set] + noise`` per (seed, style, patient)."""
    rng, rows, n = np.random.default_rng(0), [], 10000
    for name, dice in dice_by_set.items():
        for seed in range(3):
            for style in ["src", *TARGETS]:
                for patient in ("p", "q"):
                    d = float(np.clip(dice + rng.normal(0, 0.01), 0.01, 0.99))
                    tp = int(round(d * 1000 / (2 - d)))  # Dice = 2tp / (2tp + fp + fn) with fp + fn = 2 (1000 - tp)
                    fn = 1000 - tp
                    rows.append({"train_set": name, "seed": seed, "style": style, "patient": patient, "n_slices": 1,
                                 "tp": tp, "fp": fn, "fn": fn, "tn": n, "held_out": style if style in TARGETS else "a"})
    out = pd.DataFrame(rows)
    scores = pd.DataFrame([seg.scores_from_counts(r.tp, r.fp, r.fn, r.tn) for r in out.itertuples()])
    return pd.concat([out, scores], axis=1)


def test_blind_decoders_are_compared_pairwise_with_the_seen_set_and_the_comparators():
    frame = _rows({"baseline": 0.3, "window_lut": 0.7, "ours": 0.5, blind("ours"): 0.4})
    diffs = comparisons(frame, ["ours"], TARGETS).set_index("key")
    assert list(diffs.index) == ["ours", "baseline", "window_lut"] and (diffs["pairs"] == 12).all()
    assert diffs.loc["ours", "Δ Dice (pp)"] < 0 and diffs.loc["ours", "CI high (pp)"] < 0   # blind lost ~10 pp
    assert diffs.loc["baseline", "CI low (pp)"] > 0 and diffs.loc["window_lut", "CI high (pp)"] < 0
    assert abs(diffs.loc["ours", "Δ Dice (pp)"] + 10) < 2
    t2 = seg.table2(frame, "src", TARGETS)
    gates = pd.DataFrame({"held-out style": TARGETS, "gate A passed": [True, False]})
    text = conclusion(t2, comparisons(frame, ["ours"], TARGETS), gates)
    assert "**Gate A failed** for the warm start blind to b:" in text and " a," not in text
    lines = text.splitlines()
    assert lines[1].count("(lower)") == 2 and lines[1].count("(higher)") == 1  # vs seen, vs LUT lower; vs baseline higher


def test_no_clear_difference_is_said_when_the_interval_holds_zero():
    frame = _rows({"baseline": 0.3, "window_lut": 0.5, "ours": 0.5, blind("ours"): 0.5})
    text = conclusion(seg.table2(frame, "src", TARGETS), comparisons(frame, ["ours"], TARGETS),
                      pd.DataFrame({"held-out style": TARGETS, "gate A passed": [True, True]}))
    assert "Gate A" not in text and text.count("no clear difference") == 2 and "blind minus seen" in text

"""The words of the experiments, each in one place: method and augmentation labels, the paper's
reported numbers and claims, and the conclusions written from measured tables.

Experiments import their labels from here; nothing here computes a number (the conclusions take
the measured tables as arguments).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# ------------------------------------------------------------------------------------ labels
METHOD_LABELS = {
    "ours": "Ours (contextual + style)",
    "adain": "AdaIN (MSE + style)",
    "contextual": "Contextual transformation",
}

#: Table 1 rows: the methods, the baselines and the reference rows.
LABELS = {
    **METHOD_LABELS,
    "histmatch": "Histogram matching to the style image",
    "window": "Target window on HU (oracle)",
    "identity": "No transfer (content as is)",
    "truth": "Ground truth: slice rendered in the target style",
}
#: Short column titles for figures.
SHORT_LABELS = {
    "content": "content", "style": "style image", "ours": "ours\n(CX + style)", "adain": "AdaIN\n(MSE + style)",
    "contextual": "contextual\ntransformation", "histmatch": "histogram\nmatching", "window": "target window\n(oracle)",
    "identity": "no transfer", "truth": "ground truth\n(target rendering)",
}

#: The warm-start + AdaIN ablation (no per-method training), in Table 1 and Table 2.
WARM_ABLATION_LABEL = "Ablation: warm start + AdaIN (no per-method training)"

#: Table 2 training sets.
SET_LABELS = {
    "baseline": "Baseline (source gray scale only)",
    "ours": "+ ours (contextual + style loss)",
    "adain": "+ AdaIN (MSE + style loss)",
    "contextual": "+ contextual transformation",
    "warm": "+ ablation: warm start + AdaIN",
    "histmatch": "+ histogram matching",
    "classical": "+ classical intensity aug. (nnU-Net)",
    "nnunet_v2": "+ nnU-Net v2 default intensity aug.",
    "bigaug": "+ BigAug-style intensity stack",
    "window_lut": "+ random window + monotone LUT",
    "gin": "+ GIN (random shallow networks)",
    "randconv": "+ RandConv (random convolutions)",
    "oracle": "Oracle (labelled target styles)",
}
#: Labels that change in the held-out evaluation (the oracle then holds labelled renderings of the
#: other target styles only: labelled data of other gray scales, not of the tested one).
HELD_OUT_LABELS = {"oracle": "Labelled renderings of the other target styles (oracle of the seen setting)"}


def set_label(name: str, labels: Mapping[str, str] | None = None) -> str:
    """A training set's row label: ``labels`` first (e.g. :data:`HELD_OUT_LABELS`), then
    :data:`SET_LABELS`, else the name itself."""
    return (labels or {}).get(name, SET_LABELS.get(name, name))

#: The style-transfer training sets of Table 2.
STYLIZED = ("ours", "adain", "contextual")
#: Table 2's domain-generalisation baselines: no exemplar of any target style (ctxstyle.experiments.dg_augment).
EXEMPLAR_FREE = ("nnunet_v2", "bigaug", "window_lut", "gin", "randconv")

#: Backbone names in tables and figures.
BACKBONE_LABELS = {"vgg19": "VGG19", "vgg16": "VGG16", "alexnet": "AlexNet", "resnet50": "ResNet-50",
                   "resnet101": "ResNet-101", "densenet121": "DenseNet-121", "densenet169": "DenseNet-169",
                   "densenet201": "DenseNet-201"}

#: The paper's qualitative conclusions about extractors (Figs 8-9), as the issue states them.
PAPER_CLAIMS = {
    "vgg": "VGG19 keeps the semantics (the anatomy of the slice) in its generations",
    "resnet": "ResNets keep the semantics only barely",
    "densenet": "DenseNets destroy the semantics",
}

#: The label of a backbone whose warm start fails gate A, and of its style-transfer rows.
GATE_A_FAILED = ("FAILED gate A: the decoder does not reconstruct the slice from this backbone's features, so its "
                 "style-transfer rows say nothing about what the features keep")
GATE_A_PASSED = "passed"


# ------------------------------------------------------------------------ the paper's numbers
#: Table 1 of the paper, as printed: method -> (LPIPS, CIS). The CIS column is not comparable
#: (see notebook 03).
PAPER_TABLE1 = {"ours": (0.427, 0.124), "adain": (0.516, 0.137), "contextual": (0.457, 0.214)}
#: Table 2 of the paper: pixel accuracy and mIoU (%) on the gray scales the U-Net never saw.
PAPER_TABLE2 = {"baseline": {"pa": 77.71, "miou": 31.66}, "ours": {"pa": 95.80, "miou": 69.81}}


# ------------------------------------------------------------------------------ conclusions
def table2_conclusion(mean, pdice, by_style, target_styles: Sequence[str], baseline: str = "baseline",
                      oracle: str = "oracle") -> str:
    """Table 2's conclusion in words from its measured numbers: ``mean`` (per training set:
    ``source_dice``, ``target_dice``, ``target_miou``, ``target_pa`` in %), ``pdice`` (paired Dice
    change vs the baseline per set: ``mean_diff``, ``ci_low``, ``ci_high``, ``wilcoxon_p``, ``wins``,
    ``n``) and ``by_style`` (Dice % per set and style)."""
    cand = [s for s in mean.index if s not in (baseline, oracle)]
    lines = []
    b = mean.loc[baseline]
    lines.append(f"- **Baseline** (source gray scale only): Dice {b.source_dice:.1f}% on the source style, "
                 f"{b.target_dice:.1f}% averaged over the {len(target_styles)} target styles "
                 f"(mIoU {b.target_miou:.1f}%, PA {b.target_pa:.1f}%).")
    if cand:
        ranked = sorted(cand, key=lambda s: -mean.loc[s, "target_dice"])
        win = ranked[0]
        r = pdice.loc[win]
        sig = "" if not np.isfinite(r.wilcoxon_p) else f", Wilcoxon p = {r.wilcoxon_p:.2g}"
        lines.append(f"- **Best augmentation on the target styles: {set_label(win)}** with Dice "
                     f"{mean.loc[win, 'target_dice']:.1f}% ({r.mean_diff:+.1f} pp over the baseline, 95% CI "
                     f"[{r.ci_low:+.1f}, {r.ci_high:+.1f}]{sig}; better in {int(r.wins)} of {int(r.n)} "
                     f"(seed, style, patient) pairs).")
        order = ", ".join(f"{set_label(s)} {mean.loc[s, 'target_dice']:.1f}%" for s in ranked)
        lines.append(f"- Ranking by target-style Dice: {order}.")
        stylized = [s for s in STYLIZED if s in mean.index]
        simple = [s for s in ("histmatch", "classical", *EXEMPLAR_FREE) if s in mean.index]
        if "ours" in mean.index and stylized:
            best_sty = max(stylized, key=lambda s: mean.loc[s, "target_dice"])
            if best_sty == "ours" or abs(mean.loc[best_sty, "target_dice"] - mean.loc["ours", "target_dice"]) < 0.05:
                others = [s for s in stylized if s != "ours"]
                if others:
                    gap = mean.loc["ours", "target_dice"] - max(mean.loc[s, "target_dice"] for s in others)
                    lines.append(f"- Among the style-transfer decoders, **ours is best** (+{gap:.1f} pp Dice over the "
                                 f"next decoder).")
            else:
                gap = mean.loc[best_sty, "target_dice"] - mean.loc["ours", "target_dice"]
                lines.append(f"- Among the style-transfer decoders, **{SET_LABELS[best_sty]} beats ours** by "
                             f"{gap:.1f} pp Dice: the paper's ordering is not reproduced here.")
        if simple and stylized:
            best_simple = max(simple, key=lambda s: mean.loc[s, "target_dice"])
            best_sty = max(stylized, key=lambda s: mean.loc[s, "target_dice"])
            gap = mean.loc[best_simple, "target_dice"] - mean.loc[best_sty, "target_dice"]
            if abs(gap) < 0.05:
                lines.append(f"- The best simple augmentation ({SET_LABELS[best_simple]}) and the best style-transfer "
                             f"set ({SET_LABELS[best_sty]}) tie on target-style Dice.")
            elif gap > 0:
                lines.append(f"- **A simple augmentation beats style transfer**: {SET_LABELS[best_simple]} is "
                             f"{gap:.1f} pp Dice above the best style-transfer set ({SET_LABELS[best_sty]}).")
            else:
                lines.append(f"- Style transfer ({SET_LABELS[best_sty]}) is {-gap:.1f} pp Dice above the best "
                             f"simple augmentation ({SET_LABELS[best_simple]}).")
        worse = [s for s in cand if pdice.loc[s, "mean_diff"] < 0]
        if worse:
            lines.append("- Below the baseline on the target styles: " + ", ".join(
                f"{set_label(s)} ({pdice.loc[s, 'mean_diff']:+.1f} pp)" for s in worse) + ".")
        hardest = by_style.loc[baseline, list(target_styles)].idxmin() if baseline in by_style.index else None
        if hardest is not None:
            lines.append(f"- Hardest style for the baseline: `{hardest}` (Dice {by_style.loc[baseline, hardest]:.1f}%); "
                         f"the best augmentation reaches {by_style.loc[win, hardest]:.1f}% there.")
    if oracle in mean.index:
        o = mean.loc[oracle]
        text = (f"- **Oracle** (the same copies rendered in the true target styles, with labels): Dice "
                f"{o.target_dice:.1f}% on the target styles")
        if cand and o.target_dice > b.target_dice:
            closed = 100 * (mean.loc[win, "target_dice"] - b.target_dice) / (o.target_dice - b.target_dice)
            if closed >= 100:
                text += (f"; the best augmentation **matches or exceeds it** ({closed:.0f}% of the "
                         f"baseline-to-oracle gap): at this budget the oracle is a reference, not a ceiling.")
            else:
                text += f"; the best augmentation closes {closed:.0f}% of the baseline-to-oracle gap."
        else:
            text += "."
        lines.append(text)
    return "\n".join(lines)


def held_out_conclusion(mean, pdice, vs_cheap, drops, cheap: str, target_styles: Sequence[str],
                        hard: tuple | None = None, baseline: str = "baseline") -> str:
    """The held-out evaluation's answer in words, from measured tables: ``mean`` (per set on the
    held-out styles: ``target_dice``, ``source_dice``, %), ``pdice`` (paired Dice change vs the
    baseline: ``mean_diff``, ``ci_low``, ``ci_high``), ``vs_cheap`` (the same vs ``cheap``, the cheap
    intensity augmentation named in advance, which sees no target-style image), ``drops`` (per
    exemplar-using set: held-out minus seen Dice on the same styles, paired) and ``hard`` (optional
    ``(mean, vs_cheap, styles)`` on the hard styles, which no set sees)."""
    def ci(r) -> str:
        return f"{r.mean_diff:+.1f} pp [95% CI {r.ci_low:+.1f}, {r.ci_high:+.1f}]"

    def label(s) -> str:
        return set_label(s, HELD_OUT_LABELS)

    def verdict(r) -> str:
        if r.ci_low > 0:
            return "better"
        if r.ci_high < 0:
            return "worse"
        return "not distinguishable (the CI spans 0)"

    lines = []
    cand = [s for s in mean.index if s != baseline]
    ranked = sorted(cand, key=lambda s: -mean.loc[s, "target_dice"])
    b = mean.loc[baseline, "target_dice"]
    lines.append(f"- **Held-out styles** (each of the {len(target_styles)} target styles left out of every "
                 f"exemplar-using set in turn; scores on the left-out style): baseline Dice {b:.1f}%; best "
                 f"**{label(ranked[0])}** {mean.loc[ranked[0], 'target_dice']:.1f}% "
                 f"({ci(pdice.loc[ranked[0]])} over the baseline). Unseen by the U-Net, not by the decoders: "
                 f"the style-transfer decoders (warm start included) were trained on slices of every target "
                 f"style in notebook 03.")
    lines.append("- Ranking on held-out styles: " + ", ".join(
        f"{label(s)} {mean.loc[s, 'target_dice']:.1f}%" for s in ranked) + ".")
    if "ours" in mean.index:
        r = pdice.loc["ours"]
        lines.append(f"- **Ours vs no augmentation** on held-out styles: {ci(r)}, {verdict(r)}; the paper's "
                     f"direction (style-transfer copies help on gray scales never seen) "
                     f"{'holds' if r.ci_low > 0 else 'is not shown'} here.")
        if "ours" in vs_cheap.index and cheap in mean.index:
            r = vs_cheap.loc["ours"]
            lines.append(f"- **Does contextual style-transfer augmentation beat cheap intensity augmentation on "
                         f"gray scales the U-Net never saw?** Against the cheap augmentation named in advance "
                         f"({label(cheap)}, {mean.loc[cheap, 'target_dice']:.1f}%): "
                         f"ours {ci(r)}: **{'yes' if r.ci_low > 0 else 'no' if r.ci_high < 0 else 'not resolved'}**"
                         f" at this scale.")
    if len(drops):
        lines.append("- Seen vs held out (same styles, held-out minus seen Dice): " + ", ".join(
            f"{label(s)} {ci(drops.loc[s])}" for s in drops.index) + ".")
    if hard is not None:
        hmean, hvs, hstyles = hard
        hr = sorted([s for s in hmean.index if s != baseline], key=lambda s: -hmean.loc[s, "target_dice"])
        text = (f"- **Hard styles** ({', '.join(f'`{s}`' for s in hstyles)}: no monotone lookup table of the source "
                f"makes them, and no U-Net training set holds them): baseline {hmean.loc[baseline, 'target_dice']:.1f}%, best "
                f"{set_label(hr[0])} {hmean.loc[hr[0], 'target_dice']:.1f}%")
        if "ours" in hvs.index and cheap in hmean.index:
            text += (f"; ours {hmean.loc['ours', 'target_dice']:.1f}%, {ci(hvs.loc['ours'])} vs "
                     f"{set_label(cheap)}")
        lines.append(text + ".")
    return "\n".join(lines)

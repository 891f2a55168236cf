"""Extractor analysis (notebook 05, paper Figs 8-9): the same AdaIN pipeline with other encoders.

The paper trains its decoder with different ImageNet feature extractors (VGG, ResNet, DenseNet)
and judges from example images how well each keeps the anatomy. Here every backbone whose
weights resolve goes through the shared training recipe (:mod:`ctxstyle.experiments.recipe`) with the same
knobs: its own reconstruction warm start, then both content losses of the comparison
(MSE to the AdaIN target, ``METHODS["adain"]``; contextual loss, ``METHODS["ours"]``) fine-tuned
from it with the same steps, crops, data, seeds and learning rates. Each backbone's AdaIN layer
sits at the stride of the profile's VGG19 AdaIN layer (:func:`backbone_recipe`,
:func:`ctxstyle.backbones.encoder_layers_at`); then every decoder stylizes the same whole test
slices and is scored for anatomy preservation and style match.

* :func:`check_backbones`: which backbones have pretrained weights here (and the command that
  completes the others on a machine that has them); a random-init VGG19 is a labelled control.
* :func:`train_backbone`: the recipe for one backbone (warm start, gate A on validation,
  fine-tuning of each content loss, gate B per decoder), cached by config hash;
  :func:`gate_a_table`, :func:`gate_b_table` report the gates.
* :func:`backbone_outputs`: every decoder on the evaluation pairs of
  :func:`ctxstyle.experiments.style_transfer.pair_set` (each test slice x every target style, with its
  style reference and its ground-truth rendering); the metrics are notebook 03's
  (``style_transfer.evaluate``: LPIPS, bone Dice, edge SSIM; ``style_classifier`` /
  ``cis_scores``: the style-domain classifier and CIS), so the numbers are comparable.
* :func:`summarize`, :func:`annotate`, :func:`compare_runs`, :func:`claims_table`: the table and
  the verdicts on the paper's qualitative claims (paired bootstrap CIs,
  ``metrics.segmentation.paired_comparison``).
* :func:`feature_map_figure`, :func:`results_grid`, :func:`metrics_figure`: the figures.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ctxstyle.backbones import (RANDOM_INIT_SOURCE, encoder_layer_note, encoder_layers_at, random_init_provenance, split_arch, vgg_layer_stride)
from ctxstyle.experiments.wording import BACKBONE_LABELS, GATE_A_FAILED, GATE_A_PASSED, PAPER_CLAIMS
from ctxstyle.errors import WeightsNotFoundError

__all__ = [
    "BACKBONES",
    "CONTENT_LOSSES",
    "CONTROLS",
    "GATE_A_FAILED",
    "MEASURED",
    "METRICS",
    "PAPER_CLAIMS",
    "REFERENCE_ROWS",
    "Backbone",
    "BackboneRun",
    "TrainedDecoder",
    "adain_stride",
    "annotate",
    "backbone_label",
    "backbone_outputs",
    "backbone_recipe",
    "bone_channel_correlations",
    "check_backbones",
    "claims_table",
    "compare_runs",
    "complete_command",
    "correlation_table",
    "decoder_family",
    "feature_map_figure",
    "gate_a_table",
    "gate_b_table",
    "metrics_figure",
    "results_grid",
    "run_key",
    "split_key",
    "summarize",
    "train_backbone",
]

#: Backbones of the comparison, in the order of the tables and figures.
BACKBONES = ("vgg19", "vgg16", "alexnet", "resnet50", "resnet101", "densenet121", "densenet169", "densenet201")
#: Labelled controls (never reported as pretrained).
CONTROLS = ("vgg19:random",)
#: Content loss -> method of the recipe (:data:`ctxstyle.experiments.presets.METHODS`).
CONTENT_LOSSES = {"mse": "adain", "contextual": "ours"}



def backbone_label(arch: str) -> str:
    base, random_init = split_arch(arch)
    label = BACKBONE_LABELS.get(base, base)
    return f"{label} (random init, control)" if random_init else label


def complete_command(profile: str = "cpu") -> str:
    """The one command that completes the comparison where more weights are available."""
    return (f"CTXSTYLE_WEIGHTS=/path/to/folder-with-torchvision-weights python -m reproduce --profile {profile} "
            f"--only 05 --update-reference --force   (or the same command on an online machine, without "
            f"CTXSTYLE_WEIGHTS)")


def decoder_family(arch: str) -> str:
    """The decoder ``ctxstyle.backbones.build_decoder`` gives this backbone."""
    if split_arch(arch)[0] in ("vgg16", "vgg19"):
        return "VGG mirror (vgg_mirror_decoder)"
    return "generic upsampling decoder (upsampling_decoder)"


# ----------------------------------------------------------------------------- availability
@dataclass
class Backbone:
    """One row of the availability table."""

    arch: str
    label: str
    status: str  # "pretrained" | "control (random init)" | "weights not available here"
    weights: str  # short description of the weights
    provenance: dict | None = None
    detail: str = ""
    stride: int = 8  # the AdaIN layer's stride (ctxstyle.backbones.encoder_layers_at)

    @property
    def runnable(self) -> bool:
        return self.status != "weights not available here"

    @property
    def layers(self) -> dict:
        return encoder_layers_at(self.arch, self.stride)

    def to_row(self) -> dict:
        return {"backbone": self.label, "arch": self.arch, "status": self.status, "weights": self.weights,
                "AdaIN layer": f"{self.layers['adain']} (stride {self.stride})",
                "style layers": ", ".join(self.layers["style"]), "decoder": decoder_family(self.arch),
                "detail": self.detail}


def _weights_text(prov) -> str:
    parts = [prov.source]
    if not prov.exact:
        parts.append("k-means-quantised to 256 values per layer" if "k-means" in (prov.note or "") else "quantised")
    parts.append("Caffe weights and input (RGB 0..255 minus the mean)" if prov.input_convention == "caffe"
                 else f"{prov.input_convention} input")
    return ", ".join(parts)


def check_backbones(backbones: Sequence[str] = BACKBONES, controls: Sequence[str] = CONTROLS,
                    profile: str = "cpu", stride: int = 8) -> list[Backbone]:
    """Resolve each backbone's ImageNet weights (no training); unavailable ones are listed with
    the command that completes them. Controls are random-init and say so. ``stride``: where the
    AdaIN layer sits (:func:`adain_stride`), for the layer columns and notes."""
    from torchvision.models import get_weight

    from ctxstyle.backbones.weights import ARCHS, resolve_weights

    out = []
    for arch in backbones:
        try:
            _, prov = resolve_weights(arch)
        except WeightsNotFoundError:
            file = os.path.basename(get_weight(ARCHS[arch].weights[0]).url)
            out.append(Backbone(arch, backbone_label(arch), "weights not available here", "-",
                                detail=f"needs {file}: {complete_command(profile)}", stride=stride))
            continue
        out.append(Backbone(arch, backbone_label(arch), "pretrained", _weights_text(prov), prov.to_dict(),
                            encoder_layer_note(arch, stride), stride=stride))
    for arch in controls:
        base = split_arch(arch)[0]
        out.append(Backbone(arch, backbone_label(arch), "control (random init)", RANDOM_INIT_SOURCE,
                            random_init_provenance(base),
                            "same architecture and layers as the pretrained one, weights drawn at random "
                            "(seed 0): what the pipeline does without ImageNet features", stride=stride))
    return out


# ----------------------------------------------------------------------------- training (the recipe)
def adain_stride(recipe) -> int:
    """The stride of the recipe's (VGG19) AdaIN layer: every backbone's AdaIN layer sits there."""
    return vgg_layer_stride(recipe.adain_layer)


def backbone_recipe(arch: str, recipe):
    """``recipe`` (a :class:`ctxstyle.experiments.recipe.Recipe` whose ``adain_layer`` names VGG19's) for
    ``arch``: the same knobs, the backbone's layers at the same AdaIN stride."""
    roles = encoder_layers_at(arch, adain_stride(recipe))
    return recipe.with_backbone(arch, roles["adain"], roles["style"], roles["cx_style"])


@dataclass
class TrainedDecoder:
    """One fine-tuned decoder of one backbone, content loss and seed, with gate B."""

    arch: str
    content_loss: str
    seed: int
    stylizer: object  # ctxstyle.stylize.Stylizer
    config: dict
    train_seconds: float  # summed step times from the checkpoint history (also when loaded)
    final_losses: dict = field(default_factory=dict)
    gate_b: dict = field(default_factory=dict)  # ctxstyle.experiments.recipe.plateaued
    val_lpips_truth: float = float("nan")  # the lr-choice score on validation (seed 0 only)


@dataclass
class BackboneRun:
    """The recipe's output for one backbone: the warm start, gate A and the fine-tuned decoders."""

    arch: str
    recipe: object  # ctxstyle.experiments.recipe.Recipe for this backbone
    warm: object  # the warm-start Stylizer
    gate_a: dict  # ctxstyle.experiments.recipe.reconstruction_scores on the validation pairs
    warm_seconds: float  # summed step times of the warm start
    wall_seconds: float  # this call (~0 when everything was cached)
    decoders: dict[tuple[str, int], TrainedDecoder] = field(default_factory=dict)  # (content loss, seed)

    @property
    def passed(self) -> bool:
        return bool(self.gate_a.get("passed"))


def _history(stylizer) -> list[dict]:
    from ctxstyle.experiments.style_transfer import loss_history

    return loss_history(stylizer)


def _val_score(stylizer) -> float:
    """The validation LPIPS to the ideal output that ``recipe.choose_lr`` stored beside the checkpoint."""
    path = Path(stylizer.checkpoint).parent / "val_scores.json"
    if not path.is_file():
        return float("nan")
    scores = json.loads(path.read_text())
    return float(next(iter(scores.values()))) if len(scores) == 1 else float("nan")


def train_backbone(arch: str, recipe, checkpoints_dir: str | Path, content_losses: Sequence[str], val, *,
                   progress: bool = False) -> BackboneRun:
    """The recipe for one backbone (:mod:`ctxstyle.experiments.recipe`, everything cached by config hash):
    its reconstruction warm start, gate A on the validation pairs ``val``, then each content loss
    fine-tuned from the warm start at every seed of the recipe, with gate B per decoder.

    With several ``recipe.lrs`` each content loss gets its lr chosen on validation
    (``recipe.trained_decoders``); with one, that lr is used as is: the same runs and checkpoints,
    without the validation scoring that only serves the choice."""
    from ctxstyle.experiments.presets import train_or_load
    from ctxstyle.experiments.recipe import (method_config, plateaued, reconstruction_scores, trained_decoders, warm_start)

    t0 = time.perf_counter()
    r = backbone_recipe(arch, recipe)
    warm = warm_start(r, checkpoints_dir, progress=progress)
    gate_a = reconstruction_scores(warm, val)
    run = BackboneRun(arch, r, warm, gate_a, float(sum(h["seconds"] for h in _history(warm))), 0.0)
    for loss in content_losses:
        if loss not in CONTENT_LOSSES:
            raise KeyError(f"unknown content loss {loss!r}; choose from {sorted(CONTENT_LOSSES)}")
        method = CONTENT_LOSSES[loss]
        if len(r.lrs) == 1:
            configs = {seed: method_config(method, r, lr=r.lrs[0], seed=seed, init_decoder=warm.checkpoint)
                       for seed in r.seeds}
            per_seed = {seed: train_or_load(cfg, checkpoints_dir, method, progress=progress)
                        for seed, cfg in configs.items()}
        else:
            per_seed = trained_decoders(method, r, checkpoints_dir, progress=progress)
        for seed, st in per_seed.items():
            history = _history(st)
            tail = history[-max(1, len(history) // 10):]
            final = {k: float(np.mean([h[k] for h in tail])) for k in ("total", "content", "style")}
            run.decoders[(loss, int(seed))] = TrainedDecoder(
                arch, loss, int(seed), st, dict(st.config), float(sum(h["seconds"] for h in history)), final,
                plateaued(history), _val_score(st))
    run.wall_seconds = time.perf_counter() - t0
    return run


def gate_a_table(runs: Sequence[BackboneRun]):
    """Gate A per backbone: its warm start at alpha = 0 on the validation pairs."""
    import pandas as pd

    from ctxstyle.experiments.recipe import GATE_BONE_DICE, GATE_EDGE_SSIM

    rows = []
    for run in runs:
        g = run.gate_a
        rows.append({"backbone": backbone_label(run.arch), "decoder": decoder_family(run.arch),
                     "AdaIN layer": run.recipe.adain_layer, "warm-start steps": len(_history(run.warm)),
                     "val contents": g["n"], f"edge SSIM (≥ {GATE_EDGE_SSIM})": g["edge_ssim"],
                     f"bone Dice, rank (≥ {GATE_BONE_DICE})": g["bone_dice_rank"], "L1 to the slice": g["l1"],
                     "gate A": GATE_A_PASSED if run.passed else GATE_A_FAILED})
    return pd.DataFrame(rows)


def gate_b_table(runs: Sequence[BackboneRun]):
    """Gate B per fine-tuned decoder (``recipe.plateaued``), with its lr and validation score."""
    import pandas as pd

    rows = []
    for run in runs:
        for (loss, seed), d in run.decoders.items():
            rows.append({"backbone": backbone_label(run.arch), "content loss": loss, "seed": seed,
                         "lr": d.config["lr"], "steps": len(_history(d.stylizer)),
                         "loss, previous fifth": d.gate_b["previous_fifth"], "loss, last fifth": d.gate_b["last_fifth"],
                         "relative fall": d.gate_b["change"], "gate B (plateaued)": d.gate_b["plateaued"],
                         "val LPIPS to ideal output": d.val_lpips_truth,
                         "gate A of its warm start": GATE_A_PASSED if run.passed else "FAILED"})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- evaluation
def run_key(arch: str, content_loss: str) -> str:
    """The ``method`` key of one (backbone, content loss) in the evaluation tables."""
    return f"{backbone_label(arch)} | {content_loss}"


#: Reference rows of the evaluation (not trained): the content as is, the ideal output.
REFERENCE_ROWS = {"identity": "reference: no transfer (content as is)",
                  "truth": "reference: ground truth (slice rendered in the target style)"}


def backbone_outputs(pairs, runs: Sequence[BackboneRun], content_losses: Sequence[str], seed: int, *,
                     references: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """``{run key: {style: (N, H, W)}}``: the decoder of every backbone and content loss at
    ``seed`` applied to every evaluation pair (``ctxstyle.experiments.style_transfer.pair_set``) in every
    target style, plus the reference rows."""
    from ctxstyle.experiments.style_transfer import stylize_pairs

    out: dict[str, dict[str, np.ndarray]] = {}
    for run in runs:
        for loss in content_losses:
            st = run.decoders[(loss, seed)].stylizer
            out[run_key(run.arch, loss)] = {s: stylize_pairs(st, pairs.content, pairs.refs[s]) for s in pairs.styles}
    if references:
        out[REFERENCE_ROWS["identity"]] = {s: pairs.content for s in pairs.styles}
        out[REFERENCE_ROWS["truth"]] = {s: pairs.truth[s] for s in pairs.styles}
    return out


def split_key(per_pair):
    """Add ``backbone`` and ``content loss`` columns (from the ``method`` key) to a frame."""
    parts = per_pair["method"].str.split(" | ", n=1, regex=False)
    per_pair = per_pair.copy()
    per_pair.insert(0, "backbone", parts.str[0])
    per_pair.insert(1, "content loss", parts.str[1].fillna("-"))
    return per_pair


#: column of ``style_transfer.evaluate`` / ``cis_scores`` -> (table header, higher is better)
METRICS = {
    "bone_dice_rank": ("bone Dice (shape) ↑", True),
    "bone_dice": ("bone Dice (target window) ↑", True),
    "edge_ssim": ("edge SSIM ↑", True),
    "lpips_content": ("LPIPS to content ↓", False),
    "lpips_style": ("LPIPS to style ↓", False),
    "lpips_truth": ("LPIPS to target rendering ↓", False),
    "style_accuracy": ("style classifier accuracy ↑", True),
    "cis_mean": ("CIS ↑", True),
}
#: Anatomy-preservation metrics used for the verdicts.
ANATOMY_METRICS = ("bone_dice_rank", "edge_ssim", "lpips_content")


def summarize(per_pair, cis=None):
    """Mean of each metric per (backbone, content loss) over all pairs and styles, joined with
    the classifier columns of ``cis_scores`` when given; columns renamed for the report."""
    per_pair = per_pair if "backbone" in per_pair else split_key(per_pair)
    cols = [c for c in METRICS if c in per_pair]
    g = per_pair.groupby(["method"], sort=False)
    table = g[["backbone", "content loss"]].first().join(g.size().rename("outputs")).join(g[cols].mean())
    if cis is not None:
        table = table.join(cis.set_index("method")[["style_accuracy", "cis_mean"]])
    table = table.reset_index(drop=True)
    return table.rename(columns={c: METRICS[c][0] for c in METRICS if c in table})


def annotate(summary, status: Sequence[Backbone], runs: Sequence[BackboneRun]):
    """The comparison table with, per backbone row, what it needs to be read: the decoder family,
    the AdaIN layer, the weights and gate A (a backbone that fails it is labelled
    :data:`GATE_A_FAILED`, so are its rows); reference rows get "-"."""
    by_label = {b.label: b for b in status}
    runs_by_label = {backbone_label(r.arch): r for r in runs}
    table = summary.copy()
    labels = table["backbone"]
    cols = {
        "decoder": [decoder_family(by_label[l].arch) if l in by_label else "-" for l in labels],
        "AdaIN layer": [runs_by_label[l].recipe.adain_layer if l in runs_by_label else "-" for l in labels],
        "weights": [by_label[l].weights if l in by_label else "-" for l in labels],
        "gate A (warm start)": [(GATE_A_PASSED if runs_by_label[l].passed else GATE_A_FAILED)
                                if l in runs_by_label else "-" for l in labels],
    }
    for k, (name, values) in enumerate(cols.items()):
        table.insert(2 + k, name, values)
    return table


def _paired(per_pair, metric: str, a: str, b: str) -> dict:
    """Paired comparison of run ``a`` against run ``b``. The unit is the test **slice**: each
    slice's metric is first averaged over its target styles (outputs of one slice in different
    styles are not independent), then the slices are compared pairwise."""
    from ctxstyle.metrics.segmentation import paired_comparison

    va = per_pair[per_pair["method"] == a].groupby("pair")[metric].mean()
    vb = per_pair[per_pair["method"] == b].groupby("pair")[metric].mean()
    common = va.index.intersection(vb.index)
    return paired_comparison(va.loc[common].to_numpy(float), vb.loc[common].to_numpy(float), n_boot=2000)


#: Fewer test slices than this: no verdict (a bootstrap CI over 1-2 slices means nothing).
MIN_SLICES = 3


def compare_runs(per_pair, a: str, b: str) -> tuple[str, list[str]]:
    """Does run ``a`` keep more anatomy than run ``b``? A verdict from the paired bootstrap 95 %
    CIs (over test slices) of the differences in :data:`ANATOMY_METRICS` (``better``/``worse``
    when all of them exclude 0 in one direction, ``partly ...`` when some do and none disagree),
    and the evidence (mean difference a - b [CI] per metric)."""
    better = worse = 0
    evidence = []
    for metric in ANATOMY_METRICS:
        r = _paired(per_pair, metric, a, b)
        if r["n"] < MIN_SLICES:
            return f"too few test slices (n={r['n']}) for a verdict", [f"{metric} {r['mean_diff']:+.3f} (n={r['n']})"]
        sign = 1 if METRICS[metric][1] else -1
        if sign * r["ci_low"] > 0 or sign * r["ci_high"] < 0:
            better += sign * r["mean_diff"] > 0
            worse += sign * r["mean_diff"] < 0
        evidence.append(f"{metric} {r['mean_diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
    n = len(evidence)
    if n and better == n:
        verdict = "better"
    elif n and worse == n:
        verdict = "worse"
    elif better and not worse:
        verdict = "partly better"
    elif worse and not better:
        verdict = "partly worse"
    elif better and worse:
        verdict = "mixed"
    else:
        verdict = "no clear difference"
    return verdict, evidence


_AGREES = {"worse": "supported", "partly worse": "partly supported", "better": "contradicted",
           "partly better": "partly contradicted", "mixed": "not supported (mixed)",
           "no clear difference": "not supported (no clear difference)"}
_PHRASE = {"better": "keeps more anatomy than",
           "partly better": "keeps more anatomy (on some metrics, worse on none) than",
           "worse": "keeps less anatomy than",
           "partly worse": "keeps less anatomy (on some metrics, better on none) than",
           "mixed": "is better on some metrics and worse on others than",
           "no clear difference": "shows no clear difference from"}
MEASURED = "measured: mean difference first − second [95 % CI over test slices]"


def _says(verdict: str, first: str, second: str) -> str:
    if verdict not in _PHRASE:  # too few slices
        return verdict
    return f"{first} {_PHRASE[verdict]} {second}"


def claims_table(per_pair, backbones: Sequence[Backbone], content_losses: Sequence[str],
                 gate_a: Mapping[str, bool] | None = None):
    """The paper's extractor claims beside the measured comparisons, with a verdict each.

    Every pretrained backbone (and the control) is compared with VGG19 on the same test slices
    (:func:`compare_runs`); the contextual loss is compared with MSE per backbone. ``gate_a``:
    ``{arch: passed}``; a comparison that involves a backbone whose warm start failed gate A gets
    its verdict prefixed with that (the decoder, not the features, may be what is measured).
    """
    import pandas as pd

    gate_a = dict(gate_a or {})
    ran = [b.arch for b in backbones if b.runnable]
    missing = {b.arch: b.label for b in backbones if not b.runnable}
    pretrained = [a for a in ran if not split_arch(a)[1]]
    vgg_label = backbone_label("vgg19")
    rows = []

    def row(claim, loss, compared, measured, verdict, archs=()):
        failed = [backbone_label(a) for a in archs if not gate_a.get(a, True)]
        if failed:
            verdict = f"NOT A PROPERTY OF THE FEATURES ({', '.join(failed)} failed gate A): {verdict}"
        rows.append({"paper claim": claim, "content loss": loss, "compared": compared, MEASURED: measured,
                     "verdict": verdict})

    for loss in content_losses:
        vgg = run_key("vgg19", loss)
        if "vgg19" not in ran:
            row(PAPER_CLAIMS["vgg"], loss, vgg_label, "-", "not testable here: weights not available")
            continue
        sub = per_pair[per_pair["method"] == vgg]
        measured = "VGG19 means: " + "; ".join(f"{m} {sub[m].mean():.3f}" for m in ANATOMY_METRICS)
        others = [a for a in pretrained if a != "vgg19"]
        verdicts = {a: compare_runs(per_pair, run_key(a, loss), vgg) for a in others}  # (verdict, evidence)
        worse = [backbone_label(a) for a in others if verdicts[a][0] in ("worse", "partly worse")]
        row(PAPER_CLAIMS["vgg"], loss, vgg_label, measured,
            f"VGG19 keeps more anatomy than {len(worse)} of {len(others)} other pretrained backbones"
            + (f" ({', '.join(worse)})" if worse else ""), ["vgg19", *others])
        for family in ("resnet", "densenet"):
            archs = [a for a in pretrained if a.startswith(family)]
            if not archs:
                absent = [label for a, label in missing.items() if a.startswith(family)]
                row(PAPER_CLAIMS[family], loss, ", ".join(absent), "-", "not testable here: weights not available")
            for arch in archs:
                label = backbone_label(arch)
                verdict, ev = verdicts[arch]
                row(PAPER_CLAIMS[family], loss, f"{label} vs VGG19", "; ".join(ev),
                    f"{_AGREES.get(verdict, 'not testable')}: {_says(verdict, label, 'VGG19')}", [arch, "vgg19"])
        for arch in ran:
            if split_arch(arch)[1]:
                verdict, ev = compare_runs(per_pair, run_key(arch, loss), vgg)
                row("(control) does ImageNet training matter?", loss, f"{backbone_label(arch)} vs VGG19",
                    "; ".join(ev), _says(verdict, "random-init VGG19", "pretrained VGG19"), [arch, "vgg19"])
    if "mse" in content_losses and "contextual" in content_losses:
        for arch in ran:
            verdict, ev = compare_runs(per_pair, run_key(arch, "contextual"), run_key(arch, "mse"))
            row("the contextual loss keeps more anatomy than MSE (the paper's main claim)", "contextual vs mse",
                backbone_label(arch), "; ".join(ev), _says(verdict, "contextual", "MSE"), [arch])
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figures
@torch.inference_mode()
def bone_channel_correlations(encoders: Mapping[str, object], image: Tensor, bone_threshold: float | None = None,
                              stride: int = 8):
    """For each backbone and chosen layer, the Pearson correlation of every channel with the
    slice's bone map (pixels >= the source style's gray value of 200 HU, average-pooled to the
    map's grid), over the map positions inside the imaged body (the bounding box of pixels >
    0.02, shrunk by 10 % per side so that the field-of-view edge does not count).

    Returns ``{(label, layer): (feature map (C, h, w), |r| per channel (C,))}``, in order.
    A decoder-free hint of how directly a layer encodes where bone is (no decoder, no AdaIN).
    ``stride``: the AdaIN layer's (:func:`ctxstyle.backbones.encoder_layers_at`).
    """
    import torch.nn.functional as F

    from ctxstyle.metrics.anatomy import gray_threshold

    thr = gray_threshold("bone") if bone_threshold is None else bone_threshold
    img = image[:1, :1].float()
    bone = (img >= thr).float()
    ys, xs = np.nonzero(img[0, 0].numpy() > 0.02)
    h, w = img.shape[-2:]
    y0, y1, x0, x1 = (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) if len(ys) else (0, h, 0, w)
    dy, dx = (y1 - y0) // 10, (x1 - x0) // 10
    y0, y1, x0, x1 = y0 + dy, y1 - dy, x0 + dx, x1 - dx
    out = {}
    for label, enc in encoders.items():
        roles = encoder_layers_at(enc.arch, stride)
        layers = sorted(dict.fromkeys([*roles["style"], roles["adain"]]), key=enc.layer_names.index)
        feats = enc(img, layers)
        for layer in layers:
            f = feats[layer][0].float()
            gh, gw = f.shape[-2:]
            target = F.adaptive_avg_pool2d(bone, (gh, gw))[0, 0]
            s = enc.strides[layer]
            sl = (slice(y0 // s, max(y0 // s + 2, -(-y1 // s))), slice(x0 // s, max(x0 // s + 2, -(-x1 // s))))
            fv = f[:, sl[0], sl[1]].flatten(1)
            tv = target[sl[0], sl[1]].flatten()
            fc = fv - fv.mean(1, keepdim=True)
            tc = tv - tv.mean()
            r = (fc @ tc) / (fc.norm(dim=1) * tc.norm()).clamp_min(1e-12)
            out[(label, layer)] = (f, r.abs())
    return out


def feature_map_figure(encoders: Mapping[str, object], image: Tensor, n_channels: int = 4,
                       correlations: Mapping | None = None, stride: int = 8):
    """A few channels of each chosen layer (style layers + AdaIN layer) for one CT slice: the
    ``n_channels`` channels that follow the bone map most closely (highest |r|, see
    :func:`bone_channel_correlations`; |r| printed on each panel), each min-max scaled."""
    import matplotlib.pyplot as plt

    correlations = correlations or bone_channel_correlations(encoders, image, stride=stride)
    rows = []
    for (label, layer), (f, r) in correlations.items():
        enc = encoders[label]
        top = r.argsort(descending=True)[:n_channels]
        tag = "AdaIN" if layer == encoder_layers_at(enc.arch, stride)["adain"] else "loss"
        rows.append((f"{label}\n{layer} ({tag}, s{enc.strides[layer]}, {enc.channels[layer]} ch)",
                     [(f[c].numpy(), float(r[c])) for c in top]))
    fig, axes = plt.subplots(len(rows), n_channels + 1, figsize=(1.6 * (n_channels + 1), 1.55 * len(rows)),
                             squeeze=False)
    for i, (title, maps) in enumerate(rows):
        axes[i, 0].imshow(image[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=7)
        for c, (m, rc) in enumerate(maps):
            axes[i, c + 1].imshow(m, cmap="magma")
            axes[i, c + 1].text(0.03, 0.97, f"|r|={rc:.2f}", color="cyan", fontsize=6, ha="left", va="top",
                                transform=axes[i, c + 1].transAxes)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("slice", fontsize=8)
    for c in range(n_channels):
        axes[0, c + 1].set_title(f"channel #{c + 1}", fontsize=8)
    fig.tight_layout()
    return fig


def correlation_table(correlations: Mapping, top: int = 4):
    """Per backbone and layer: the best |r| of any channel with the bone map and the mean of the
    ``top`` best (a summary of :func:`bone_channel_correlations`)."""
    import pandas as pd

    rows = []
    for (label, layer), (_, r) in correlations.items():
        best = r.sort(descending=True).values
        rows.append({"backbone": label, "layer": layer, "channels": len(r), "best |r|": float(best[0]),
                     f"mean of top {top} |r|": float(best[:top].mean())})
    return pd.DataFrame(rows)


def results_grid(pairs, outputs: Mapping[str, Mapping[str, np.ndarray]], examples: Sequence[tuple[int, str]],
                 title: str):
    """Rows: content, style reference, target rendering, then one row per run; columns: examples
    ``(pair index, target style)``."""
    import matplotlib.pyplot as plt

    rows = [("content (source)", {s: pairs.content for s in pairs.styles}), ("style reference", pairs.refs),
            ("target rendering\n(ideal output)", pairs.truth), *outputs.items()]
    n = len(examples)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.7 * n + 1.6, 1.7 * len(rows)), squeeze=False)
    for r, (label, per_style) in enumerate(rows):
        for c, (i, s) in enumerate(examples):
            ax = axes[r, c]
            ax.imshow(np.clip(per_style[s][i], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"#{i} → {s}", fontsize=8)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def metrics_figure(summary, content_losses: Sequence[str]):
    """Bars of the main metrics per backbone, one colour per content loss."""
    import matplotlib.pyplot as plt

    cols = [METRICS[m][0] for m in ("bone_dice_rank", "edge_ssim", "lpips_content", "lpips_truth",
                                    "style_accuracy") if METRICS[m][0] in summary]
    backbones = list(dict.fromkeys(summary["backbone"]))
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.4), squeeze=False)
    width = 0.8 / max(1, len(content_losses))
    for ax, col in zip(axes[0], cols):
        for k, loss in enumerate(content_losses):
            sub = summary[summary["content loss"] == loss].set_index("backbone").reindex(backbones)
            ax.bar(np.arange(len(backbones)) + k * width, sub[col].to_numpy(float), width, label=loss)
        ax.set_xticks(np.arange(len(backbones)) + width * (len(content_losses) - 1) / 2)
        ax.set_xticklabels(backbones, rotation=60, ha="right", fontsize=7)
        ax.set_title(col, fontsize=9)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig

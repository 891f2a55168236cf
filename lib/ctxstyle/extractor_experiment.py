"""Extractor analysis (notebook 05, paper Figs 8-9): the same AdaIN pipeline with other encoders.

The paper trains its decoder with different ImageNet feature extractors (VGG, ResNet, DenseNet)
and judges from example images how well each keeps the anatomy. Here every backbone whose
weights resolve is trained with both content losses of the comparison (MSE to the AdaIN target,
``METHODS["adain"]``; contextual loss, ``METHODS["ours"]``), on the same data, iterations, seed
and style loss, with the layers of :data:`ctxstyle.encoders.ENCODER_LAYERS`; then every decoder
stylizes the same test slices and is scored for anatomy preservation and style match.

* :func:`check_backbones`: which backbones have pretrained weights here (and the command that
  completes the others on a machine that has them); a random-init VGG19 is a labelled control.
* :func:`train_decoders`: cached training through :func:`ctxstyle.experiments.train_or_load`.
* :func:`backbone_outputs`: every decoder on the evaluation pairs of
  :func:`ctxstyle.style_experiment.pair_set` (each test slice x every target style, with its
  style reference and its ground-truth rendering); the metrics are notebook 03's
  (``style_experiment.evaluate``: LPIPS, bone Dice, edge SSIM; ``style_classifier`` /
  ``cis_scores``: the style-domain classifier and CIS), so the numbers are comparable.
* :func:`summarize`, :func:`compare_runs`, :func:`claims_table`: the table and the verdicts on
  the paper's qualitative claims (paired bootstrap CIs, ``metrics.segmentation.paired_comparison``).
* :func:`feature_map_figure`, :func:`results_grid`, :func:`metrics_figure`: the figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .encoders import (
    ENCODER_LAYER_NOTES,
    RANDOM_INIT_SOURCE,
    encoder_layers,
    encoder_train_kwargs,
    random_init_provenance,
    split_arch,
)
from .errors import WeightsNotFoundError
from .experiments import method_config, train_or_load

__all__ = [
    "BACKBONES",
    "CONTENT_LOSSES",
    "CONTROLS",
    "MEASURED",
    "METRICS",
    "PAPER_CLAIMS",
    "REFERENCE_ROWS",
    "Backbone",
    "TrainedDecoder",
    "backbone_label",
    "backbone_outputs",
    "bone_channel_correlations",
    "check_backbones",
    "claims_table",
    "compare_runs",
    "complete_command",
    "correlation_table",
    "extractor_config",
    "feature_map_figure",
    "metrics_figure",
    "results_grid",
    "run_key",
    "split_key",
    "summarize",
    "train_decoders",
]

#: Backbones of the comparison, in the order of the tables and figures.
BACKBONES = ("vgg19", "vgg16", "alexnet", "resnet50", "resnet101", "densenet121", "densenet169", "densenet201")
#: Labelled controls (never reported as pretrained).
CONTROLS = ("vgg19:random",)
#: Content loss -> method preset of :data:`ctxstyle.experiments.METHODS`.
CONTENT_LOSSES = {"mse": "adain", "contextual": "ours"}

_LABELS = {"vgg19": "VGG19", "vgg16": "VGG16", "alexnet": "AlexNet", "resnet50": "ResNet-50",
           "resnet101": "ResNet-101", "densenet121": "DenseNet-121", "densenet169": "DenseNet-169",
           "densenet201": "DenseNet-201"}

#: The paper's qualitative conclusions about extractors (Figs 8-9), as the issue states them.
PAPER_CLAIMS = {
    "vgg": "VGG19 keeps the semantics (the anatomy of the slice) in its generations",
    "resnet": "ResNets keep the semantics only barely",
    "densenet": "DenseNets destroy the semantics",
}


def backbone_label(arch: str) -> str:
    base, random_init = split_arch(arch)
    label = _LABELS.get(base, base)
    return f"{label} (random init, control)" if random_init else label


def complete_command(profile: str = "cpu") -> str:
    """The one command that completes the comparison where more weights are available."""
    return (f"CTXSTYLE_WEIGHTS=/path/to/folder-with-torchvision-weights python -m reproduce --profile {profile} "
            f"--only 05 --force   (or the same command on an online machine, without CTXSTYLE_WEIGHTS)")


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

    @property
    def runnable(self) -> bool:
        return self.status != "weights not available here"

    def to_row(self) -> dict:
        return {"backbone": self.label, "arch": self.arch, "status": self.status, "weights": self.weights,
                "AdaIN layer": encoder_layers(self.arch)["adain"],
                "style layers": ", ".join(encoder_layers(self.arch)["style"]), "detail": self.detail}


def _weights_text(prov) -> str:
    text = prov.source + ("" if prov.exact else " (quantised)")
    return f"{text}, {prov.input_convention} input"


def check_backbones(backbones: Sequence[str] = BACKBONES, controls: Sequence[str] = CONTROLS,
                    profile: str = "cpu") -> list[Backbone]:
    """Resolve each backbone's ImageNet weights (no training); unavailable ones are listed with
    the command that completes them. Controls are random-init and say so."""
    from torchvision.models import get_weight

    from .weights import ARCHS, resolve_weights

    out = []
    for arch in backbones:
        try:
            _, prov = resolve_weights(arch)
        except WeightsNotFoundError:
            file = os.path.basename(get_weight(ARCHS[arch].weights[0]).url)
            out.append(Backbone(arch, backbone_label(arch), "weights not available here", "-",
                                detail=f"needs {file}: {complete_command(profile)}"))
            continue
        out.append(Backbone(arch, backbone_label(arch), "pretrained", _weights_text(prov), prov.to_dict(),
                            ENCODER_LAYER_NOTES.get(arch, "")))
    for arch in controls:
        base = split_arch(arch)[0]
        out.append(Backbone(arch, backbone_label(arch), "control (random init)", RANDOM_INIT_SOURCE,
                            random_init_provenance(base),
                            "same architecture and layers as the pretrained one, weights drawn at random "
                            "(seed 0): what the pipeline does without ImageNet features"))
    return out


# ----------------------------------------------------------------------------- training
def extractor_config(arch: str, content_loss: str, **overrides):
    """``TrainConfig`` of one (backbone, content loss): the method preset + the backbone's layers."""
    if content_loss not in CONTENT_LOSSES:
        raise KeyError(f"unknown content loss {content_loss!r}; choose from {sorted(CONTENT_LOSSES)}")
    return method_config(CONTENT_LOSSES[content_loss], **encoder_train_kwargs(arch), **overrides)


@dataclass
class TrainedDecoder:
    arch: str
    content_loss: str
    stylizer: object  # ctxstyle.stylize.Stylizer
    config: dict
    train_seconds: float  # summed step times from the checkpoint history (also when loaded)
    wall_seconds: float  # this call (~0 when loaded from the cache)
    final_losses: dict = field(default_factory=dict)


def train_decoders(archs: Sequence[str], content_losses: Sequence[str], checkpoints_dir: str | Path, *,
                   progress: bool = True, on_done: Callable[[TrainedDecoder], None] | None = None,
                   **overrides) -> dict[tuple[str, str], TrainedDecoder]:
    """Train (or load) one decoder per (backbone, content loss); ``overrides`` go to every config."""
    from .style_experiment import loss_history

    out = {}
    for arch in archs:
        for loss in content_losses:
            cfg = extractor_config(arch, loss, **overrides)
            t0 = time.perf_counter()
            stylizer = train_or_load(cfg, checkpoints_dir, f"extractor-{arch.replace(':', '-')}-{loss}",
                                     progress=progress)
            wall = time.perf_counter() - t0
            history = loss_history(stylizer)
            tail = history[-max(1, len(history) // 10):]
            final = {k: float(np.mean([h[k] for h in tail])) for k in ("total", "content", "style")}
            done = TrainedDecoder(arch, loss, stylizer, cfg.to_dict(), float(sum(h["seconds"] for h in history)),
                                  wall, final)
            out[(arch, loss)] = done
            if on_done is not None:
                on_done(done)
    return out


# ----------------------------------------------------------------------------- evaluation
def run_key(arch: str, content_loss: str) -> str:
    """The ``method`` key of one (backbone, content loss) in the evaluation tables."""
    return f"{backbone_label(arch)} | {content_loss}"


#: Reference rows of the evaluation (not trained): the content as is, the ideal output.
REFERENCE_ROWS = {"identity": "reference: no transfer (content as is)",
                  "truth": "reference: ground truth (slice rendered in the target style)"}


def backbone_outputs(pairs, trained: Mapping[tuple[str, str], TrainedDecoder], *, references: bool = True
                     ) -> dict[str, dict[str, np.ndarray]]:
    """``{run key: {style: (N, H, W)}}``: every trained decoder applied to every evaluation pair
    (``ctxstyle.style_experiment.pair_set``) in every target style, plus the reference rows."""
    from .style_experiment import stylize_pairs

    out: dict[str, dict[str, np.ndarray]] = {}
    for (arch, loss), done in trained.items():
        out[run_key(arch, loss)] = {s: stylize_pairs(done.stylizer, pairs.content, pairs.refs[s])
                                    for s in pairs.styles}
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


#: column of ``style_experiment.evaluate`` / ``cis_scores`` -> (table header, higher is better)
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


def _paired(per_pair, metric: str, a: str, b: str) -> dict:
    """Paired comparison of run ``a`` against run ``b``. The unit is the test **slice**: each
    slice's metric is first averaged over its target styles (outputs of one slice in different
    styles are not independent), then the slices are compared pairwise."""
    from .metrics.segmentation import paired_comparison

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


def claims_table(per_pair, backbones: Sequence[Backbone], content_losses: Sequence[str]):
    """The paper's extractor claims beside the measured comparisons, with a verdict each.

    Every pretrained backbone (and the control) is compared with VGG19 on the same test slices
    (:func:`compare_runs`); the contextual loss is compared with MSE per backbone.
    """
    import pandas as pd

    ran = [b.arch for b in backbones if b.runnable]
    missing = {b.arch: b.label for b in backbones if not b.runnable}
    pretrained = [a for a in ran if not split_arch(a)[1]]
    vgg_label = backbone_label("vgg19")
    rows = []

    def row(claim, loss, compared, measured, verdict):
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
            + (f" ({', '.join(worse)})" if worse else ""))
        for family in ("resnet", "densenet"):
            archs = [a for a in pretrained if a.startswith(family)]
            if not archs:
                absent = [label for a, label in missing.items() if a.startswith(family)]
                row(PAPER_CLAIMS[family], loss, ", ".join(absent), "-", "not testable here: weights not available")
            for arch in archs:
                label = backbone_label(arch)
                verdict, ev = verdicts[arch]
                row(PAPER_CLAIMS[family], loss, f"{label} vs VGG19", "; ".join(ev),
                    f"{_AGREES.get(verdict, 'not testable')}: {_says(verdict, label, 'VGG19')}")
        for arch in ran:
            if split_arch(arch)[1]:
                verdict, ev = compare_runs(per_pair, run_key(arch, loss), vgg)
                row("(control) does ImageNet training matter?", loss, f"{backbone_label(arch)} vs VGG19",
                    "; ".join(ev), _says(verdict, "random-init VGG19", "pretrained VGG19"))
    if "mse" in content_losses and "contextual" in content_losses:
        for arch in ran:
            verdict, ev = compare_runs(per_pair, run_key(arch, "contextual"), run_key(arch, "mse"))
            row("the contextual loss keeps more anatomy than MSE (the paper's main claim)", "contextual vs mse",
                backbone_label(arch), "; ".join(ev), _says(verdict, "contextual", "MSE"))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figures
@torch.inference_mode()
def bone_channel_correlations(encoders: Mapping[str, object], image: Tensor, bone_threshold: float | None = None):
    """For each backbone and chosen layer, the Pearson correlation of every channel with the
    slice's bone map (pixels >= the source style's gray value of 200 HU, average-pooled to the
    map's grid), over the map positions inside the imaged body (the bounding box of pixels >
    0.02, shrunk by 10 % per side so that the field-of-view edge does not count).

    Returns ``{(label, layer): (feature map (C, h, w), |r| per channel (C,))}``, in order.
    A decoder-free hint of how directly a layer encodes where bone is (no decoder, no AdaIN).
    """
    import torch.nn.functional as F

    from .metrics.anatomy import gray_threshold

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
        roles = encoder_layers(enc.arch)
        layers = list(dict.fromkeys([*roles["style"], roles["adain"]]))
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
                       correlations: Mapping | None = None):
    """A few channels of each chosen layer (style layers + AdaIN layer) for one CT slice: the
    ``n_channels`` channels that follow the bone map most closely (highest |r|, see
    :func:`bone_channel_correlations`; |r| printed on each panel), each min-max scaled."""
    import matplotlib.pyplot as plt

    correlations = correlations or bone_channel_correlations(encoders, image)
    rows = []
    for (label, layer), (f, r) in correlations.items():
        enc = encoders[label]
        top = r.argsort(descending=True)[:n_channels]
        tag = "AdaIN" if layer == encoder_layers(enc.arch)["adain"] else "loss"
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

"""The style transfer experiment (notebook 03): three trained methods, two simple baselines,
their evaluation (Table 1 analogue), a bounded validation sweep and the example figures.

* the decoders come from :mod:`ctxstyle.experiments.recipe` (warm start, validation-chosen lr, seeds);
  :func:`summarize_seeds` and :func:`paired_over_seeds` spread and rank them
  over decoder seeds.
* :func:`pair_set` - evaluation pairs of a split: each content slice (source style) gets one
  style reference (another slice of the split, rendered in each target style) and its **ground
  truth**: the same slice rendered in the target style. The styles are synthetic, so the ideal
  output of a transfer is known; the distance to it scores anatomy and gray scale at once.
* :func:`method_outputs` / :func:`evaluate` - outputs of every method for every pair and the
  per-pair metrics (LPIPS to content / style / truth, L1 to truth, bone Dice/IoU, edge SSIM).
* :func:`cis_scores` - conditional inception score with a softmax head on frozen Inception-v3.
* :func:`sweep` - train a small grid of configurations for a few steps and score them on the
  validation patient (never the test split).
* :func:`plot_examples` - Figs 5-6 analogues with zoomed insets where the methods differ.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctxstyle.errors import InputError
from ctxstyle.store import write_checkpoint
from ctxstyle.experiments import presets
from ctxstyle.experiments.presets import method_config, run_dir, train_or_load
from ctxstyle.experiments.wording import LABELS, SHORT_LABELS  # noqa: F401 (sx.LABELS in notebook 03)
from ctxstyle.train import config_key

#: Baselines a user might pick instead of a trained transfer (see :func:`baseline_outputs`).
BASELINES = ("histmatch", "window")
#: Reference rows: the unchanged content and the ground-truth rendering in the target style.
REFERENCES = ("identity", "truth")
# ----------------------------------------------------------------------------------- training
def extend_shorter_run(cfg, checkpoints_dir: str | Path, name: str) -> Path | None:
    """Start ``cfg``'s run from the furthest checkpoint of the same configuration with fewer
    iterations (``<name>-<hash>/`` folders of ``checkpoints_dir``), if there is one.

    The learning-rate schedule (lr / (1 + decay * step)) and the batch sampler do not depend on
    the total number of iterations, and a resumed run ends exactly where an uninterrupted one
    would (``ctxstyle.train``), so a 100-step sweep run is the first 100 steps of the 500-step run
    with the same settings: continuing it gives the same decoder as training from scratch. The
    checkpoint is copied (with the config rewritten) into ``cfg``'s own folder; the shorter run
    is left as it was. Returns the copied checkpoint, or None.
    """
    from ctxstyle.train import CHECKPOINT_LAST, defining_fields, load_checkpoint

    target = run_dir(cfg, checkpoints_dir, name)
    if (target / CHECKPOINT_LAST).is_file():
        return None  # train() resumes or loads it (where it is saved does not have to match)
    want = defining_fields(cfg.to_dict())
    best, best_step = None, 0
    for folder in sorted(Path(checkpoints_dir).glob(f"{name}-*")):
        ckpt = folder / CHECKPOINT_LAST
        if folder == target or not ckpt.is_file():
            continue
        try:
            other = json.loads((folder / "config.json").read_text())
            if defining_fields(other) != want:  # InputError (a ValueError) for a config this version cannot read
                continue
        except (OSError, ValueError):
            continue
        if not other.get("iterations", 0) <= cfg.iterations:
            continue
        state = load_checkpoint(ckpt)
        if best_step < state["step"] <= cfg.iterations:
            best, best_step = state, state["step"]
    if best is None:
        return None
    target.mkdir(parents=True, exist_ok=True)
    cfg.output_dir = str(target)
    best["config"] = cfg.to_dict()
    return write_checkpoint(target / CHECKPOINT_LAST, best)


def train_extending(cfg, checkpoints_dir: str | Path, name: str, *, progress: bool = True):
    """:func:`ctxstyle.experiments.presets.train_or_load`, continuing a shorter run of the same
    configuration when one exists (:func:`extend_shorter_run`)."""
    extend_shorter_run(cfg, checkpoints_dir, name)
    return train_or_load(cfg, checkpoints_dir, name, progress=progress)


def training_summary(stylizer, last: int = 25) -> dict:
    """Steps, summed step time and the mean of the last ``last`` losses of a trained Stylizer."""
    hist = loss_history(stylizer)
    tail = hist[-last:]
    return {
        "steps": len(hist),
        "train_seconds": float(sum(h["seconds"] for h in hist)),
        "seconds_per_step": float(np.mean([h["seconds"] for h in hist])) if hist else float("nan"),
        "final_content_loss": float(np.mean([h["content"] for h in tail])) if tail else float("nan"),
        "final_style_loss": float(np.mean([h["style"] for h in tail])) if tail else float("nan"),
        "first_content_loss": float(hist[0]["content"]) if hist else float("nan"),
        "first_style_loss": float(hist[0]["style"]) if hist else float("nan"),
    }


def loss_history(stylizer) -> list[dict]:
    """The per-step training record of a trained Stylizer (read from its checkpoint if needed)."""
    if getattr(stylizer, "history", None) is not None:
        return stylizer.history
    from ctxstyle.train import load_checkpoint

    return load_checkpoint(stylizer.checkpoint)["history"]


# ----------------------------------------------------------------------------------- pairs
@dataclass
class PairSet:
    """Content slices of one split with a style reference and the ground truth in each style.

    Arrays are (N, H, W) float32 in [0, 1] (``hu`` in HU). ``refs[s][i]`` is slice
    ``ref_index[i]`` of the split rendered in style ``s`` (a different slice, from another
    patient when the split has several); ``truth[s][i]`` is slice ``index[i]`` rendered in ``s``.
    """

    split: str
    image_size: int
    source_style: str
    styles: tuple[str, ...]
    content: np.ndarray
    hu: np.ndarray
    mask: np.ndarray
    patient: np.ndarray
    index: np.ndarray
    ref_index: np.ndarray
    refs: dict[str, np.ndarray] = field(repr=False)
    truth: dict[str, np.ndarray] = field(repr=False)

    def __len__(self) -> int:
        return len(self.content)

    def subset(self, n: int) -> PairSet:
        """The first ``n`` pairs spread evenly over this set (deterministic)."""
        keep = evenly_spaced(len(self), n)
        return PairSet(self.split, self.image_size, self.source_style, self.styles, self.content[keep],
                       self.hu[keep], self.mask[keep], self.patient[keep], self.index[keep],
                       self.ref_index[keep], {s: v[keep] for s, v in self.refs.items()},
                       {s: v[keep] for s, v in self.truth.items()})


def evenly_spaced(total: int, n: int | None) -> np.ndarray:
    """``n`` evenly spaced indices of ``range(total)``, first and last included (all when ``n`` is
    None or at least ``total``)."""
    if n is None or n >= total:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, int(n)).round().astype(int))


def pair_set(split: str, image_size: int, n: int | None = None, styles: Sequence[str] | None = None,
             seed: int = 0) -> PairSet:
    """Evaluation pairs of a protocol split at ``image_size`` (128 mm field of view).

    ``n`` content slices are spread evenly over the split (all when None); each gets a style
    reference drawn (``seed``) from another patient of the split, or at least a quarter of the
    split away when it has one patient. The same reference slice is used for every style, so the
    style images of one content differ only in gray scale.
    """
    from ctxstyle.data import protocol_slice_set, scaled_protocol

    proto = scaled_protocol(int(image_size))
    styles = tuple(styles or proto.target_styles)
    ss = protocol_slice_set(split, protocol=proto)
    total = len(ss.hu)
    keep = evenly_spaced(total, n)
    rng = np.random.default_rng([int(seed), 31337])
    refs_idx = []
    for i in keep:
        other = np.flatnonzero(ss.patient != ss.patient[i])
        if len(other) == 0:
            far = np.flatnonzero(np.abs(np.arange(total) - i) >= max(1, total // 4))
            other = far if len(far) else np.flatnonzero(np.arange(total) != i)
        refs_idx.append(int(rng.choice(other)))
    ref_index = np.array(refs_idx)
    content = proto.render(ss.hu, split, proto.source_style)
    rendered = {s: proto.render(ss.hu, split, s) for s in styles}
    return PairSet(split, int(image_size), proto.source_style, styles, content[keep], ss.hu[keep],
                   ss.mask[keep], ss.patient[keep], keep, ref_index,
                   {s: rendered[s][ref_index] for s in styles}, {s: rendered[s][keep] for s in styles})


# ----------------------------------------------------------------------------------- methods
@torch.inference_mode()
def stylize_pairs(stylizer, content: np.ndarray, styles: np.ndarray) -> np.ndarray:
    """Stylize content[i] with style[i] (paired, one style per content): (N, H, W) in [0, 1],
    each pair through the ``Stylizer``."""
    c = stylizer.image_batch(np.asarray(content, np.float32), "content")
    s = stylizer.image_batch(np.asarray(styles, np.float32), "styles")
    if c.shape != s.shape:
        raise ValueError(f"content {tuple(c.shape)} and styles {tuple(s.shape)} must pair up")
    return torch.cat([stylizer(ci, si)[:, 0] for ci, si in zip(c.split(1), s.split(1))]).numpy()


def histogram_match(content: np.ndarray, styles: np.ndarray) -> np.ndarray:
    """``skimage.exposure.match_histograms`` of each content slice to its style image."""
    from skimage.exposure import match_histograms

    return np.stack([match_histograms(c, s) for c, s in zip(content, styles)]).astype(np.float32)


def window_oracle(hu: np.ndarray, style: str) -> np.ndarray:
    """The target style's window (level, width) applied to the HU: knows the target's window,
    not its calibration, noise, kernel or display curve."""
    from ctxstyle.data import get_style, window

    st = get_style(style)
    return window(hu, st.level, st.width).astype(np.float32)


def _shares_encoder(stylizers: Sequence) -> bool:
    """True when every stylizer has the same frozen encoder weights and AdaIN layer."""
    first = stylizers[0]
    return all(st.net.adain_layer == first.net.adain_layer
               and st.weights_provenance == first.weights_provenance
               and st.config.get("encoder") == first.config.get("encoder") for st in stylizers)


@torch.inference_mode()
def _decode_pairs(stylizer, content_feats: torch.Tensor, style_feats: torch.Tensor, size: tuple[int, int],
                  batch_size: int) -> np.ndarray:
    """D(AdaIN(content_feats[i], style_feats[i])) clamped to [0, 1], as ``StyleTransferNet.stylize``
    computes it (its one-image fast path on CPU when available)."""
    from ctxstyle.method.function import adain_blend

    net, out = stylizer.net, []
    for cf, sf in zip(content_feats.split(batch_size), style_feats.split(batch_size)):
        y = net.decode_stylized(adain_blend(cf, [sf]))
        out.append(y[:, 0, : size[0], : size[1]].cpu())
    return torch.cat(out).numpy()


@torch.inference_mode()
def _encode(stylizer, images: np.ndarray, batch_size: int) -> torch.Tensor:
    x = stylizer.image_batch(np.asarray(images, np.float32), "images")
    return torch.cat([stylizer.net.style_features(stylizer.pad_to_stride(c)[0]) for c in x.split(batch_size)])


def method_outputs(pairs: PairSet, stylizers: Mapping[str, object], *, include: Sequence[str] = BASELINES + REFERENCES,
                   batch_size: int = 16, timing_pairs: int = 16) -> tuple[dict, dict]:
    """Outputs ``{method: {style: (N, H, W)}}`` of every trained method, baseline and reference
    row, and the stylization time per image in milliseconds ``{method: ms}``.

    The trained methods share the frozen encoder, so the AdaIN-layer features of the contents and
    style images are computed once and only the decoders run per method (the outputs equal
    :func:`stylize_pairs`). The time of a trained method is measured separately on
    ``timing_pairs`` pairs with the whole per-image pipeline (encode content and style, AdaIN,
    decode); with ``timing_pairs=0`` trained methods get no entry. A baseline's time is that of
    producing all its outputs.
    """
    outputs: dict[str, dict[str, np.ndarray]] = {}
    ms: dict[str, float] = {}
    nets = list(stylizers.values())
    size = pairs.content.shape[-2:]
    if nets:
        shared = _shares_encoder(nets)
        if shared:
            cf = _encode(nets[0], pairs.content, batch_size)
            sf = {s: _encode(nets[0], pairs.refs[s], batch_size) for s in pairs.styles}
        for name, st in stylizers.items():
            if shared:
                outputs[name] = {s: _decode_pairs(st, cf, sf[s], size, batch_size) for s in pairs.styles}
            else:
                outputs[name] = {s: stylize_pairs(st, pairs.content, pairs.refs[s]) for s in pairs.styles}
            k = min(timing_pairs, len(pairs))
            if k:  # timing_pairs=0: the caller needs no timing
                s0 = pairs.styles[0]
                t0 = time.perf_counter()
                stylize_pairs(st, pairs.content[:k], pairs.refs[s0][:k])
                ms[name] = 1000.0 * (time.perf_counter() - t0) / k
    extra = {
        "histmatch": lambda s: histogram_match(pairs.content, pairs.refs[s]),
        "window": lambda s: window_oracle(pairs.hu, s),
        "identity": lambda s: pairs.content.copy(),
        "truth": lambda s: pairs.truth[s].copy(),
    }
    for name in include:
        t0 = time.perf_counter()
        outputs[name] = {s: extra[name](s) for s in pairs.styles}
        ms[name] = 1000.0 * (time.perf_counter() - t0) / (len(pairs) * len(pairs.styles))
    for name in REFERENCES:
        if name in ms:
            ms[name] = float("nan")  # not a method
    return outputs, ms


# ----------------------------------------------------------------------------------- metrics
def evaluate(pairs: PairSet, outputs: Mapping[str, Mapping[str, np.ndarray]], *,
             lpips_batch: int = 32) -> pd.DataFrame:  # noqa: F821
    """One row per (method, style, pair) with every per-image metric. ``lpips_batch``: pairs per
    LPIPS chunk (four images' AlexNet features each are held at once: ~2.5 MB per 256 px image)."""
    import pandas as pd

    from ctxstyle.metrics.anatomy import bone_overlap, edge_ssim, gray_threshold

    thr_src = gray_threshold(pairs.source_style)
    lpips = _lpips_to_inputs(pairs, outputs, lpips_batch)
    rows = []
    for method, per_style in outputs.items():
        for s, out in per_style.items():
            metrics = {
                **lpips[(method, s)],
                "l1_truth": np.abs(out - pairs.truth[s]).mean(axis=(1, 2)),
                "mean_gray_error": np.abs(out.mean(axis=(1, 2)) - pairs.truth[s].mean(axis=(1, 2))),
                "edge_ssim": edge_ssim(pairs.content, out),
            }
            fixed = bone_overlap(pairs.content, out, thr_src, gray_threshold(s))
            rank = bone_overlap(pairs.content, out, thr_src, None)
            metrics.update(bone_dice=fixed["dice"], bone_iou=fixed["iou"], bone_dice_rank=rank["dice"])
            for i in range(len(pairs)):
                rows.append({"method": method, "style": s, "pair": int(i), "patient": str(pairs.patient[i]),
                             "slice": int(pairs.index[i]), **{k: float(v[i]) for k, v in metrics.items()}})
    return pd.DataFrame(rows)


def _lpips_to_inputs(pairs: PairSet, outputs: Mapping[str, Mapping[str, np.ndarray]],
                     batch: int) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """LPIPS of each output to its content, style reference and truth, per (method, style).

    Chunk by chunk of pairs, every image's AlexNet features are computed once: the contents once,
    each style's references and truths once, each output once (instead of once per comparison).
    """
    from ctxstyle.metrics.perceptual import lpips_features, lpips_from_features

    keys = [(m, s) for m, per_style in outputs.items() for s in per_style]
    names = ("lpips_content", "lpips_style", "lpips_truth")
    parts: dict = {k: {n: [] for n in names} for k in keys}
    for lo in range(0, len(pairs), batch):
        chunk = slice(lo, lo + batch)
        content = lpips_features(pairs.content[chunk])
        for s in dict.fromkeys(s for _, s in keys):
            targets = (content, lpips_features(pairs.refs[s][chunk]), lpips_features(pairs.truth[s][chunk]))
            for m in (m for m, s2 in keys if s2 == s):
                out = lpips_features(outputs[m][s][chunk])
                for name, target in zip(names, targets):
                    parts[(m, s)][name].append(lpips_from_features(out, target).numpy())
    return {k: {n: np.concatenate(v) if v else np.zeros(0, np.float32) for n, v in d.items()}
            for k, d in parts.items()}


METRIC_COLUMNS = ("lpips_content", "lpips_style", "lpips_truth", "l1_truth", "mean_gray_error", "bone_dice",
                  "bone_iou", "bone_dice_rank", "edge_ssim")


def summarize(per_pair: pd.DataFrame, by: Sequence[str] = ("method",),  # noqa: F821
              metrics: Sequence[str] = METRIC_COLUMNS) -> pd.DataFrame:  # noqa: F821
    """Mean and std (over pairs and styles) of each metric, columns ``<metric>_mean/_std``."""
    g = per_pair.groupby(list(by), sort=False)[list(metrics)]
    mean, std = g.mean().add_suffix("_mean"), g.std(ddof=0).add_suffix("_std")
    cols = [c for m in metrics for c in (f"{m}_mean", f"{m}_std")]
    return mean.join(std)[cols].reset_index()


def diversity_lpips(pairs: PairSet, outputs: Mapping[str, Mapping[str, np.ndarray]], *,
                    lpips_batch: int = 32) -> pd.DataFrame:  # noqa: F821
    """MUNIT's LPIPS "diversity": per content, the mean LPIPS between its outputs in every pair of
    target styles; mean and std over contents per method (0 for a method ignoring the style).
    Each output's AlexNet features are computed once, chunk by chunk of contents."""
    import pandas as pd

    from ctxstyle.metrics.perceptual import lpips_features, lpips_from_features

    if len(pairs.styles) < 2 or not len(pairs):
        raise InputError("pairs", f"diversity needs pairs in at least two target styles, got {len(pairs)} pairs "
                         f"in {list(pairs.styles)}")
    rows = []
    for method, per_style in outputs.items():
        per_content = []
        for lo in range(0, len(pairs), lpips_batch):
            feats = {s: lpips_features(per_style[s][lo : lo + lpips_batch]) for s in pairs.styles}
            per_content.append(np.mean([lpips_from_features(feats[s1], feats[s2]).numpy()
                                        for s1, s2 in itertools.combinations(pairs.styles, 2)], axis=0))
        v = np.concatenate(per_content)
        rows.append({"method": method, "lpips_diversity_mean": float(v.mean()), "lpips_diversity_std": float(v.std())})
    return pd.DataFrame(rows)


def determinism_check(cfg, steps: int) -> dict:
    """Train ``cfg`` (a ``TrainConfig``) twice for ``steps`` steps (temporary folders) and compare:
    identical loss histories and decoder weights mean a rerun with the seed repeats the numbers
    (on this machine and thread count)."""
    import dataclasses
    import tempfile

    from ctxstyle.train import forget_style_statistics, load_checkpoint, train

    runs = []
    for _ in range(2):
        forget_style_statistics()  # each run computes everything itself
        with tempfile.TemporaryDirectory() as tmp:
            run = dataclasses.replace(cfg, iterations=int(steps), output_dir=tmp)
            runs.append(load_checkpoint(train(run, resume=False, progress=False, fast=presets.FAST)))
    a, b = runs
    max_diff = max(float((a["decoder"][k].float() - b["decoder"][k].float()).abs().max()) for k in a["decoder"])
    la = [(h["content"], h["style"]) for h in a["history"]]
    lb = [(h["content"], h["style"]) for h in b["history"]]
    return {"loss": cfg.method, "steps": int(steps), "identical_losses": la == lb,
            "max_weight_difference": max_diff, "losses": la}


# ----------------------------------------------------------------------------------- seeds
def summarize_seeds(per_pair: pd.DataFrame, metrics: Sequence[str] = METRIC_COLUMNS) -> pd.DataFrame:  # noqa: F821
    """Per method: ``<metric>_mean`` and ``<metric>_std`` with the std **over training seeds** (of the
    per-seed means) for methods with several seeds, and over pairs for a method with one output
    set (baselines, references); ``spread_over`` says which, ``seeds`` how many."""
    import pandas as pd

    rows = []
    for method, df in per_pair.groupby("method", sort=False):
        seeds = df["seed"].dropna().unique()
        row = {"method": method, "seeds": int(len(seeds))}
        if len(seeds) > 1:
            per_seed = df.groupby("seed")[list(metrics)].mean()
            for m in metrics:
                row[f"{m}_mean"], row[f"{m}_std"] = float(per_seed[m].mean()), float(per_seed[m].std(ddof=1))
            row["spread_over"] = f"{len(seeds)} decoder seeds"
        else:
            for m in metrics:
                row[f"{m}_mean"], row[f"{m}_std"] = float(df[m].mean()), float(df[m].std(ddof=0))
            row["spread_over"] = f"{len(df)} pairs"
        rows.append(row)
    return pd.DataFrame(rows)


def paired_over_seeds(per_pair: pd.DataFrame, a: str, b: str, metric: str, *, lower_is_better: bool  # noqa: F821
                      ) -> dict:
    """Method ``a`` minus ``b`` on ``metric``, paired by decoder seed (a seed's mean over pairs):
    the mean difference, its 95 % t interval over seeds, in how many seeds ``a`` is better, and the
    verdict (``a`` better / worse only when the interval excludes 0). A side with one output set
    (a baseline, the ablation, a single seed) is a constant paired with every seed of the other,
    so the interval covers the other side's seed-to-seed spread only."""
    import pandas as pd
    from scipy import stats

    def per_seed(method):
        rows = per_pair[per_pair.method == method]
        if rows.empty:
            raise InputError(method, "has no rows in per_pair")
        by_seed = rows.groupby("seed")[metric].mean()
        return by_seed if len(by_seed) > 1 else float(rows[metric].mean())  # one output set: a constant

    ma, mb = per_seed(a), per_seed(b)
    if not isinstance(ma, pd.Series) and not isinstance(mb, pd.Series):
        ma, mb = pd.Series([ma]), pd.Series([mb])  # no seeds on either side: one difference, no interval
    elif not isinstance(ma, pd.Series):
        ma = pd.Series(ma, index=mb.index)
    elif not isinstance(mb, pd.Series):
        mb = pd.Series(mb, index=ma.index)
    common = ma.index.intersection(mb.index)
    d = (ma.loc[common] - mb.loc[common]).to_numpy(float)
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    if n > 1:
        half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n))
    else:
        half = float("nan")
    lo, hi = mean - half, mean + half
    better = int(np.sum(d < 0) if lower_is_better else np.sum(d > 0))
    if n > 1 and np.isfinite(half) and (hi < 0 or lo > 0):
        good = (hi < 0) if lower_is_better else (lo > 0)
        verdict = f"{a} better" if good else f"{a} worse"
    else:
        verdict = "no difference shown"
    return {"a": a, "b": b, "metric": metric, "seeds": n, "mean_difference": mean, "ci_low": lo, "ci_high": hi,
            "a_better_in": f"{better}/{n}", "verdict": verdict}


# ----------------------------------------------------------------------------------- CIS
def style_classifier(image_size: int, n_train_per_style: int, n_val_per_style: int, *, seed: int = 0,
                     cache_dir: str | Path | None = None, l2: float = 1e-2):
    """Softmax head on frozen Inception-v3 features over every protocol style (source first).

    Trained on ``n_train_per_style`` style-bank slices (training patients) per style, checked
    on ``n_val_per_style`` slices of the validation patient per style. Returns the head (its
    ``info`` holds the train/val accuracies and counts).
    """
    from ctxstyle.data import protocol_slice_set, scaled_protocol, style_bank
    from ctxstyle.metrics.cis import inception_features, train_softmax_head

    proto = scaled_protocol(int(image_size))
    classes = list(proto.styles)
    xs, ys, xv, yv = [], [], [], []
    val_set = protocol_slice_set("val", protocol=proto)  # loaded once, rendered in each style below
    for k, s in enumerate(classes):
        bank = style_bank(s, n=int(n_train_per_style), size=proto.size, seed=seed + k, spacing_mm=proto.spacing_mm)
        xs.append(bank)
        ys += [k] * len(bank)
        val = proto.render(val_set.hu, "val", s)
        val = val[evenly_spaced(len(val), n_val_per_style)]
        xv.append(val)
        yv += [k] * len(val)
    f_train = inception_features(np.concatenate(xs), cache_dir=cache_dir)
    f_val = inception_features(np.concatenate(xv), cache_dir=cache_dir)
    head = train_softmax_head(f_train, ys, classes, l2=l2)
    pv = head.predict_proba(f_val).argmax(1)
    head.info.update(val_accuracy=float((pv == np.array(yv)).mean()), n_val=len(yv),
                     val_confusion={c: {c2: int(((np.array(yv) == i) & (pv == j)).sum()) for j, c2 in enumerate(classes)}
                                    for i, c in enumerate(classes)},
                     train_data=f"style_bank(style, n={n_train_per_style}) of the training patients",
                     val_data=f"{n_val_per_style} slices of the val patient(s) per style")
    return head


def cis_scores(pairs: PairSet, outputs: Mapping[str, Mapping[str, np.ndarray]], head, n_contents: int,
               *, cache_dir: str | Path | None = None) -> pd.DataFrame:  # noqa: F821
    """CIS per method over the first ``n_contents`` pairs (spread evenly): each content's outputs
    are its renderings in every target style. Also the fraction of outputs classified as the
    intended target style (``style_accuracy``)."""
    import pandas as pd

    from ctxstyle.metrics.cis import conditional_inception_score, inception_features

    keep = evenly_spaced(len(pairs), n_contents)
    target = np.array([head.classes.index(s) for s in pairs.styles])
    rows = []
    for method, per_style in outputs.items():
        imgs = np.stack([per_style[s][keep] for s in pairs.styles], axis=1)  # (n, S, H, W)
        n, k = imgs.shape[:2]
        feats = inception_features(imgs.reshape(n * k, *imgs.shape[2:]), cache_dir=cache_dir)
        probs = head.predict_proba(feats).reshape(n, k, -1)
        mean, std, _ = conditional_inception_score(probs)
        hit = (probs.argmax(2) == target[None]).mean()
        rows.append({"method": method, "cis_mean": mean, "cis_std": std, "style_accuracy": float(hit),
                     "cis_contents": int(n), "outputs_per_content": int(k)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- sweep
def sweep_grid(methods: Sequence[str], vary: Mapping[str, Sequence], fixed: Mapping[str, object] | None = None
               ) -> list[tuple[str, dict]]:
    """Cartesian product of ``vary`` (option -> values) for each method, on top of ``fixed``."""
    keys = list(vary)
    grid = []
    for method in methods:
        for values in itertools.product(*(vary[k] for k in keys)):
            grid.append((method, {**(fixed or {}), **dict(zip(keys, values))}))
    return grid


#: TrainConfig fields written into every sweep row (whether varied or not).
_SWEEP_SETTINGS = ("method", "style_weight", "lr", "lr_decay", "band_width", "content_layers", "style_layers",
                   "cx_style_layers")


def sweep(results_dir: str | Path, grid: Sequence[tuple[str, Mapping]], *, image_size: int, batch_size: int,
          iterations: int, seed: int, n_val: int = 16, progress: bool = True,
          on_result: Callable[[dict], None] | None = None) -> pd.DataFrame:  # noqa: F821
    """Train each (method, overrides) of ``grid`` for ``iterations`` steps and score it on the
    validation split (``val`` patients only; never the test split).

    Scores: mean over ``n_val`` val slices x every target style of LPIPS to the ground-truth
    rendering (``lpips_truth``, the selection criterion: lower is better), LPIPS to the content
    and to the style image, L1 and mean-gray error to the truth, bone Dice, edge SSIM. One row
    per configuration, with the options, the config hash and the training time.
    """
    import pandas as pd

    pairs = pair_set("val", image_size, n=n_val, seed=seed)
    rows = []
    for method, overrides in grid:
        cfg = method_config(method, image_size=int(image_size), batch_size=int(batch_size),
                            iterations=int(iterations), seed=int(seed), **dict(overrides))
        stylizer = train_extending(cfg, Path(results_dir) / "checkpoints", method, progress=progress)
        outs, _ = method_outputs(pairs, {method: stylizer}, include=(), timing_pairs=0)
        summ = summarize(evaluate(pairs, outs))
        settings = {k: cfg.to_dict()[k] for k in _SWEEP_SETTINGS}
        row = {"method": method, **settings,
               **{k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()},
               **{k: float(summ[f"{k}_mean"].iloc[0]) for k in METRIC_COLUMNS},
               **training_summary(stylizer), "config": config_key(cfg), "iterations": int(iterations)}
        for k, v in list(row.items()):
            if isinstance(v, list):
                row[k] = "+".join(map(str, v))
        rows.append(row)
        if on_result is not None:
            on_result(row)
    return pd.DataFrame(rows)


def reference_scores(split: str, image_size: int, n: int | None, seed: int = 0,
                     include: Sequence[str] = ("identity", "histmatch", "window")) -> pd.DataFrame:  # noqa: F821
    """The sweep's scores for the rows that need no training (no transfer, histogram matching,
    target window) on the same pairs, as a yardstick for the trained configurations."""
    pairs = pair_set(split, image_size, n=n, seed=seed)
    outs, _ = method_outputs(pairs, {}, include=include)
    summ = summarize(evaluate(pairs, outs))
    return summ[["method", *[f"{k}_mean" for k in METRIC_COLUMNS]]].rename(
        columns={f"{k}_mean": k for k in METRIC_COLUMNS})


# ----------------------------------------------------------------------------------- figures
def _zoom_box(images: Sequence[np.ndarray], size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` window where the images' edge maps disagree most."""
    from scipy.ndimage import uniform_filter

    from ctxstyle.metrics.anatomy import sobel_edges

    edges = sobel_edges(np.stack(images))
    var = edges.var(axis=0)
    score = uniform_filter(var, size=size, mode="constant")
    h, w = var.shape
    half = size // 2
    score[:half, :] = score[h - (size - half) + 1:, :] = -1
    score[:, :half] = score[:, w - (size - half) + 1:] = -1
    y, x = np.unravel_index(np.argmax(score), score.shape)
    return int(y - half), int(x - half)


def plot_examples(pairs: PairSet, outputs: Mapping[str, Mapping[str, np.ndarray]], examples: Sequence[tuple[int, str]],
                  columns: Sequence[str], *, zoom: float = 0.3, title: str | None = None,
                  labels: Mapping[str, str] | None = None):
    """A grid with two rows per example (pair index, style): the images (content, style image,
    then ``columns``, method names in ``outputs``) and below them the window marked in yellow
    (``zoom`` x the image side, nearest-neighbour enlarged), placed where the edge maps of the
    content and the columns disagree most. ``labels`` adds or replaces column titles."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cols = ["content", "style", *columns]
    n = len(examples)
    fig, axes = plt.subplots(2 * n, len(cols), figsize=(1.7 * len(cols), 3.3 * n + 0.5), squeeze=False)
    size = max(4, int(round(zoom * pairs.image_size)))
    for r, (i, s) in enumerate(examples):
        images = {"content": pairs.content[i], "style": pairs.refs[s][i],
                  **{m: outputs[m][s][i] for m in columns}}
        y, x = _zoom_box([images[m] for m in columns] + [pairs.content[i]], size)
        for c, name in enumerate(cols):
            ax, zx = axes[2 * r, c], axes[2 * r + 1, c]
            ax.imshow(images[name], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            for a_ in (ax, zx):
                a_.set_xticks([]), a_.set_yticks([])
            if name == "style":
                zx.axis("off")
            else:
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), size, size, fill=False, ec="yellow", lw=0.9))
                zx.imshow(images[name][y:y + size, x:x + size], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                for sp in zx.spines.values():
                    sp.set_color("yellow")
            if r == 0:
                ax.set_title({**SHORT_LABELS, **(labels or {})}.get(name, name), fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{pairs.patient[i]} #{pairs.index[i]}\n{s}", fontsize=7)
                zx.set_ylabel("zoom", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.985 if title else 1))
    if title:
        fig.suptitle(title, fontsize=9, y=0.998)
    return fig


# ----------------------------------------------------------------------------------- CLI
def _parse_values(text: str) -> list:
    out = []
    for item in text.split(","):
        item = item.strip()
        if "+" in item:
            out.append(tuple(item.split("+")))
            continue
        try:
            out.append(json.loads(item))
        except json.JSONDecodeError:
            out.append(item)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ctxstyle.experiments.style_transfer sweep --methods ours --vary style_weight=0.5,1,2 ...``

    ``--vary`` / ``--fixed`` take ``option=v1,v2`` (layer tuples as ``relu3_1+relu4_1``); rows
    are appended to ``--out`` (CSV) as they finish, so an interrupted sweep keeps its results.
    """
    import argparse

    import pandas as pd

    ap = argparse.ArgumentParser(prog="python -m ctxstyle.experiments.style_transfer")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("sweep", help="validation sweep (val patients only)")
    sp.add_argument("--results-dir", required=True)
    sp.add_argument("--out", required=True, help="CSV file the rows are appended to")
    sp.add_argument("--methods", nargs="+", default=["ours"])
    sp.add_argument("--vary", action="append", default=[], metavar="OPTION=V1,V2")
    sp.add_argument("--fixed", action="append", default=[], metavar="OPTION=V")
    sp.add_argument("--image-size", type=int, default=64)
    sp.add_argument("--batch-size", type=int, default=4)
    sp.add_argument("--iterations", type=int, default=120)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--n-val", type=int, default=16)
    sp.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    def layers(key, values):  # a single layer name is a one-layer tuple
        return [(v,) if key.endswith("_layers") and isinstance(v, str) else v for v in values]

    vary = {k: layers(k, _parse_values(v)) for k, v in (s.split("=", 1) for s in args.vary)}
    fixed = {k: layers(k, _parse_values(v))[0] for k, v in (s.split("=", 1) for s in args.fixed)}
    grid = sweep_grid(args.methods, vary, fixed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(row):
        frame = pd.DataFrame([row])
        if out.is_file():
            frame = pd.concat([pd.read_csv(out), frame], ignore_index=True)
        frame.to_csv(out, index=False)
        print(json.dumps({k: row[k] for k in row if k in ("method", *vary, "lpips_truth", "lpips_content",
                                                            "lpips_style", "train_seconds")}), flush=True)

    sweep(Path(args.results_dir).resolve(), grid, image_size=args.image_size, batch_size=args.batch_size,
          iterations=args.iterations, seed=args.seed, n_val=args.n_val, progress=False, on_result=write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The segmentation experiment (paper Table 2 / Fig 7): a U-Net trained on the source gray scale,
with and without gray-scale augmentation, tested on held-out patients in every gray scale.

Training sets (all with the same U-Net, number of steps, batch size, learning rate and seeds):

| name | images | labels |
|---|---|---|
| ``baseline`` | training slices in the source style | masks |
| ``ours`` / ``adain`` / ``contextual`` | + one stylized copy per planned (slice, target style, reference) | masks unchanged |
| ``histmatch`` | + the same planned copies by histogram matching to the reference | masks unchanged |
| ``classical`` | source slices, nnU-Net intensity augmentation on the fly (same share of augmented samples) | masks |
| ``nnunet_v2`` / ``bigaug`` / ``window_lut`` / ``gin`` / ``randconv`` | source slices, a domain-generalisation augmentation on the fly (:mod:`ctxstyle.experiments.dg_augment`; same share) | masks |
| ``oracle`` | + the planned (slice, style) pairs rendered in the *true* target style | masks |

See :mod:`ctxstyle.experiments.augment` for the copy plan (one budget for every augmentation). The oracle is
an upper bound: it uses labelled target-style images, which no other set sees; the others see
target styles only through unlabelled reference slices.

Training (:func:`train_unet`): loss = BCE(logit, mask) + ``dice_weight`` x (1 - soft Dice), the
soft Dice pooled over the batch; Adam, cosine learning-rate decay to 0 over ``steps``; batches
are drawn epoch by epoch from a seeded permutation of the set. Fixed seed: ``torch.manual_seed``
(weights), a ``torch.Generator`` (batch order and on-the-fly augmentation). On CPU with a fixed
thread count a run is bit-for-bit repeatable. A finished run is cached in
``checkpoints_dir/<name>-<key>/unet.pt``; the key hashes the config, the training data (images
quantised to 16 bits, masks) and the augmentation, so a changed input retrains.

Evaluation (:func:`evaluate`): confusion counts per (style, test patient), pooled over the
patient's slices; scores by :mod:`ctxstyle.metrics.segmentation`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ctxstyle.experiments.wording import SET_LABELS, STYLIZED, set_label  # noqa: F401 (seg.STYLIZED in notebook 04)
from ctxstyle.errors import InputError, TrainingDiverged
from ctxstyle.store import content_hash, read_checkpoint, write_checkpoint
from ctxstyle.metrics.segmentation import confusion_counts, paired_comparison, scores_from_counts
from ctxstyle.experiments.unet import UNet

__all__ = ["SegConfig", "TrainedUNet", "TrainingSet", "TRAINING_SETS", "EXEMPLAR_SETS", "SET_LABELS", "even_subsample",
           "load_split", "style_references", "build_training_sets", "seg_loss", "train_unet", "train_all",
           "train_jobs", "choose_unet_lr", "predict", "evaluate", "evaluate_all", "held_out_frame",
           "held_out_conclusion_markdown",
           "pooled_scores", "per_seed_scores", "table2", "style_breakdown", "patient_breakdown",
           "paired_vs_baseline", "conclusion_markdown", "prediction_figure"]

FORMAT = "ctxstyle-unet-v1"
#: Part of every U-Net run's cache key (:func:`run_key`): bump it whenever U-Net training behaves
#: differently under an unchanged configuration, so that runs cached by older code are not loaded as
#: today's. 2: U-Nets cached by the code of 2026-12-06 (before the redesign) train differently with
#: the same configuration and data, and an in-place rerun of notebook 04 loaded them.
TRAINING_VERSION = 2

#: Training sets that use target-style images (unlabelled references, or labelled ones: the oracle); in
#: the held-out evaluation they are retrained without the held-out style.
EXEMPLAR_SETS = ("ours", "adain", "contextual", "warm", "histmatch", "oracle")

#: Training-set names in table order.
TRAINING_SETS = ("baseline", "ours", "adain", "contextual", "warm", "histmatch", "classical", "nnunet_v2", "bigaug",
                 "window_lut", "gin", "randconv", "oracle")


# --------------------------------------------------------------------------- config and data


@dataclass
class SegConfig:
    """Everything that defines one U-Net training run (besides its data and augmentation)."""

    image_size: int = 64
    base_channels: int = 16
    depth: int = 3
    norm: str = "batch"
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    dice_weight: float = 1.0
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self):
        for name in ("image_size", "base_channels", "depth", "steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.image_size % (2 ** self.depth):
            raise InputError("image_size", f"{self.image_size} is not a multiple of 2**depth = {2 ** self.depth}")

    def to_dict(self) -> dict:
        return asdict(self)

    def build(self) -> UNet:
        return UNet(1, 1, self.base_channels, self.depth, self.norm)


@dataclass
class TrainedUNet:
    net: UNet
    config: SegConfig
    history: list = field(default_factory=list)
    path: str | None = None
    seconds: float = 0.0
    cached: bool = False


@dataclass
class TrainingSet:
    """Images (N, H, W) in [0, 1], masks (N, H, W) uint8 and an optional on-the-fly augmentation."""

    name: str
    images: np.ndarray
    masks: np.ndarray
    augment: object = None
    description: str = ""

    def __post_init__(self):
        if self.images.shape != self.masks.shape or self.images.ndim != 3:
            raise InputError(self.name, f"images {self.images.shape} and masks {self.masks.shape} must be equal (N, H, W)")

    def __len__(self) -> int:
        return int(len(self.images))


def even_subsample(patients: np.ndarray, max_per_patient: int | None) -> np.ndarray:
    """Indices of at most ``max_per_patient`` evenly spaced slices of each patient (all if None)."""
    keep = []
    for p in dict.fromkeys(patients.tolist()):
        idx = np.flatnonzero(patients == p)
        if max_per_patient is not None and len(idx) > max_per_patient:
            idx = idx[np.round(np.linspace(0, len(idx) - 1, int(max_per_patient))).astype(int)]
        keep.append(idx)
    return np.concatenate(keep)


def load_split(split: str, style: str, image_size: int, *, max_per_patient: int | None = None,
               max_total: int | None = None):
    """(images, masks, patients) of a protocol split in a style at ``image_size`` (128 mm FOV).

    ``max_per_patient`` keeps at most that many evenly spaced slices of each patient;
    ``max_total`` then keeps at most that many evenly spaced slices of the whole split (slices
    are ordered by patient, so every patient keeps its share). Neighbouring axial slices are
    nearly identical, so even spacing loses little.
    """
    from ctxstyle.data import protocol_slices, scaled_protocol

    x, m, pid = protocol_slices(split, style, protocol=scaled_protocol(int(image_size)))
    keep = even_subsample(pid, max_per_patient)
    if max_total is not None and len(keep) > max_total:
        keep = keep[np.round(np.linspace(0, len(keep) - 1, int(max_total))).astype(int)]
    return x[keep], m[keep], pid[keep]


def build_training_sets(source: np.ndarray, masks: np.ndarray, plan, *, copies: Mapping[str, np.ndarray],
                        classical=None, on_the_fly: Mapping[str, object] | None = None) -> dict[str, TrainingSet]:
    """The training sets of the experiment from the source slices and precomputed copies.

    ``copies`` maps a set name (``ours``, ``adain``, ``contextual``, ``histmatch``, ``oracle``)
    to its (K, H, W) copies in plan order; ``classical`` is the on-the-fly augmentation, and
    ``on_the_fly`` those of the domain-generalisation baselines by set name (``nnunet_v2``,
    ``bigaug``, ``window_lut``, ``gin``, ``randconv``). Sets whose copies are missing are left out.
    """
    on_the_fly = dict(on_the_fly or {})
    copy_masks = masks[plan.content]
    sets = {"baseline": TrainingSet("baseline", source, masks, None, SET_LABELS["baseline"])}
    for name in TRAINING_SETS[1:]:
        if name == "classical":
            if classical is not None:
                sets[name] = TrainingSet(name, source, masks, classical, SET_LABELS[name])
            continue
        if name in on_the_fly:
            sets[name] = TrainingSet(name, source, masks, on_the_fly[name], SET_LABELS[name])
            continue
        if name in copies:
            c = np.asarray(copies[name], np.float32)
            if c.shape != copy_masks.shape:
                raise InputError(name, f"copies {c.shape} do not match the plan {copy_masks.shape}")
            sets[name] = TrainingSet(name, np.concatenate([source, c]), np.concatenate([masks, copy_masks]),
                                     None, SET_LABELS[name])
    return sets


def style_references(styles: Sequence[str], n: int, image_size: int, seed: int = 0,
                     patients: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """``n`` unlabelled reference slices per style (masks unused) at ``image_size`` with the 128 mm
    field of view, from ``patients`` (default: the protocol's style bank, i.e. the training patients;
    see :func:`ctxstyle.data.style_bank`)."""
    from ctxstyle.data import scaled_protocol, style_bank

    spacing = scaled_protocol(int(image_size)).spacing_mm
    return {s: style_bank(s, patients=patients, n=int(n), size=int(image_size), seed=int(seed), spacing_mm=spacing)
            for s in styles}


# --------------------------------------------------------------------------- training


def seg_loss(logits: Tensor, target: Tensor, dice_weight: float = 1.0, eps: float = 1.0) -> dict[str, Tensor]:
    """BCE with logits + ``dice_weight`` x (1 - soft Dice of the spine, pooled over the batch)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum() + eps) / (p.sum() + target.sum() + eps)
    return {"total": bce + dice_weight * (1 - dice), "bce": bce, "dice": dice}


def _fingerprint(images: np.ndarray, masks: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(images.shape).encode())
    h.update(np.round(np.clip(images, 0, 1) * 65535).astype(np.uint16).tobytes())
    h.update(np.asarray(masks, np.uint8).tobytes())
    return h.hexdigest()[:16]


def run_key(cfg: SegConfig, data: TrainingSet) -> str:
    """Hash of what defines the trained weights: config (without device/threads), data, augmentation."""
    d = cfg.to_dict()
    for volatile in ("device", "threads"):
        d.pop(volatile, None)
    aug = data.augment.to_dict() if data.augment is not None else None
    return content_hash({"format": FORMAT, "training": TRAINING_VERSION, "config": d,
                         "data": _fingerprint(data.images, data.masks), "augment": aug})


def _device(name: str) -> torch.device:
    from ctxstyle.train import resolve_device

    return resolve_device(name)


def train_unet(cfg: SegConfig, data: TrainingSet, *, checkpoints_dir: str | Path | None = None,
               name: str | None = None, progress: bool = True, force: bool = False) -> TrainedUNet:
    """Train a U-Net on ``data`` (or load the cached finished run); see the module docstring."""
    from tqdm.auto import tqdm

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    name = name or data.name
    path = None
    if checkpoints_dir is not None:
        path = Path(checkpoints_dir) / f"unet-{name}-{run_key(cfg, data)}" / "unet.pt"
        if path.is_file() and not force:
            state = read_checkpoint(path, FORMAT, ("model", "history", "seconds"))  # data only: never runs code
            net = cfg.build()
            net.load_state_dict(state["model"])
            return TrainedUNet(net.eval(), cfg, state["history"], str(path), state["seconds"], True)
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = cfg.build().to(device)
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_all = torch.from_numpy(np.ascontiguousarray(data.images, np.float32))[:, None]
    y_all = torch.from_numpy(np.ascontiguousarray(data.masks, np.float32))[:, None]
    n = len(x_all)
    stream = torch.empty(0, dtype=torch.long)
    history = []
    where = path.parent if path is not None else f"U-Net {name}"  # what a divergence names
    t_start = time.perf_counter()
    net.train()
    bar = tqdm(range(cfg.steps), disable=not progress, desc=f"U-Net {name} seed {cfg.seed}", leave=False)
    for step in bar:
        while len(stream) < cfg.batch_size:
            stream = torch.cat([stream, torch.randperm(n, generator=gen)])
        idx, stream = stream[:cfg.batch_size], stream[cfg.batch_size:]
        x, y = x_all[idx], y_all[idx]
        if data.augment is not None:
            x = data.augment(x, gen)
        x, y = x.to(device), y.to(device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        losses = seg_loss(net(x), y, cfg.dice_weight)
        if not torch.isfinite(losses["total"]):  # stopped before the step: never a cached NaN U-Net (Dice 0)
            raise TrainingDiverged(where, step + 1, f"the U-Net loss is {float(losses['total'].detach())}", lr)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        if not all(bool(torch.isfinite(p.grad).all()) for p in net.parameters() if p.grad is not None):
            raise TrainingDiverged(where, step + 1, "the U-Net's gradient is NaN or infinite", lr)
        opt.step()
        rec = {"step": step + 1, "loss": float(losses["total"].detach()), "bce": float(losses["bce"].detach()),
               "dice": float(losses["dice"].detach()), "lr": lr}
        history.append(rec)
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{rec['loss']:.3f}", dice=f"{rec['dice']:.3f}")
    seconds = time.perf_counter() - t_start
    net = net.to("cpu", memory_format=torch.contiguous_format).eval()
    if path is not None:
        write_checkpoint(path, {"format": FORMAT, "config": cfg.to_dict(), "set": name, "n_images": n,
                                "augment": data.augment.to_dict() if data.augment is not None else None,
                                "model": net.state_dict(), "history": history, "seconds": seconds,
                                "torch_threads": torch.get_num_threads()})  # what trained it (not in run_key)
    return TrainedUNet(net, cfg, history, str(path) if path else None, seconds, False)


def _train_unet_job(cfg: SegConfig, data: TrainingSet, checkpoints_dir: str, name: str) -> None:
    train_unet(cfg, data, checkpoints_dir=checkpoints_dir, name=name, progress=False)


def train_all(cfg: SegConfig, sets: Mapping[str, TrainingSet], seeds: Sequence[int], *,
              checkpoints_dir: str | Path | None = None, progress: bool = True,
              workers: int = 1) -> dict[tuple[str, int], TrainedUNet]:
    """Train (or load) one U-Net per (training set, seed) with otherwise identical settings
    (:func:`train_jobs` with the jobs ``(name, seed)``)."""
    return train_jobs(cfg, {(name, int(sd)): (name, sets[name], int(sd)) for name in sets for sd in seeds},
                      checkpoints_dir=checkpoints_dir, progress=progress, workers=workers)


def train_jobs(cfg: SegConfig, jobs: Mapping[Hashable, tuple[str, TrainingSet, int]], *,
               checkpoints_dir: str | Path | None = None, progress: bool = True,
               workers: int = 1) -> dict[Hashable, TrainedUNet]:
    """Train (or load) one U-Net per job ``key -> (run name, training set, seed)``, otherwise with
    ``cfg``; a run is cached under its name and :func:`run_key`.

    ``workers > 1`` (opt-in, needs ``checkpoints_dir``) first trains the runs side by side in that many
    processes with a share of this process's threads each, then loads them: the same runs, bit for
    bit those of a plain run at that thread count (``tests/experiments/test_segmentation.py``)."""
    from dataclasses import replace

    from tqdm.auto import tqdm

    from ctxstyle.experiments.parallel import call_recording_warnings, show_warnings, spawn_pool

    out = {}
    if int(workers) > 1:
        if checkpoints_dir is None:
            raise InputError("train_all", "workers > 1 needs a checkpoints_dir to hand the trained U-Nets back")
        threads = max(1, torch.get_num_threads() // int(workers))
        with spawn_pool(workers) as pool:
            futures = [pool.submit(call_recording_warnings, _train_unet_job, replace(cfg, seed=int(sd), threads=threads),
                                   data, str(checkpoints_dir), name) for name, data, sd in jobs.values()]
            for f in tqdm(futures, disable=not progress, desc="U-Nets"):
                show_warnings(f.result()[1])
    for key, (name, data, sd) in tqdm(list(jobs.items()), disable=not progress, desc="U-Nets"):
        out[key] = train_unet(replace(cfg, seed=int(sd)), data, checkpoints_dir=checkpoints_dir,
                              name=name, progress=progress)
    return out


def choose_unet_lr(cfg: SegConfig, data: TrainingSet, val_set: tuple, lrs: Sequence[float], *,
                   checkpoints_dir: str | Path | None = None, progress: bool = True) -> dict:
    """The U-Net learning rate, chosen on validation data: ``data`` (the baseline set) trained with
    ``cfg`` at each of ``lrs``, scored by Dice on ``val_set`` (``(images, masks, patients)``: the
    validation patient in the source style, so no target style takes part); the highest Dice wins
    (ties: the lower lr). Returns ``{"lr", "dice": {lr: val Dice}}``."""
    from dataclasses import replace

    from ctxstyle.experiments.recipe import best_lr, diverged_candidate, every_lr_diverged

    if not lrs:
        raise InputError("lrs", "needs at least one learning rate")
    dice, diverged = {}, 0
    for lr in lrs:
        try:
            run = train_unet(replace(cfg, lr=float(lr)), data, checkpoints_dir=checkpoints_dir, progress=progress)
        except TrainingDiverged as exc:  # scores NaN, which never wins
            dice[float(lr)], diverged = diverged_candidate(exc), diverged + 1
            continue
        rows = evaluate(run.net, {"val": val_set}, device=cfg.device)
        counts = {k: sum(r[k] for r in rows) for k in ("tp", "fp", "fn", "tn")}
        dice[float(lr)] = float(scores_from_counts(**counts)["dice"])
    if diverged == len(lrs):
        raise every_lr_diverged("U-Net training", lrs)
    return {"lr": best_lr(dice, higher_is_better=True), "dice": dice}


def evaluate_all(models: Mapping[tuple[str, int], TrainedUNet], test_sets: Mapping[str, tuple], *,
                 device: str = "cpu"):
    """:func:`evaluate` for every (training set, seed): one DataFrame row per
    (train_set, seed, style, patient)."""
    import pandas as pd

    rows = []
    for (name, sd), trained in models.items():
        for r in evaluate(trained.net, test_sets, device=device):
            rows.append({"train_set": name, "seed": sd, **r})
    return pd.DataFrame(rows)


@torch.no_grad()
def predict(net: UNet, images: np.ndarray, batch_size: int = 128, device: str = "cpu") -> np.ndarray:
    """Spine probabilities (N, H, W) float32 for images (N, H, W) in [0, 1]."""
    dev = _device(device)
    fmt = torch.channels_last if dev.type == "cpu" else torch.contiguous_format  # ~2x faster on CPU
    net = net.to(dev, memory_format=fmt).eval()
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None]
    out = [torch.sigmoid(net(chunk.to(dev).contiguous(memory_format=fmt))).cpu() for chunk in x.split(batch_size)]
    net.to("cpu", memory_format=torch.contiguous_format)
    return torch.cat(out)[:, 0].contiguous().numpy()


def evaluate(net: UNet, test_sets: Mapping[str, tuple], *, device: str = "cpu",
             batch_size: int = 128) -> list[dict]:
    """Confusion counts and scores per (style, test patient).

    ``test_sets`` maps a style to ``(images, masks, patients)``. Returns one row per
    (style, patient): ``style``, ``patient``, ``n_slices``, ``tp``, ``fp``, ``fn``, ``tn`` and
    the scores of :func:`ctxstyle.metrics.segmentation.scores_from_counts`.
    """
    rows = []
    for style, (x, m, pid) in test_sets.items():
        pred = predict(net, x, batch_size, device) > 0.5
        gt = m > 0
        for p in dict.fromkeys(pid.tolist()):
            sel = pid == p
            counts = confusion_counts(pred[sel], gt[sel])
            rows.append({"style": style, "patient": p, "n_slices": int(sel.sum()), **counts,
                         **scores_from_counts(**counts)})
    return rows


# --------------------------------------------------------------------------- summaries

METRIC_NAMES = {"pa": "PA", "miou": "mIoU", "dice": "Dice"}


def held_out_frame(raw_seen, raw_retrained: Mapping[str, object], source_style: str):
    """The held-out-style evaluation as one frame of :func:`evaluate_all` rows (plus ``held_out``).

    ``raw_retrained[h]`` holds the rows of the exemplar-using sets retrained without style ``h``,
    evaluated on ``h`` and the source style. Sets that see no target-style image (baseline,
    classical, the domain-generalisation baselines) take their rows on ``h`` and the source style from
    ``raw_seen``: for them every style is held out. An exemplar-using set that was not retrained
    is left out (its seen-setting model saw ``h``). Each target style's rows then come from the
    models that never saw it, so :func:`table2` and :func:`paired_vs_baseline` apply unchanged; the
    source-style rows are those of every rotation (pooled)."""
    import pandas as pd

    frames, runs = [], {}
    free = raw_seen[~raw_seen["train_set"].isin(EXEMPLAR_SETS)]
    for h, d in raw_retrained.items():
        bad = sorted(set(d["train_set"]) - set(EXEMPLAR_SETS))
        if bad:
            raise InputError("held_out", f"sets {bad} see no target style: they need no retraining")
        other = sorted(set(d["style"]) - {h, source_style})
        if other:  # those rows would come from models that saw the style
            raise InputError("held_out", f"the models retrained without {h!r} may be scored on {h!r} and "
                                         f"{source_style!r} only, not on {other}")
        runs[h] = set(zip(d["train_set"], d["seed"]))
        frames.append(pd.concat([free[free["style"].isin([h, source_style])], d]).assign(held_out=h))
    if len({frozenset(r) for r in runs.values()}) > 1:
        raise InputError("held_out", "every held-out style needs the same retrained (set, seed) runs")
    out = pd.concat(frames, ignore_index=True)
    order = [s for s in dict.fromkeys(raw_seen["train_set"]) if s in set(out["train_set"])]
    out["train_set"] = pd.Categorical(out["train_set"], order, ordered=True)
    out = out.sort_values(["train_set", "held_out", "seed"], kind="stable")
    out["train_set"] = out["train_set"].astype(str)
    return out.reset_index(drop=True)


def pooled_scores(df, by: Sequence[str]):
    """Sum the confusion counts within groups, then recompute the scores (pooled definition)."""
    import pandas as pd

    g = df.groupby(list(by), sort=False)[["tp", "fp", "fn", "tn"]].sum().reset_index()
    scores = pd.DataFrame([scores_from_counts(r.tp, r.fp, r.fn, r.tn) for r in g.itertuples()])
    return pd.concat([g, scores], axis=1)


def per_seed_scores(df, source_style: str, target_styles: Sequence[str]):
    """Per (train_set, seed): scores on the source style and the mean over target styles, each
    style's scores pooled over the test patients."""
    per_style = pooled_scores(df, ["train_set", "seed", "style"])
    src = per_style[per_style["style"] == source_style].set_index(["train_set", "seed"])
    tgt = per_style[per_style["style"].isin(target_styles)].groupby(["train_set", "seed"], sort=False)
    tgt = tgt[["pa", "miou", "dice"]].mean()
    out = src[["pa", "miou", "dice"]].add_prefix("source_").join(tgt.add_prefix("target_"))
    return out.reset_index()


def _ms(values) -> str:
    v = np.asarray(values, float)
    return f"{100 * v.mean():.2f} ± {100 * v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


def paired_vs_baseline(df, target_styles: Sequence[str], metric: str = "dice", baseline: str = "baseline",
                       n_boot: int = 10000, seed: int = 0):
    """Paired comparison of every training set against the baseline on the target styles.

    The pairs are (seed, target style, test patient) evaluation sets, each scored on its pooled
    confusion matrix; reports the mean difference (percentage points), a 95% paired bootstrap CI
    and the Wilcoxon signed-rank p value (see :func:`paired_comparison`). The pairs share seeds
    and patients, so they are not independent: read p as descriptive.
    """
    import pandas as pd

    d = df[df["style"].isin(target_styles)]
    key = ["seed", "style", "patient"]
    base = d[d["train_set"] == baseline].set_index(key)[metric]
    rows = []
    for name in dict.fromkeys(d["train_set"]):
        if name == baseline:
            continue
        other = d[d["train_set"] == name].set_index(key)[metric]
        common = base.index.intersection(other.index)
        r = paired_comparison(other.loc[common].to_numpy(), base.loc[common].to_numpy(), n_boot=n_boot, seed=seed)
        rows.append({"train_set": name, "metric": metric, **r})
    out = pd.DataFrame(rows)
    for c in ("mean_diff", "ci_low", "ci_high"):
        out[c] = 100 * out[c]
    return out


def table2(df, source_style: str, target_styles: Sequence[str], baseline: str = "baseline",
           n_boot: int = 10000, labels: Mapping[str, str] | None = None):
    """The Table 2 analogue: per training set, PA / mIoU / Dice (%, mean ± SD over seeds, named in
    the ``±`` column) on the
    source style and averaged over the target styles, plus the paired difference to the
    baseline on the target styles (Dice and mIoU, percentage points, 95% bootstrap CI, Wilcoxon p).
    ``labels`` overrides row labels (default :data:`SET_LABELS`)."""
    import pandas as pd

    ps = per_seed_scores(df, source_style, target_styles)
    pd_dice = paired_vs_baseline(df, target_styles, "dice", baseline, n_boot).set_index("train_set")
    pd_miou = paired_vs_baseline(df, target_styles, "miou", baseline, n_boot).set_index("train_set")
    rows = []
    for name in dict.fromkeys(ps["train_set"]):
        s = ps[ps["train_set"] == name]
        row = {"training set": set_label(name, labels), "key": name, "seeds": len(s), "±": "SD over seeds"}
        for dom in ("source", "target"):
            for m, label in METRIC_NAMES.items():
                row[f"{label} {dom} (%)"] = _ms(s[f"{dom}_{m}"])
        for m, pdf in (("Dice", pd_dice), ("mIoU", pd_miou)):
            if name in pdf.index:
                r = pdf.loc[name]
                row[f"Δ{m} target vs baseline (pp) [95% CI]"] = f"{r.mean_diff:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
                row[f"Wilcoxon p ({m})"] = f"{r.wilcoxon_p:.2g}"
            else:
                row[f"Δ{m} target vs baseline (pp) [95% CI]"] = "-"
                row[f"Wilcoxon p ({m})"] = "-"
        rows.append(row)
    return pd.DataFrame(rows)


def style_breakdown(df, metric: str = "dice", labels: Mapping[str, str] | None = None):
    """Mean ± SD over seeds (named in the ``±`` column) of ``metric`` (%) per training set (rows)
    and style (columns), each style's score pooled over the test patients; ``labels`` overrides
    row labels."""
    per_style = pooled_scores(df, ["train_set", "seed", "style"])
    wide = per_style.groupby(["train_set", "style"], sort=False)[metric].agg(lambda v: _ms(v)).unstack("style")
    styles = list(dict.fromkeys(df["style"]))
    sets = list(dict.fromkeys(df["train_set"]))
    wide = wide.loc[sets, styles]
    wide.index = [set_label(s, labels) for s in wide.index]
    wide.insert(0, "±", "SD over seeds")
    return wide.rename_axis("training set").reset_index()


def patient_breakdown(df, target_styles: Sequence[str], metric: str = "dice"):
    """Mean over seeds and target styles of ``metric`` (%) per training set and test patient
    (plus the source style), i.e. separate results for verse014 (manual labels) and totalseg
    (model labels)."""
    d = df.copy()
    d["domain"] = np.where(d["style"].isin(target_styles), "target", "source")
    g = d.groupby(["train_set", "patient", "domain"], sort=False)[metric].mean().mul(100).round(2)
    wide = g.unstack(["patient", "domain"])
    wide.columns = [f"{p} {dom}" for p, dom in wide.columns]
    wide = wide.loc[list(dict.fromkeys(df["train_set"]))]
    wide.index = [set_label(s) for s in wide.index]
    return wide.rename_axis("training set").reset_index()


def conclusion_markdown(df, source_style: str, target_styles: Sequence[str], baseline: str = "baseline",
                        oracle: str = "oracle", n_boot: int = 10000) -> str:
    """A plain-language conclusion generated from the measured numbers (words: :mod:`.wording`)."""
    from ctxstyle.experiments.wording import table2_conclusion

    ps = per_seed_scores(df, source_style, target_styles)
    mean = ps.groupby("train_set", sort=False)[["source_dice", "target_dice", "target_miou", "target_pa"]].mean() * 100
    pdice = paired_vs_baseline(df, target_styles, "dice", baseline, n_boot).set_index("train_set")
    per_style = pooled_scores(df, ["train_set", "seed", "style"])
    by_style = per_style.groupby(["train_set", "style"], sort=False)["dice"].mean().unstack("style") * 100
    return table2_conclusion(mean, pdice, by_style, target_styles, baseline, oracle)


# --------------------------------------------------------------------------- figure


def prediction_figure(models: Mapping[str, UNet] | Sequence[Mapping[str, UNet]],
                      examples: Sequence[tuple[str, np.ndarray, np.ndarray]], device: str = "cpu"):
    """Fig 7 analogue: rows = test slices (``(title, image, mask)``), columns = the image, the
    ground truth and each model's prediction (spine in red over the image, Dice in the title).
    ``models``: one mapping for every row, or one per row with the same names (e.g. the models
    that never saw the row's style)."""
    import matplotlib.pyplot as plt

    per_row = [models] * len(examples) if isinstance(models, Mapping) else list(models)
    if len(per_row) != len(examples) or any(list(m) != list(per_row[0]) for m in per_row):
        raise InputError("models", "give one mapping, or one per example row with the same names")
    ncol = 2 + len(per_row[0])
    fig, axes = plt.subplots(len(examples), ncol, figsize=(1.9 * ncol, 2.0 * len(examples)), squeeze=False)
    for r, (title, img, mask) in enumerate(examples):
        preds = {k: predict(net, img[None], device=device)[0] > 0.5 for k, net in per_row[r].items()}
        panels = [("image", None), ("ground truth", mask > 0)] + list(preds.items())
        for c, (name, overlay) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            label = name
            if overlay is not None:
                rgba = np.zeros((*img.shape, 4), np.float32)
                rgba[overlay] = (1.0, 0.1, 0.1, 0.55)
                ax.imshow(rgba)
                if c >= 2:
                    tp = np.count_nonzero(overlay & (mask > 0))
                    den = overlay.sum() + (mask > 0).sum()
                    label = f"{name}\nDice {2 * tp / den:.2f}" if den else name
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 or c >= 2:
                ax.set_title(label, fontsize=7)
            if c == 0:
                ax.set_ylabel(title, fontsize=7)
    fig.tight_layout()
    return fig


def held_out_conclusion_markdown(raw_seen, raw_held_out, source_style: str, target_styles: Sequence[str],
                                 hard_styles: Sequence[str] = (), baseline: str = "baseline",
                                 cheap: str = "window_lut", n_boot: int = 10000) -> str:
    """The held-out evaluation's conclusion (words: :func:`ctxstyle.experiments.wording.held_out_conclusion`),
    computed from the rows of :func:`held_out_frame` (``raw_held_out``) and of the seen setting
    (``raw_seen``, which also holds the hard styles' rows): per-set means, paired changes vs the
    baseline and vs ``cheap``, the cheap intensity augmentation named before any held-out score
    existed (default: random window + monotone LUT; not picked on these scores), and each
    exemplar-using set's held-out minus seen Dice on the same (seed, style, patient)."""
    import pandas as pd

    from ctxstyle.experiments.wording import held_out_conclusion

    def summary(df, styles):
        ps = per_seed_scores(df, source_style, styles)
        mean = ps.groupby("train_set", sort=False)[["source_dice", "target_dice"]].mean() * 100
        vs_cheap = (paired_vs_baseline(df, styles, "dice", cheap, n_boot).set_index("train_set")
                    if cheap in mean.index else pd.DataFrame())
        return mean, vs_cheap

    mean, vs_cheap = summary(raw_held_out, target_styles)
    pdice = paired_vs_baseline(raw_held_out, target_styles, "dice", baseline, n_boot).set_index("train_set")
    retrained = [s for s in EXEMPLAR_SETS if s in set(raw_held_out["train_set"])]
    drops = []
    for s in retrained:
        pair = pd.concat([raw_seen[raw_seen["train_set"] == s],
                          raw_held_out[raw_held_out["train_set"] == s].assign(train_set=f"{s} (held out)")])
        r = paired_vs_baseline(pair, target_styles, "dice", s, n_boot).set_index("train_set").loc[f"{s} (held out)"]
        drops.append(r.rename(s))
    drops = pd.DataFrame(drops)
    hard = None
    if len(hard_styles):
        hraw = raw_seen[raw_seen["style"].isin([source_style, *hard_styles])]
        hard = (*summary(hraw, hard_styles), tuple(hard_styles))
    return held_out_conclusion(mean, pdice, vs_cheap, drops, cheap, target_styles, hard, baseline)

"""The training recipe every notebook and the CLI share: a reconstruction warm start, then per-method
fine-tuning with a decaying learning rate chosen on validation, over several seeds, with go/no-go
gates on the validation patient.

1. **Warm start** (one per backbone and AdaIN layer, cached by config hash): a decoder trained to
   reconstruct the slice from its own features, G = D(E(X)), pixel L1 to X (``method=
   "reconstruction"``), on random ``crop_size`` crops of the training slices in the source and
   every target style (so that it can draw every gray scale; ``target_styles`` narrows the styles
   every step sees), a linear lr warm-up over the first
   ``warmup_fraction`` of the steps (without it Adam's first full-lr steps knock the fresh decoder
   off course and gate A came to depend on the initialisation), then cosine decay. The same weights start
   every method, which keeps the comparison fair.
2. **Gate A, the decoder family can carry the anatomy** (must pass): the warm start at alpha = 0
   reaches edge SSIM >= :data:`GATE_EDGE_SSIM` and bone Dice (rank) >= :data:`GATE_BONE_DICE` on
   the validation patient's whole slices. A recipe whose warm start fails this is not working, and
   nothing downstream is a property of a method.
3. **Fine-tuning**: each method (``ctxstyle.experiments.presets.METHODS``) from the warm start for
   ``iterations`` steps with the same warm-up and a cosine decay to zero; its learning rate is the candidate of
   ``lrs`` with the lowest validation LPIPS to the ideal output at seed 0 (each method gets its own
   lr); then the chosen lr is trained with every seed of ``seeds`` (the seed draws the crops and the
   style images; the warm start is shared).
4. **Gate B, each method trained to convergence** (:func:`plateaued`): the mean total loss over
   the last fifth of the steps is within :data:`PLATEAU_TOLERANCE` of the mean over the fifth
   before it (relative, either way). A method's anatomy is then an outcome, reported, not gated.

The spread over decoder seeds is that of the fine-tuning only: every seed starts from the same
warm start, and the learning rate is the one chosen with the first seed.

Everything here is decided on the validation patient; no test slice is touched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from ctxstyle.errors import InputError, TrainingDiverged
from ctxstyle.store import atomic_write
from ctxstyle.experiments import presets
from ctxstyle.experiments.presets import METHODS, run_dir, train_or_load
from ctxstyle.train import config_key
from ctxstyle.train import TrainConfig, check_field, read_yaml_mapping

#: Gate A thresholds (the decoder issue's go/no-go, on the validation patient at alpha = 0).
GATE_EDGE_SSIM = 0.6
GATE_BONE_DICE = 0.85
#: Gate B: relative change of the mean loss between the last two fifths of a run.
PLATEAU_TOLERANCE = 0.05
#: ``Recipe.precision`` values.
PRECISIONS = ("fp32", "bf16", "auto")
#: Ranges of the recipe's numeric fields (:func:`ctxstyle.train.check_field`).
_POSITIVE = ("image_size", "crop_size", "batch_size", "warm_iterations", "warm_lr", "iterations", "style_bank_size",
             "lrs", "val_pairs")
_NON_NEGATIVE = ("warmup_fraction", "seeds")


@dataclass(frozen=True)
class Recipe:
    """The knobs of the recipe (a profile sets them; see ``reproduce/profiles.yaml``)."""

    encoder: str = "vgg19"
    adain_layer: str = "relu3_1"
    image_size: int = 128  # whole slices (1 mm per pixel over the 128 mm field of view): evaluation
    crop_size: int = 64  # random training crops of those slices
    batch_size: int = 8
    warm_iterations: int = 1000
    warm_lr: float = 1e-3
    warmup_fraction: float = 0.05  # linear lr warm-up over this share of every run's steps
    iterations: int = 200  # fine-tuning steps per method and seed
    style_bank_size: int = 320  # style images whose statistics a fine-tuning run draws from
    lrs: tuple[float, ...] = (3e-4, 1e-3)
    seeds: tuple[int, ...] = (0, 1, 2)
    val_pairs: int | None = 16  # validation contents (x every target style) for lr choice and gates
    device: str = "auto"
    #: Training arithmetic: "fp32"; "bf16" (bf16 autocast, ``TrainConfig.bf16``); "auto": bf16 on
    #: CPUs with bf16 units (AVX512-BF16 or AMX; :func:`bf16_units`), fp32 elsewhere. bf16 runs are
    #: other runs (other config hashes); ``python -m reproduce.precision`` measures how far they move.
    precision: str = "fp32"
    #: The backbone's layers for the style losses (None: VGG's relu1_1..relu4_1 and relu3_1 + relu4_1);
    #: other backbones name theirs (``ctxstyle.backbones.ENCODER_LAYERS``).
    style_layers: tuple[str, ...] | None = None
    cx_style_layers: tuple[str, ...] | None = None
    #: The target styles the decoders see (the warm start's renderings, the style bank, the
    #: validation renderings of the lr choice); None: every target style of the protocol. A subset
    #: trains decoders blind to the other styles (``python -m reproduce.blind_decoders``).
    target_styles: tuple[str, ...] | None = None

    def __post_init__(self):
        for f in fields(self):  # types and ranges: the validator of TrainConfig
            object.__setattr__(self, f.name, check_field(f.name, str(f.type), getattr(self, f.name), _POSITIVE,
                                                         _NON_NEGATIVE))
        if self.crop_size > self.image_size:
            raise InputError("crop_size", f"{self.crop_size} is larger than image_size {self.image_size}")
        if not 0.0 <= float(self.warmup_fraction) < 1.0:
            raise InputError("warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction}")
        if not self.lrs or not self.seeds:
            raise InputError("recipe", "needs at least one learning rate and one seed")
        if self.precision not in PRECISIONS:
            raise InputError("precision", f"{self.precision!r} is not one of {PRECISIONS}")
        if self.target_styles is not None:
            from ctxstyle.data import TARGET_STYLES

            unknown = [s for s in self.target_styles if s not in TARGET_STYLES]
            if unknown or not self.target_styles or len(set(self.target_styles)) < len(self.target_styles):
                raise InputError("target_styles", f"{list(self.target_styles)} must be distinct target styles of "
                                                  f"{list(TARGET_STYLES)}, at least one")
            # in the protocol's order; every target style is the default (one name per run)
            kept = tuple(s for s in TARGET_STYLES if s in self.target_styles)
            object.__setattr__(self, "target_styles", None if kept == tuple(TARGET_STYLES) else kept)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        """A recipe from a YAML mapping of its fields (unknown or mistyped fields are an InputError)."""
        path = Path(path)
        raw = read_yaml_mapping(path, "recipe")
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(path, f"unknown recipe field(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise InputError(path, f"invalid recipe: {exc}") from exc

    @classmethod
    def from_record(cls, recorded: Mapping, source: str | Path, *, check_arithmetic: bool = True) -> Recipe:
        """The recipe a run recorded (:meth:`to_dict` in its ``records/*.json``), for checks that
        train or load the same runs; InputError naming ``source`` when it is not a recipe of this
        version, or (``check_arithmetic``) when this machine would resolve its ``precision`` to the
        other arithmetic than the recorded ``bf16`` (bf16 runs are other runs: compare on a machine
        of the same kind)."""
        if not isinstance(recorded, Mapping):
            raise InputError(source, f"the recorded recipe is a {type(recorded).__name__}, not a mapping of its fields")
        fields_ = {k: v for k, v in recorded.items() if k != "bf16"}
        unknown = sorted(set(fields_) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(source, f"unknown recipe field(s) {unknown} in the recorded recipe")
        try:
            recipe = cls(**fields_)
        except (InputError, TypeError, ValueError) as exc:
            raise InputError(source, f"invalid recorded recipe: {exc}") from None
        if check_arithmetic and "bf16" in recorded and uses_bf16(recipe) != bool(recorded["bf16"]):
            was, here = ("bf16", "float32") if recorded["bf16"] else ("float32", "bf16")
            raise InputError(source, f"its decoders trained in {was}; this machine would train them in {here} "
                                     f"(precision {recipe.precision!r}): compare on a machine of the same kind")
        return recipe

    def with_backbone(self, encoder: str, adain_layer: str, style_layers: Sequence[str] | None = None,
                      cx_style_layers: Sequence[str] | None = None) -> Recipe:
        """The same recipe for another backbone or AdaIN layer."""
        return replace(self, encoder=encoder, adain_layer=adain_layer, style_layers=style_layers,
                       cx_style_layers=cx_style_layers)

    def to_dict(self) -> dict:
        """The fields, plus ``bf16``: the ``precision`` as resolved on this machine (for run records)."""
        d = asdict(self)
        return {**{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}, "bf16": uses_bf16(self)}


def bf16_units() -> bool:
    """Whether this CPU has bf16 arithmetic units (AVX512-BF16 or AMX), where bf16 autocast is fast;
    elsewhere torch emulates bf16, many times slower than float32. False where oneDNN is capped
    below them (:func:`ctxstyle.cpu_isa.bf16_capped`)."""
    import torch

    from ctxstyle.cpu_isa import bf16_capped

    if bf16_capped():
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def uses_bf16(recipe: Recipe) -> bool:
    """The recipe's ``precision`` resolved on this machine ("auto": :func:`bf16_units`; on a CUDA
    device "auto" stays float32)."""
    if recipe.precision == "auto":
        from ctxstyle.train import resolve_device

        return resolve_device(recipe.device).type == "cpu" and bf16_units()
    return recipe.precision == "bf16"


def _shared(recipe: Recipe) -> dict:
    layers = {k: getattr(recipe, k) for k in ("style_layers", "cx_style_layers") if getattr(recipe, k) is not None}
    return {"encoder": recipe.encoder, "adain_layer": recipe.adain_layer, "image_size": recipe.crop_size,
            "batch_size": recipe.batch_size, "lr_schedule": "cosine", "device": recipe.device,
            "data_kwargs": {"load_size": recipe.image_size}, "bf16": uses_bf16(recipe), **layers}


def _warmup(recipe: Recipe, iterations: int) -> int:
    return int(round(recipe.warmup_fraction * iterations))


def _training_styles(recipe: Recipe, source: bool) -> str:
    """The ``protocol:train:...`` spec of the recipe's target styles (with the source style): ``all`` or
    ``targets`` without the styles the recipe leaves out, each kept style rendered as in the full set."""
    spec = "protocol:train:all" if source else "protocol:train:targets"
    if recipe.target_styles is None:
        return spec
    from ctxstyle.data import TARGET_STYLES

    return "-".join([spec, *(s for s in TARGET_STYLES if s not in recipe.target_styles)])


def warm_start_config(recipe: Recipe) -> TrainConfig:
    """The reconstruction run that initialises every method of ``recipe``'s backbone and layer."""
    shared = {k: v for k, v in _shared(recipe).items() if k not in ("style_layers", "cx_style_layers")}
    return TrainConfig(method="reconstruction", iterations=recipe.warm_iterations, lr=recipe.warm_lr,
                       warmup_steps=_warmup(recipe, recipe.warm_iterations), seed=0,
                       content_data=_training_styles(recipe, source=True),
                       style_data=_training_styles(recipe, source=False), **shared)  # (unused by a reconstruction)


def warm_start_dir(recipe: Recipe, checkpoints_dir: str | Path) -> Path:
    """The folder the recipe's warm start is cached in (whether or not it is trained yet)."""
    return run_dir(warm_start_config(recipe), checkpoints_dir, _warm_name(recipe))


def _warm_name(recipe: Recipe) -> str:
    return f"warm-{recipe.encoder}-{recipe.adain_layer}"


def warm_start(recipe: Recipe, checkpoints_dir: str | Path, *, progress: bool = True):
    """The trained (or cached) warm-start decoder as a ``Stylizer``."""
    return train_or_load(warm_start_config(recipe), checkpoints_dir, _warm_name(recipe), progress=progress)


def method_config(method: str, recipe: Recipe, *, lr: float, seed: int, init_decoder: str) -> TrainConfig:
    """``method``'s fine-tuning run: its loss presets (``METHODS``), the recipe's data and schedule.

    The contextual content loss is taken at the AdaIN layer (where the decoder's input lives);
    the contextual transformation's style term keeps its relu3_1 + relu4_1.
    """
    if method not in METHODS:
        raise InputError("method", f"unknown method {method!r}; choose from {sorted(METHODS)}")
    preset = {"method": method, **{k: v for k, v in METHODS[method].items() if k != "lr"}}
    if "content_layers" in preset:
        preset["content_layers"] = (recipe.adain_layer,)
    return TrainConfig(**{**preset, **_shared(recipe)}, iterations=recipe.iterations, lr=float(lr), seed=int(seed),
                       warmup_steps=_warmup(recipe, recipe.iterations),
                       init_decoder=str(init_decoder), style_bank_size=recipe.style_bank_size,
                       style_data=_training_styles(recipe, source=False))


def plateaued(history: Sequence[dict], tolerance: float = PLATEAU_TOLERANCE) -> dict:
    """Gate B: whether the mean total loss of the last fifth of a run is within ``tolerance``
    (relative, either way) of the fifth before: neither still falling nor rising.

    Under a cosine decay the last fifth runs at <= 10 % of the peak learning rate, so this mainly
    catches a run that is still improving or diverging at its end; it is a weak check of
    convergence, stated as such in the notebooks."""
    total = np.array([h["total"] if "total" in h else h["content"] for h in history], dtype=float)
    k = len(total) // 5
    if k < 1:
        return {"plateaued": False, "last_fifth": float("nan"), "previous_fifth": float("nan"), "change": float("nan")}
    last, prev = total[-k:].mean(), total[-2 * k:-k].mean()
    change = float((prev - last) / max(abs(prev), 1e-12))
    return {"plateaued": bool(np.isfinite(change) and abs(change) <= tolerance), "last_fifth": float(last),
            "previous_fifth": float(prev), "change": change}


def reconstruction_scores(stylizer, pairs) -> dict:
    """Gate A's numbers: the decoder at alpha = 0 (no style) on ``pairs``' contents."""
    import torch

    from ctxstyle.metrics.anatomy import bone_overlap, edge_ssim, gray_threshold

    with torch.inference_mode():
        out = stylizer(torch.from_numpy(pairs.content[:, None]), torch.from_numpy(pairs.content[:1, None]),
                       alpha=0.0)[:, 0].clamp(0, 1).numpy()
    thr = gray_threshold(pairs.source_style)
    ssim = float(np.mean(edge_ssim(pairs.content, out)))
    dice = float(np.mean(bone_overlap(pairs.content, out, thr, None)["dice"]))
    return {"edge_ssim": ssim, "bone_dice_rank": dice, "l1": float(np.abs(out - pairs.content).mean()),
            "passed": bool(ssim >= GATE_EDGE_SSIM and dice >= GATE_BONE_DICE), "n": len(pairs)}


def val_pairs(recipe: Recipe, seed: int = 0):
    """The validation pairs of the recipe (whole slices of the validation patient)."""
    from ctxstyle.experiments.style_transfer import pair_set

    return pair_set("val", recipe.image_size, n=recipe.val_pairs, styles=recipe.target_styles, seed=seed)


def val_score(stylizer, pairs, cache: Path) -> float:
    """Mean validation LPIPS to the ideal output (cached beside the checkpoint)."""
    key = f"lpips_truth-val-{pairs.image_size}-{len(pairs)}-{','.join(pairs.styles)}"
    scores = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in scores:
        from ctxstyle.experiments.style_transfer import evaluate, method_outputs

        outputs, _ = method_outputs(pairs, {"m": stylizer}, include=(), timing_pairs=0)
        scores[key] = float(evaluate(pairs, outputs)["lpips_truth"].mean())
        atomic_write(cache, lambda tmp: tmp.write_text(json.dumps(scores, indent=1)))
    return scores[key]


def choose_lr(method: str, recipe: Recipe, checkpoints_dir: str | Path, *, progress: bool = True) -> dict:
    """Train ``method`` at seed ``recipe.seeds[0]`` with each candidate lr and keep the one with the
    lowest validation LPIPS to the ideal output. Returns ``{"lr", "scores": {lr: score}, "stylizers"}``;
    a candidate whose training diverged scores NaN (with a warning) and has no stylizer."""
    init = warm_start(recipe, checkpoints_dir, progress=progress).checkpoint
    pairs = val_pairs(recipe)
    scores, stylizers = {}, {}
    for lr in recipe.lrs:
        cfg = method_config(method, recipe, lr=lr, seed=recipe.seeds[0], init_decoder=init)
        try:
            st = train_or_load(cfg, checkpoints_dir, method, progress=progress)
        except TrainingDiverged as exc:
            scores[lr] = diverged_candidate(exc)
            continue
        scores[lr] = val_score(st, pairs, Path(st.checkpoint).parent / "val_scores.json")
        stylizers[lr] = st
    if not stylizers:
        raise every_lr_diverged(f"training {method}", recipe.lrs)
    return {"lr": best_lr(scores), "scores": scores, "stylizers": stylizers}


def diverged_candidate(exc: TrainingDiverged) -> float:
    """A candidate lr whose run diverged: a warning, and the score that never wins in :func:`best_lr`
    (NaN). With :func:`every_lr_diverged`, part of the one rule of every lr choice."""
    import warnings

    warnings.warn(f"{exc} (counted as a failed lr candidate)", stacklevel=3)
    return float("nan")


def every_lr_diverged(what: str, lrs: Sequence[float]) -> InputError:
    """The error when ``what`` (e.g. "training ours") diverged at every candidate of ``lrs``."""
    return InputError("lrs", f"{what} diverged at every candidate learning rate {list(lrs)}")


def best_lr(scores: dict, *, higher_is_better: bool = False) -> float:
    """The learning-rate candidate with the best validation score: the lowest (``higher_is_better``:
    the highest); a non-finite score never wins; ties: the lower lr. The one rule of every lr choice
    (decoders here, U-Nets in :func:`ctxstyle.experiments.segmentation.choose_unet_lr`)."""
    sign = -1.0 if higher_is_better else 1.0
    return min(scores, key=lambda lr: (sign * scores[lr] if np.isfinite(scores[lr]) else np.inf, lr))


def trained_decoders(method: str, recipe: Recipe, checkpoints_dir: str | Path, *, seeds: Sequence[int] | None = None,
                     progress: bool = True) -> dict:
    """``{seed: Stylizer}`` of ``method`` at its validation-chosen lr (trained once, cached)."""
    choice = choose_lr(method, recipe, checkpoints_dir, progress=progress)
    init = warm_start(recipe, checkpoints_dir, progress=False).checkpoint
    out = {}
    for seed in (recipe.seeds if seeds is None else seeds):
        if seed == recipe.seeds[0]:
            out[seed] = choice["stylizers"][choice["lr"]]
            continue
        cfg = method_config(method, recipe, lr=choice["lr"], seed=seed, init_decoder=init)
        out[seed] = train_or_load(cfg, checkpoints_dir, method, progress=progress)
    return out


def decoder_key(recipe: Recipe) -> str:
    """The config hash of the recipe's warm start (names its backbone's decoder family)."""
    return config_key(warm_start_config(recipe))


def train_in_parallel(plan: Sequence[tuple[Recipe, Sequence[str]]], checkpoints_dir: str | Path, *,
                      workers: int = 2, threads: int = 1, progress: bool = True) -> dict:
    """Train every run that ``plan`` needs into the cache, side by side (an opt-in speed path).

    ``plan`` lists ``(recipe, methods)``: each recipe's warm start, then for each method the runs of
    :func:`trained_decoders` (every candidate lr at the first seed; the lr chosen on the same
    validation scores as :func:`choose_lr`; that lr at every seed). The runs go to
    :class:`ctxstyle.experiments.parallel.TrainingPool` (``workers`` processes of ``threads`` threads) as soon as
    what they start from is ready. Same configs, same checkpoint folders: the plain functions called
    afterwards load these runs instead of training them. Returns ``{"runs", "seconds"}``.
    """
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from ctxstyle.experiments.parallel import TrainingPool
    from ctxstyle.stylize import Stylizer

    t0, scoring = time.perf_counter(), threading.Lock()

    def report(future, what):
        def note(f):
            if progress and not f.cancelled() and f.exception() is None:
                print(f"  trained or found {what} ({time.perf_counter() - t0:.0f} s)", flush=True)
        future.add_done_callback(note)
        return future

    with TrainingPool(workers, threads) as pool:
        def method_runs(recipe: Recipe, method: str, warm) -> None:
            init = warm.result()
            def run(lr, seed):
                cfg = method_config(method, recipe, lr=lr, seed=seed, init_decoder=init)
                return report(pool.train(cfg, checkpoints_dir, method), f"{method} lr {lr:g} seed {seed}")
            first = {lr: run(lr, recipe.seeds[0]) for lr in recipe.lrs}
            scores, finished = {}, 0
            for cand, future in first.items():  # each scored as it ends; as in choose_lr, a diverged one scores NaN
                try:
                    checkpoint = future.result()
                except TrainingDiverged as exc:
                    scores[cand] = diverged_candidate(exc)
                    continue
                finished += 1
                if len(recipe.lrs) > 1:
                    st = Stylizer.from_checkpoint(checkpoint, fast=presets.FAST)
                    with scoring:  # one validation scoring at a time beside the workers
                        scores[cand] = val_score(st, val_pairs(recipe), Path(st.checkpoint).parent / "val_scores.json")
            if not finished:
                raise every_lr_diverged(f"training {method}", recipe.lrs)
            lr = best_lr(scores) if len(recipe.lrs) > 1 else recipe.lrs[0]
            for future in [run(lr, seed) for seed in recipe.seeds]:
                future.result()

        jobs = []
        with ThreadPoolExecutor(max(1, sum(len(m) for _, m in plan))) as coordinators:
            for recipe, methods in plan:
                warm = report(pool.train(warm_start_config(recipe), checkpoints_dir, _warm_name(recipe)),
                              _warm_name(recipe))
                jobs.append(warm)
                jobs += [coordinators.submit(method_runs, recipe, m, warm) for m in methods]
            for job in jobs:
                job.result()
        runs = len(pool)
    return {"runs": runs, "seconds": time.perf_counter() - t0}

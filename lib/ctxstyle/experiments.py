"""Shared experiment plumbing for the notebooks: method presets and cached decoder training.

The three methods of the paper's comparison (Table 1) differ only in the training loss; they
share the encoder, data, iterations and seed:

| method | content loss | style loss |
|---|---|---|
| ``ours`` | contextual loss to the content (eqs 4-10) | lambda x mean/std loss (eq 12) |
| ``adain`` | MSE to the AdaIN target at relu4_1 | lambda x mean/std loss (eq 12) |
| ``contextual`` | contextual loss to the content | lambda x contextual loss to the style (Mechrez et al.) |
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .train import TrainConfig, train

METHODS: dict[str, dict] = {
    "ours": {"content_loss": "contextual"},
    "adain": {"content_loss": "mse"},
    "contextual": {"content_loss": "contextual-only"},
}

METHOD_LABELS = {
    "ours": "Ours (contextual + style)",
    "adain": "AdaIN (MSE + style)",
    "contextual": "Contextual transformation",
}


def method_config(method: str, **overrides) -> TrainConfig:
    """The TrainConfig of a method with profile/user overrides (e.g. image_size, iterations)."""
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    return TrainConfig(**{**METHODS[method], **overrides})


def config_key(cfg: TrainConfig) -> str:
    """A short hash of everything that defines the trained weights (not where they are saved)."""
    d = cfg.to_dict()
    for volatile in ("output_dir", "checkpoint_every", "threads"):
        d.pop(volatile, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def train_or_load(cfg: TrainConfig, checkpoints_dir: str | Path, name: str, *, progress: bool = True,
                  force: bool = False):
    """Train (or resume, or just load when finished) and return a ready Stylizer.

    The checkpoint lives in ``checkpoints_dir/<name>-<config hash>/``, so re-running a notebook
    with the same parameters reuses the trained decoder; ``force`` starts again.
    """
    from .stylize import Stylizer

    cfg.output_dir = str(Path(checkpoints_dir) / f"{name}-{config_key(cfg)}")
    path = train(cfg, resume=not force, progress=progress)
    return Stylizer.from_checkpoint(path)

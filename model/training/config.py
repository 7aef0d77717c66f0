"""The typed training config: defaults (the reference solver), checks, and config files;
``fcn train`` applies a file over the defaults, then flags (``model.commands.train``).

``TrainConfig`` is recorded as a plain dict in every checkpoint, so a run can be read back
and resumed from its checkpoint alone.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from model.errors import FCNError
from model.files import read_json_or_yaml
from model.names import (
    AMP_MODES,
    ARCHS,
    BACKBONES,
    CLASS_WEIGHTS,
    LOSSES,
    LR_POLICIES,
    OPTIMIZERS,
)

# The reference solvers' fixed learning rates for the pixel-summed loss (batch 1, ~500x375
# images, so ~1e5 pixels per step): each stage 100x lower than the one it starts from.
SUM_LR = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14, "fcn8s-atonce": 1e-10}
# With the per-pixel mean loss the gradient no longer grows with the image area.
MEAN_LR = {"fcn32s": 1e-4, "fcn16s": 1e-4, "fcn8s": 1e-4, "fcn8s-atonce": 1e-4}


class ConfigError(FCNError, ValueError):
    """A config value, key or file that cannot be used; the message names it."""


def _solver(
    arch: str, lr: float, rounds: tuple[int, int], splits: tuple[str, str]
) -> dict[str, Any]:
    """A reference solve.py: SGD at a fixed ``lr`` for the pixel-summed loss, momentum 0.99,
    weight decay 5e-4, biases at twice the rate, one image a step; ``rounds`` (N, steps):
    N x steps iterations, scored after each round; ``splits``: (train, val)."""
    (count, steps), (train, val) = rounds, splits
    return {
        "arch": arch,
        "loss": "sum",
        "optimizer": "sgd",
        "lr": lr,
        "lr_policy": "fixed",
        "momentum": 0.99,
        "weight_decay": 5e-4,
        "bias_lr_mult": 2.0,
        "batch_size": 1,
        "iter_size": 1,
        "max_iter": count * steps,
        "val_every": steps,
        "train_split": train,
        "val_split": val,
    }


def _layout(fmt: str, settings: dict[str, Any]) -> dict[str, Any]:
    # SIFT Flow's nets have two heads, semantic and geometric (siftflow-fcn*/net.py).
    heads = {"geometry": True} if fmt == "siftflow" else {}
    return {**settings, "data_format": fmt, "val_format": fmt, **heads}


# The reference's solvers per data set and net (fcn.berkeleyvision.org: each */solver.prototxt
# and solve.py); ``fcn train --preset NAME`` starts from one. VOC trains on SBD's train and
# scores seg11valid; PASCAL-Context trains on VOC2010 train and scores its val; SIFT Flow and
# NYUDv2 train on trainval and score test.
PRESETS: dict[str, dict[str, Any]] = {
    "voc-fcn32s": _solver("fcn32s", 1e-10, (25, 4000), ("train", "seg11valid")),
    "voc-fcn16s": _solver("fcn16s", 1e-12, (25, 4000), ("train", "seg11valid")),
    "voc-fcn8s": _solver("fcn8s", 1e-14, (25, 4000), ("train", "seg11valid")),
    "voc-fcn8s-atonce": _solver("fcn8s-atonce", 1e-10, (75, 4000), ("train", "seg11valid")),
    "context-fcn32s": _layout("context", _solver("fcn32s", 1e-10, (50, 8000), ("train", "val"))),
    "context-fcn16s": _layout("context", _solver("fcn16s", 1e-12, (50, 8000), ("train", "val"))),
    "context-fcn8s": _layout("context", _solver("fcn8s", 1e-14, (50, 8000), ("train", "val"))),
    "siftflow-fcn32s": _layout(
        "siftflow", _solver("fcn32s", 1e-10, (50, 2000), ("trainval", "test"))
    ),
    "siftflow-fcn16s": _layout(
        "siftflow", _solver("fcn16s", 1e-12, (50, 2000), ("trainval", "test"))
    ),
    # Not 1e-14: the reference's siftflow-fcn8s solver keeps FCN-16s's rate.
    "siftflow-fcn8s": _layout(
        "siftflow", _solver("fcn8s", 1e-12, (50, 2000), ("trainval", "test"))
    ),
    "nyud-fcn32s-color": _layout(
        "nyud", _solver("fcn32s", 1e-10, (50, 2000), ("trainval", "test"))
    ),
}
# Staged presets start from the trained net of the stage before (--init checkpoint:PATH).
STAGED_FROM = {
    f"{data}-{arch}": f"{data}-{before}"
    for data in ("voc", "context", "siftflow")
    for arch, before in (("fcn16s", "fcn32s"), ("fcn8s", "fcn16s"))
}


def preset_config(name: str) -> TrainConfig:
    """The defaults with the reference solver ``name`` applied (``PRESETS``)."""
    if name not in PRESETS:
        raise ConfigError(f"--preset: {name!r} is not one of {', '.join(PRESETS)}")
    return TrainConfig().updated(PRESETS[name], f"preset {name}")


# AdamW's step does not scale with the loss, so one rate serves both losses.
ADAMW_LR = 1e-4


def default_lr(arch: str, loss: str, optimizer: str = "sgd") -> float:
    """The learning rate used when none is given: SGD with the summed loss takes the
    reference's per-stage rate, with the mean loss 1e-4; AdamW 1e-4."""
    if optimizer == "adamw":
        return ADAMW_LR
    return (SUM_LR if loss == "sum" else MEAN_LR)[arch]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Defaults are the paper's reference solver."""

    # Model
    arch: str = "fcn32s"
    backbone: str = "vgg16"
    width: float = 1.0
    learn_upsampling: bool = False
    # SIFT Flow's second, geometric head, trained jointly (the two losses summed).
    geometry: bool = False
    init: str = "imagenet"
    # Data
    data: str = ""
    data_format: str = "auto"
    train_split: str = "train"
    val_data: str = ""
    val_format: str = "auto"
    val_split: str = "val"
    classes: list[str] = field(default_factory=list)
    check_data: bool = True
    workers: int = 2
    # Loss and solver
    loss: str = "sum"
    loss_sample: float = 1.0
    class_weights: str = "none"
    score_only: bool = False
    optimizer: str = "sgd"
    lr: float | None = None
    lr_policy: str = "fixed"
    momentum: float = 0.99
    weight_decay: float = 5e-4
    bias_lr_mult: float = 2.0
    max_iter: int = 100_000
    batch_size: int = 1
    iter_size: int = 1
    crop_size: list[int] | None = None
    scale_range: list[float] | None = None
    flip: bool = False
    # Run
    amp: str = "none"
    device: str = "auto"
    seed: int = 0
    val_every: int = 4000
    log_every: int = 20
    out: str = "runs/fcn"
    resume: str = ""
    progress: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{name.replace('_', '-')}: {message}")

        need(self.arch in ARCHS, "arch", f"{self.arch!r} is not one of {', '.join(ARCHS)}")
        need(
            self.backbone in BACKBONES,
            "backbone",
            f"{self.backbone!r} is not one of {', '.join(BACKBONES)}",
        )
        need(self.width > 0, "width", f"must be positive, got {self.width}")
        need(self.loss in LOSSES, "loss", f"{self.loss!r} is not one of {', '.join(LOSSES)}")
        need(
            0 < self.loss_sample <= 1,
            "loss_sample",
            f"must be in (0, 1], got {self.loss_sample}",
        )
        need(
            self.class_weights in CLASS_WEIGHTS,
            "class_weights",
            f"{self.class_weights!r} is not one of {', '.join(CLASS_WEIGHTS)}",
        )
        need(
            self.lr is None or (math.isfinite(self.lr) and self.lr > 0),
            "lr",
            f"must be positive, got {self.lr}",
        )
        need(
            self.optimizer in OPTIMIZERS,
            "optimizer",
            f"{self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}",
        )
        need(self.lr_policy in LR_POLICIES, "lr_policy", f"{self.lr_policy!r} is not fixed/poly")
        need(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        need(self.bias_lr_mult >= 0, "bias_lr_mult", f"must be >= 0, got {self.bias_lr_mult}")
        need(self.max_iter >= 1, "max_iter", f"must be at least 1, got {self.max_iter}")
        need(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        need(self.iter_size >= 1, "iter_size", f"must be at least 1, got {self.iter_size}")
        if self.crop_size is not None:
            need(
                len(self.crop_size) in (1, 2) and min(self.crop_size) >= 1,
                "crop_size",
                f"needs H or H W, positive, got {self.crop_size}",
            )
        if self.scale_range is not None:
            need(
                len(self.scale_range) == 2 and 0 < self.scale_range[0] <= self.scale_range[1],
                "scale_range",
                f"needs LOW HIGH with 0 < LOW <= HIGH, got {self.scale_range}",
            )
        need(self.amp in AMP_MODES, "amp", f"{self.amp!r} is not one of {', '.join(AMP_MODES)}")
        need(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        need(self.val_every >= 1, "val_every", f"must be at least 1, got {self.val_every}")
        need(self.log_every >= 1, "log_every", f"must be at least 1, got {self.log_every}")
        need(bool(self.out), "out", "an output folder is needed")
        need(len(set(self.classes)) == len(self.classes), "classes", "names must be distinct")

    @property
    def learning_rate(self) -> float:
        """The base learning rate in effect: ``lr`` or the default for arch and loss."""
        return self.lr if self.lr is not None else default_lr(self.arch, self.loss, self.optimizer)

    @property
    def crop(self) -> tuple[int, int] | None:
        """The crop as (H, W); a single number is a square."""
        if self.crop_size is None:
            return None
        h = self.crop_size[0]
        return h, self.crop_size[-1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping of field names (``-`` or ``_``), checking names and types."""
        return TrainConfig().updated(data, source)

    def updated(self, changes: dict[str, Any], source: str = "config") -> TrainConfig:
        """A copy with ``changes`` applied; unknown names and wrong types raise ConfigError."""
        hints = typing.get_type_hints(TrainConfig)
        known = {f.name for f in fields(TrainConfig)}
        values: dict[str, Any] = {}
        for key, value in changes.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ConfigError(f"{source}: unknown setting {key!r}")
            where = f"--{name.replace('_', '-')}" if source == "flags" else f"{source}: {key}"
            values[name] = _coerce(value, hints[name], where)
        try:
            return replace(self, **values)
        except ConfigError as exc:
            # Flags are named as typed: "--max-iter: ...".
            raise ConfigError(f"--{exc}" if source == "flags" else f"{source}: {exc}") from exc


# Per scalar field type: the values accepted (ints for floats, never bools for numbers) and
# how an error describes them.
SCALARS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field's type, accepting ints for floats."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{where}: may not be null")
    if type(None) in args:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, where) for v in value]
    if hint not in SCALARS:
        raise ConfigError(f"{where}: unsupported type {hint}")  # pragma: no cover
    accepts, expected = SCALARS[hint]
    if not accepts(value):
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    return float(value) if hint is float else value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML or JSON file (a mapping of field names)."""
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"{source}: no such config file")
    try:
        data = read_json_or_yaml(source)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: unreadable config file ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    return data

"""``fcn train``: one flag per ``TrainConfig`` field, ``--preset NAME``, ``--config FILE``,
and the order they apply in: defaults (or the ``--resume`` checkpoint's config), then the
preset, then the file, then flags."""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.names import AMP_MODES, ARCHS, BACKBONES, CLASS_WEIGHTS, LOSSES, LR_POLICIES, OPTIMIZERS
from model.names import DATA_FORMATS as FORMATS
from model.training.config import (
    PRESETS,
    STAGED_FROM,
    ConfigError,
    TrainConfig,
    load_config_file,
    preset_config,
)

if TYPE_CHECKING:
    from model.checkpoint import Checkpoint

METAVARS: dict[str, str | tuple[str, str]] = {
    "data": "DIR",
    "val_data": "DIR",
    "out": "DIR",
    "resume": "PATH",
    "crop_size": "N",
    "scale_range": ("LOW", "HIGH"),
    "classes": "NAME",
}
# Per field: (help, choices, nargs) for the command line.
FLAGS: dict[str, tuple[str, tuple[str, ...] | None, str | int | None]] = {
    "arch": ("network", ARCHS, None),
    "backbone": ("ImageNet classifier the network is built on", BACKBONES, None),
    "width": ("channel width multiplier (1.0 = the paper's network)", None, None),
    "learn_upsampling": ("train the bilinear upsampling layers too", None, None),
    "geometry": (
        "also train SIFT Flow's geometric head (sky, horizontal, vertical), its loss added "
        "to the semantic one's, as the reference's SIFT Flow nets",
        None,
        None,
    ),
    "init": (
        "initial weights: imagenet (torchvision's classifier of --backbone), vgg16:PATH, "
        "alexnet:PATH, googlenet:PATH (a saved torchvision state dict), caffe-vgg16:PATH, "
        "caffe-alexnet:PATH (Caffe's .caffemodel), checkpoint:PATH (the previous stage), "
        "none (random trunk)",
        None,
        None,
    ),
    "data": (
        "training data folder (VOC, SBD, images/ + masks/, PASCAL-Context, SIFT Flow or "
        "NYUDv2); required",
        None,
        None,
    ),
    "data_format": ("layout of --data", FORMATS, None),
    "train_split": ("split list of the training images", None, None),
    "val_data": ("validation data folder (default: --data)", None, None),
    "val_format": ("layout of --val-data", FORMATS, None),
    "val_split": ("split list of the validation images (e.g. seg11valid)", None, None),
    "classes": ("class names (default: the data set's)", None, "+"),
    "check_data": ("check every image and label before the first step", None, None),
    "workers": ("data loading processes per training process", None, None),
    "loss": ("sum: pixel-summed cross-entropy (the reference); mean: per-pixel mean", LOSSES, None),
    "loss_sample": (
        "keep each final-layer cell in the loss with this probability (paper, section 4.3)",
        None,
        None,
    ),
    "class_weights": ("balanced: weight the loss by inverse class frequency", CLASS_WEIGHTS, None),
    "score_only": ("train the score layer only (the paper's FCN-32s-fixed)", None, None),
    "optimizer": (
        "sgd (the reference) or adamw (small nets trained from scratch)",
        OPTIMIZERS,
        None,
    ),
    "lr": ("learning rate (default: by arch, loss and optimizer; see README)", None, None),
    "lr_policy": ("fixed (the reference) or poly (power 0.9)", LR_POLICIES, None),
    "momentum": ("SGD momentum (adamw keeps its beta1 of 0.9)", None, None),
    "weight_decay": ("L2 weight decay of weights (never of biases)", None, None),
    "bias_lr_mult": ("learning-rate multiplier of biases", None, None),
    "max_iter": ("training iterations (one batch per process each)", None, None),
    "batch_size": ("images per iteration and process", None, None),
    "iter_size": (
        "batches whose gradients are summed into one step (Caffe's iter_size)",
        None,
        None,
    ),
    "crop_size": ("random crop H [W] (default: native size, no crop)", None, "+"),
    "scale_range": ("random rescaling factor range LOW HIGH (default: none)", None, 2),
    "flip": ("random horizontal flips", None, None),
    "amp": ("mixed precision on CUDA", AMP_MODES, None),
    "device": ("auto, cpu, cuda or cuda:N", None, None),
    "seed": ("seed of weight init, data order, augmentation and dropout", None, None),
    "val_every": ("validate and save checkpoints every K iterations", None, None),
    "log_every": ("log the mean training loss every K iterations", None, None),
    "out": ("output folder: last.pt, best.pt, log.jsonl, training.png", None, None),
    "resume": ("checkpoint (last.pt) to continue exactly from", None, None),
    "progress": ("progress bar (on terminals)", None, None),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the config these flags give (defaults, then --config, then flags) as "
        "commented YAML that --config reads back, and exit",
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        metavar="NAME",
        help="start from the reference's solver for a data set and net (applied over the "
        f"defaults, under --config and flags): {', '.join(PRESETS)}",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML or JSON file of settings (applied over the defaults, under the flags)",
    )
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.print_config:
        print(config_yaml(config_from_args(args)), end="")
        return 0
    from model.checkpoint import load_checkpoint
    from model.training.train import train

    resume = flag_overrides(args).get("resume")
    resumed = load_checkpoint(resume) if resume else None  # read once, for config and state
    train(config_from_args(args, resumed), resumed=resumed)
    return 0


def config_yaml(config: TrainConfig) -> str:
    """``config`` as YAML, each setting under a comment saying what it is."""
    import yaml

    values = config.to_dict()
    lines = ["# fcn train --config FILE reads this back; flags given with it take precedence."]
    for f in fields(TrainConfig):
        help_text, choices, _ = FLAGS[f.name]
        if choices:
            help_text = f"{help_text} ({', '.join(choices)})"
        lines.append(f"# {help_text}")
        lines.append(yaml.safe_dump({f.name: values[f.name]}, default_flow_style=False).rstrip())
    return "\n".join(lines) + "\n"


def config_from_args(args: argparse.Namespace, resumed: Checkpoint | None = None) -> TrainConfig:
    """Defaults (or the resumed checkpoint's config), then ``--config``, then flags;
    ``resumed`` is the ``--resume`` checkpoint if already loaded. Loads torch only to read
    a checkpoint, so ``--print-config`` alone never does."""
    config = TrainConfig()
    overrides = flag_overrides(args)
    preset = getattr(args, "preset", None)
    if preset is not None:
        if overrides.get("resume"):
            raise ConfigError(
                "--preset: not with --resume, which continues its checkpoint's config"
            )
        config = preset_config(preset)
    if overrides.get("resume"):
        from model.checkpoint import load_checkpoint

        source = overrides["resume"]
        resumed = resumed or load_checkpoint(source)
        config = TrainConfig.from_dict(resumed.config, f"{source} (config)")
    if args.config is not None:
        config = config.updated(load_config_file(args.config), str(args.config))
    config = config.updated(overrides, "flags")
    if preset in STAGED_FROM and not config.init.startswith("checkpoint:"):
        raise ConfigError(
            f"--preset {preset} continues a trained {STAGED_FROM[preset]}, as the reference "
            "stages its nets: give --init checkpoint:PATH (that run's best.pt)"
        )
    return config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (``--max-iter``...); flags not given stay out of the namespace."""
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        help_text, choices, nargs = FLAGS[f.name]
        hint = hints[f.name]
        if typing.get_origin(hint) is not list:  # Optional[X] -> X
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = args[0] if args else hint
        default = getattr(defaults, f.name)
        if "default" not in help_text and default not in ("", None, []):
            help_text = f"{help_text} (default: {default})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name, "help": help_text}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if typing.get_origin(hint) is list:
                (kwargs["type"],) = typing.get_args(hint)
                kwargs["nargs"] = nargs
            else:
                kwargs["type"] = hint
            if choices:
                kwargs["choices"] = choices
            else:
                kwargs["metavar"] = METAVARS.get(f.name, f.name.split("_")[-1].upper())
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given as flags."""
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}

"""A new run's network, initialised as ``--init`` says (ImageNet, VGG16 files, a previous
stage's checkpoint or random), and its placement on the device (DDP under torchrun)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from model.checkpoint import load_checkpoint
from model.nets.backbones import init_from_parent, initialize
from model.nets.fcn import FCN, ModelSpec, build_fcn
from model.nets.preprocessing import Preprocessing
from model.training.config import ConfigError
from model.training.distributed import Processes


def initialized_model(
    spec: ModelSpec,
    init: str,
    classes: list[str],
    procs: Processes,
    say: Callable[[str], None],
) -> tuple[FCN, Preprocessing]:
    """A new network initialised as ``init`` says, and the preprocessing of its weights."""
    scheme, _, parent_path = init.partition(":")
    parent = load_checkpoint(parent_path) if scheme == "checkpoint" and parent_path else None
    if parent is not None:
        if parent.spec.num_classes != len(classes):
            raise ConfigError(
                f"init: {parent_path} predicts {parent.spec.num_classes} classes, "
                f"the data has {len(classes)}"
            )
        renamed = [f"{a} -> {b}" for a, b in zip(parent.classes, classes, strict=True) if a != b]
        if renamed:
            more = f" and {len(renamed) - 3} more" if len(renamed) > 3 else ""
            say(
                f"warning: init: {parent_path} names its classes otherwise; this run keeps "
                f"the names of --classes or the data: {', '.join(renamed[:3])}{more}"
            )
    net = build_fcn(spec)
    if parent is not None:
        copied = {n.split(".")[0] for n in init_from_parent(net, parent.state_dict)}
        # Upsampling layers differ between stages by design; a learned layer left behind
        # (an FCN-8s's score_pool3 under an FCN-16s) is worth a word.
        layers = {n.split(".")[0] for n in parent.state_dict if not n.startswith("upscore")}
        left = sorted(layers - copied)
        if left:
            say(
                f"warning: init: {net.arch} has no place for {parent.spec.arch}'s "
                f"{', '.join(left)} ({parent_path}); they are dropped"
            )
        return net, parent.preprocessing
    # Rank 0 first, so that a weights download happens once.
    if procs.distributed and not procs.is_main:
        dist.barrier()
    preprocessing = initialize(net, init)
    if procs.distributed and procs.is_main:
        dist.barrier()
    return net, preprocessing


def placed(net: FCN, device: torch.device, procs: Processes, *, fixed_size: bool) -> nn.Module:
    """``net`` on ``device`` (channels-last on CUDA), wrapped in DDP under torchrun."""
    net.to(device)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)
        # Fixed-size crops let cuDNN pick its kernels once; native sizes would re-pick per size.
        torch.backends.cudnn.benchmark = fixed_size
    if not procs.distributed:
        return net
    return nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None
    )

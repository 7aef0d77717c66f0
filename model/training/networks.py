"""A run's network: a resumed one's from its checkpoint, a new one initialised as ``--init``
says (ImageNet, VGG16/AlexNet/GoogLeNet files, a previous stage's checkpoint or random);
and its placement on the device (DDP under torchrun)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from model.caffe.convert import load_caffe_alexnet, load_caffe_vgg16
from model.checkpoint import load_checkpoint
from model.nets.alexnet import AlexNetFCN32s, load_alexnet, torchvision_alexnet_state_dict
from model.nets.backbones import (
    WeightsError,
    init_from_parent,
    load_vgg16,
    torchvision_vgg16_state_dict,
)
from model.nets.fcn import FCN, VGG16FCN, ModelSpec, build_fcn
from model.nets.preprocessing import TORCHVISION, Preprocessing
from model.training.config import ConfigError
from model.training.distributed import Processes
from model.training.resume import Weights


def starting_model(
    spec: ModelSpec,
    resumed: Weights | None,
    *,
    init: str,
    classes: list[str],
    procs: Processes,
    say: Callable[[str], None],
) -> tuple[FCN, Preprocessing]:
    """The network ``spec`` asks for and the preprocessing of its weights: the ``resumed``
    one's weights, else a new network initialised as ``init`` says."""
    if resumed is None:
        return initialized_model(spec, init, classes, procs, say)
    if resumed.spec != spec:
        raise ConfigError(
            f"resume: {resumed.source} holds {resumed.spec}, the config asks for {spec}"
        )
    net = build_fcn(spec)
    net.load_state_dict(resumed.state_dict)
    return net, resumed.preprocessing


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
        if parent.spec.backbone != spec.backbone:
            raise ConfigError(
                f"init: {parent_path} is on {parent.spec.backbone}, this run's --backbone is "
                f"{spec.backbone}"
            )
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


# --init SCHEME:PATH for a torchvision ImageNet classifier saved with torch.save, by the
# backbone it fits; caffe-SCHEME:PATH for the Caffe .caffemodel of the same classifier.
TORCHVISION_SCHEMES = ("vgg16", "alexnet", "googlenet")
CAFFE_SCHEMES = ("caffe-vgg16", "caffe-alexnet")
# The backbone each Caffe file initialises.
CAFFE_BACKBONE = {"caffe-vgg16": "vgg16", "caffe-alexnet": "caffe-alexnet"}
PATH_SCHEMES = (*TORCHVISION_SCHEMES, *CAFFE_SCHEMES, "checkpoint")


def initialize(net: FCN, init: str) -> Preprocessing:
    """Initialise ``net`` as a config's ``init`` says and return the preprocessing its
    weights expect.

    ``imagenet``: torchvision's ImageNet classifier of ``net``'s backbone (VGG16, AlexNet or
    GoogLeNet; downloaded once); ``vgg16:PATH``, ``alexnet:PATH``, ``googlenet:PATH``: a
    saved torchvision state dict of that classifier; ``caffe-vgg16:PATH``: Caffe's
    VGG_ILSVRC_16_layers .caffemodel and ``caffe-alexnet:PATH`` BVLC's bvlc_alexnet
    .caffemodel, as the reference trained from; ``checkpoint:PATH``: a previous stage's
    checkpoint (its preprocessing carries over); ``none``: the random trunk init of a fresh
    network (for small-width models; torchvision's normalisation).
    """
    scheme, _, arg = init.partition(":")
    if scheme in PATH_SCHEMES and not arg:
        raise WeightsError(f"init {init!r}: {scheme}: needs a path, e.g. {scheme}:weights.pt")
    if init == "imagenet":
        if net.backbone not in TORCHVISION_SCHEMES:
            raise WeightsError(
                f"init imagenet: torchvision has no {net.backbone} classifier; use "
                f"{net.backbone}:PATH with BVLC's bvlc_alexnet.caffemodel"
            )
        try:
            return _load_torchvision(net, net.backbone, "imagenet", init)
        except OSError as exc:  # offline, or the download was cut short
            raise WeightsError(
                f"init imagenet: downloading torchvision's {net.backbone} weights failed "
                f"({exc}); without internet, use {net.backbone}:PATH with a saved copy"
            ) from exc
    if scheme in TORCHVISION_SCHEMES:
        return _load_torchvision(net, scheme, Path(arg), init)
    if scheme in CAFFE_SCHEMES:
        _check_backbone(net, CAFFE_BACKBONE[scheme], init)
        if scheme == "caffe-vgg16":
            return load_caffe_vgg16(net, arg)
        return load_caffe_alexnet(net, arg)
    if scheme == "checkpoint":
        parent = load_checkpoint(arg)
        init_from_parent(net, parent.state_dict)
        return parent.preprocessing
    if init == "none":
        return TORCHVISION
    raise WeightsError(
        f"unknown init {init!r}; use imagenet, vgg16:PATH, caffe-vgg16:PATH, alexnet:PATH, "
        "caffe-alexnet:PATH, googlenet:PATH, checkpoint:PATH or none"
    )


def _check_backbone(net: FCN, backbone: str, init: str) -> None:
    if net.backbone != backbone:
        raise WeightsError(
            f"init {init!r}: {backbone} weights, but the network is on {net.backbone} (--backbone)"
        )


def _load_torchvision(net: FCN, backbone: str, source: str | Path, init: str) -> Preprocessing:
    """torchvision's ImageNet ``backbone`` (downloaded, or a saved state dict) into ``net``."""
    _check_backbone(net, backbone, init)
    if isinstance(net, VGG16FCN):
        return load_vgg16(net, torchvision_vgg16_state_dict(source))
    if isinstance(net, AlexNetFCN32s):
        return load_alexnet(net, torchvision_alexnet_state_dict(source))
    # Imported here: a broken GoogLeNet module breaks only GoogLeNet runs.
    from model.nets import googlenet

    assert isinstance(net, googlenet.GoogLeNetFCN)
    return googlenet.load_googlenet(net, googlenet.torchvision_googlenet_state_dict(source))

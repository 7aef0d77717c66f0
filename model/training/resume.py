"""Exact resumption: the RNG states a checkpoint carries, the training state it records,
and everything a resumed run takes back from it (config, weights, solver, RNG, best)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from model.nets.fcn import FCN, ModelSpec, build_fcn
from model.nets.preprocessing import Preprocessing
from model.training.config import ConfigError, TrainConfig
from model.training.distributed import Processes


def seed_rngs(seed: int) -> None:
    """Seed the RNGs that ``rng_state`` saves: torch, Python and NumPy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global generator, see rng_state)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch, Python and NumPy RNG states, and the CUDA one of ``device``
    (None on the CPU), as checkpoint-safe values."""
    version, internal, gauss = random.getstate()
    # NumPy's legacy global generator: what third-party code (augmentations) draws from.
    numpy_state = np.random.get_state(legacy=True)  # noqa: NPY002
    assert isinstance(numpy_state, tuple)
    name, keys, pos, has_gauss, cached = numpy_state
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> str:
    """Restore what ``rng_state`` returned; returns what could not be restored, or ""."""
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002
        (numpy["name"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached"])
    )
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # older checkpoints: every visible device's state
        if device.type != "cuda":
            return ""
        index = device.index or 0
        if index >= len(cuda):
            return f"the checkpoint holds no CUDA RNG state for {device}"
        cuda = cuda[index]
    if device.type == "cuda":
        if cuda is None:
            return f"the run was saved off CUDA: {device}'s RNG starts afresh"
        torch.cuda.set_rng_state(cuda, device)
    elif cuda is not None:
        return f"the run was saved on CUDA: its CUDA RNG state has no use on {device}"
    return ""


def training_state(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rng: list[dict[str, Any]],
    *,
    best_mean_iu: float,
    world_size: int,
    batch_size: int,
    iter_size: int = 1,
    class_weights: torch.Tensor | None = None,
    val_loss: float | None = None,
) -> dict[str, Any]:
    """A checkpoint's ``training_state``: what ``restore_training_state`` reads back, with
    ``rng`` the ``rng_state`` of every rank; also the class weights the loss used (a
    resumed run takes them back rather than counting the labels again) and the loss of
    the last validation."""
    return {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng,
        "best_mean_iu": best_mean_iu,
        "world_size": world_size,
        "batch_size": batch_size,
        "iter_size": iter_size,
        "class_weights": None if class_weights is None else class_weights.detach().cpu(),
        "val_loss": val_loss,
    }


def resumed_class_weights(resumed: Checkpoint, source: str) -> torch.Tensor | None:
    """The class weights ``resumed`` trained with (None: none, or an older checkpoint)."""
    weights = (resumed.training_state or {}).get("class_weights")
    if weights is None:
        return None
    if not isinstance(weights, torch.Tensor) or weights.shape != (resumed.spec.num_classes,):
        raise CheckpointError(f"{source}: unusable class weights in its training state")
    return weights.float()


def resumed_config(resumed: Checkpoint, source: str) -> TrainConfig:
    """The config ``resumed`` was trained with: where a resumed run's settings start."""
    return TrainConfig.from_dict(resumed.config, f"{source} (config)")


def load_resumable(
    source: str, *, max_iter: int, loaded: Checkpoint | None = None
) -> Checkpoint | None:
    """The checkpoint to resume (``loaded``, else ``source`` read), if any; refused if it
    holds no training state or is already at ``max_iter``."""
    resumed = load_checkpoint(source) if source and loaded is None else loaded
    if resumed is None:
        return None
    if resumed.training_state is None:
        raise CheckpointError(f"{source}: holds no training state; it cannot be resumed")
    if resumed.iteration >= max_iter:
        raise ConfigError(
            f"--max-iter {max_iter}: {source} is already at iteration "
            f"{resumed.iteration}; nothing to train (give a larger --max-iter)"
        )
    return resumed


def resumed_model(resumed: Checkpoint, spec: ModelSpec, source: str) -> tuple[FCN, Preprocessing]:
    """The network of ``resumed`` with its weights, if it is the one ``spec`` asks for."""
    if resumed.spec != spec:
        raise ConfigError(f"resume: {source} holds {resumed.spec}, the config asks for {spec}")
    net = build_fcn(spec)
    net.load_state_dict(resumed.state_dict)
    return net, resumed.preprocessing


def restore_training_state(
    resumed: Checkpoint,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    optimizer_name: str,
    procs: Processes,
    device: torch.device,
    say: Callable[[str], None],
    source: str,
    batch_size: int,
    iter_size: int = 1,
) -> float:
    """Optimiser moments, scaler and RNG from the checkpoint; returns its best mean IU.
    The solver's settings (lr, momentum, weight decay, lr multipliers) stay the config's.

    Called last before the loop: the RNG must not be drawn from once it is restored."""
    trained_with = resumed.config.get("optimizer", "sgd")
    if trained_with != optimizer_name:
        raise ConfigError(
            f"optimizer: {source} was trained with {trained_with}; a resumed run cannot switch "
            f"to --optimizer {optimizer_name} (start a new run from its weights with "
            f"--init checkpoint:{source})"
        )
    saved = resumed.training_state or {}
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        best_mean_iu = float(saved.get("best_mean_iu", -1.0))
        rng = saved.get("rng") or []
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: unusable training state ({exc})") from exc
    # load_state_dict brought back the saved groups' settings; flags may have changed them.
    for group, setting in zip(optimizer.param_groups, settings, strict=True):
        group.update(setting)
    if len(rng) == procs.world_size:
        problem = set_rng_state(rng[procs.rank], device)
        if problem:
            say(f"warning: {problem}; it goes on, but will not repeat the uninterrupted run")
    saved_batch = saved.get("batch_size", batch_size)
    saved_iter = saved.get("iter_size", 1)
    if len(rng) != procs.world_size or (saved_batch, saved_iter) != (batch_size, iter_size):
        say(
            f"resuming with {procs.world_size} process(es) x batch {batch_size} x iter size "
            f"{iter_size} a run saved with {len(rng)} x {saved_batch} x {saved_iter}: it goes "
            "on, but will not repeat the uninterrupted run"
        )
    say(f"resumed at iteration {resumed.iteration}")
    return best_mean_iu

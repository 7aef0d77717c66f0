"""Exact resumption: the RNG states a checkpoint carries, the training state it records,
and ``Start``, where a run starts: afresh, or resolved once from its ``--resume`` checkpoint
(step, metrics, weights, class weights, solver and RNG states)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from contract.palette import Color
from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from model.nets.fcn import ModelSpec
from model.nets.preprocessing import Preprocessing
from model.training.config import ConfigError
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
    """A checkpoint's ``training_state``: what ``starting_state`` reads back, with
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


@dataclass(frozen=True)
class Weights:
    """A resumed network as its checkpoint ``source`` holds it: what it is, its weights, the
    preprocessing they expect, and the class names and colours the run keeps."""

    source: str
    spec: ModelSpec
    state_dict: dict[str, Tensor]
    preprocessing: Preprocessing
    classes: list[str]
    palette: list[Color]


@dataclass(frozen=True)
class SolverState:
    """What a resumed run restores last, once its optimizer is made: the optimiser, scaler
    and every rank's RNG states of checkpoint ``source``, and the run shape they were saved
    under."""

    source: str
    iteration: int
    trained_with: str  # the optimizer's name
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None
    rng: list[dict[str, Any]]  # one per rank
    batch_size: int | None  # None: not recorded (older checkpoints), taken as this run's
    iter_size: int


@dataclass(frozen=True)
class Start:
    """Where a run starts: the defaults are a fresh run's; a resumed one takes its
    checkpoint's step, metrics, weights, class weights and solver state."""

    iteration: int = 0
    best_mean_iu: float = -1.0
    metrics: dict[str, float] | None = None
    val_loss: float | None = None  # at the checkpoint's last validation
    keep_log_until: int | None = None  # None: a new log.jsonl; else the records kept
    weights: Weights | None = None  # None: a new network, as --init says
    class_weights: Tensor | None = None  # None: none, or counted from the labels
    solver: SolverState | None = None  # None: a new optimizer, the RNGs as seeded


def starting_state(
    source: str, loaded: Checkpoint | None, *, max_iter: int, balanced: bool
) -> Start:
    """A fresh ``Start``, or the one of checkpoint ``source`` (``loaded``, else read) when
    resuming; refused if it holds no training state or is already at ``max_iter``.
    ``balanced``: the run weights its loss by class, so the saved weights are taken back."""
    resumed = load_checkpoint(source) if source and loaded is None else loaded
    if resumed is None:
        return Start()
    saved = resumed.training_state
    if saved is None:
        raise CheckpointError(f"{source}: holds no training state; it cannot be resumed")
    if resumed.iteration >= max_iter:
        raise ConfigError(
            f"--max-iter {max_iter}: {source} is already at iteration "
            f"{resumed.iteration}; nothing to train (give a larger --max-iter)"
        )
    class_weights = _class_weights(saved, resumed.spec.num_classes, source) if balanced else None
    try:
        solver = SolverState(
            source=source,
            iteration=resumed.iteration,
            trained_with=resumed.config.get("optimizer", "sgd"),
            optimizer=saved["optimizer"],
            scaler=saved.get("scaler"),
            rng=saved.get("rng") or [],
            batch_size=saved.get("batch_size"),
            iter_size=saved.get("iter_size", 1),
        )
        best_mean_iu = float(saved.get("best_mean_iu", -1.0))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: unusable training state ({exc})") from exc
    return Start(
        iteration=resumed.iteration,
        best_mean_iu=best_mean_iu,
        metrics=dict(resumed.metrics) or None,
        val_loss=saved.get("val_loss"),
        keep_log_until=resumed.iteration,  # drop what a crashed run logged after it
        weights=Weights(
            source,
            resumed.spec,
            resumed.state_dict,
            resumed.preprocessing,
            list(resumed.classes),
            list(resumed.palette),
        ),
        class_weights=class_weights,
        solver=solver,
    )


def _class_weights(saved: dict[str, Any], num_classes: int, source: str) -> Tensor | None:
    """The class weights the run trained with (None: none, or an older checkpoint)."""
    weights = saved.get("class_weights")
    if weights is None:
        return None
    if not isinstance(weights, torch.Tensor) or weights.shape != (num_classes,):
        raise CheckpointError(f"{source}: unusable class weights in its training state")
    return weights.float()


def restore_solver(
    solver: SolverState | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    optimizer_name: str,
    procs: Processes,
    device: torch.device,
    say: Callable[[str], None],
    batch_size: int,
    iter_size: int = 1,
) -> None:
    """Optimiser moments, scaler and RNG as ``solver`` saved them (None: nothing to restore).
    The solver's settings (lr, momentum, weight decay, lr multipliers) stay the config's.

    Called last before the loop: the RNG must not be drawn from once it is restored."""
    if solver is None:
        return
    source = solver.source
    if solver.trained_with != optimizer_name:
        raise ConfigError(
            f"optimizer: {source} was trained with {solver.trained_with}; a resumed run cannot "
            f"switch to --optimizer {optimizer_name} (start a new run from its weights with "
            f"--init checkpoint:{source})"
        )
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(solver.optimizer)
        if solver.scaler:
            scaler.load_state_dict(solver.scaler)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: unusable training state ({exc})") from exc
    # load_state_dict brought back the saved groups' settings; flags may have changed them.
    for group, setting in zip(optimizer.param_groups, settings, strict=True):
        group.update(setting)
    rng = solver.rng
    if len(rng) == procs.world_size:
        problem = set_rng_state(rng[procs.rank], device)
        if problem:
            say(f"warning: {problem}; it goes on, but will not repeat the uninterrupted run")
    saved_batch = batch_size if solver.batch_size is None else solver.batch_size
    saved_iter = solver.iter_size
    if len(rng) != procs.world_size or (saved_batch, saved_iter) != (batch_size, iter_size):
        say(
            f"resuming with {procs.world_size} process(es) x batch {batch_size} x iter size "
            f"{iter_size} a run saved with {len(rng)} x {saved_batch} x {saved_iter}: it goes "
            "on, but will not repeat the uninterrupted run"
        )
    say(f"resumed at iteration {solver.iteration}")

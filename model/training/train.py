"""``fcn train``: the paper's SGD solver on one process or many (torchrun), with validation,
a JSONL log and plots, atomic ``last``/``best`` checkpoints and an exact ``--resume``.

Exactness: the data order and every sample's augmentation follow from (seed, epoch,
position), not from loader state, and the RNG, optimiser and scaler states travel in the
checkpoint, so a resumed run repeats the uninterrupted one step for step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from contract.palette import IGNORE_INDEX, Color
from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from model.data.checks import check_dataset, format_problems
from model.data.datasets import DataError, SegmentationDataset
from model.data.layouts import open_dataset
from model.data.transforms import collate_padded, train_transforms
from model.devices import amp_dtype, resolve_device
from model.errors import FCNError
from model.evaluation.evaluate import evaluate_model, format_summary
from model.evaluation.metrics import json_safe
from model.files import atomic_path, check_folder
from model.nets.backbones import init_from_parent, initialize
from model.nets.fcn import FCN, ModelSpec, build_fcn
from model.nets.preprocessing import Normalize, Preprocessing
from model.training.config import (
    ConfigError,
    TrainConfig,
    add_config_arguments,
    flag_overrides,
    load_config_file,
)

if TYPE_CHECKING:
    from tqdm import tqdm

LAST = "last.pt"
BEST = "best.pt"
LOG = "log.jsonl"
PLOT = "training.png"
POLY_POWER = 0.9
# (images uint8 [N, 3, H, W], targets [N, H, W]) batches.
Batches = DataLoader[tuple[Tensor, Tensor]]


class TrainingError(FCNError, RuntimeError):
    """A run that cannot start or go on (a clobbered output folder, a diverged loss...)."""


# ---------------------------------------------------------------- processes and sampling


@dataclass(frozen=True)
class Processes:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_processes(device_name: str) -> tuple[Processes, torch.device]:
    """Join torchrun's process group if launched by it (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes(), resolve_device(device_name)
    procs = Processes(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return procs, device


class TrainSampler(Sampler[tuple[int, int]]):
    """An endless stream of (index, augmentation seed) for one rank, startable anywhere.

    Epoch e is a permutation seeded by (seed, e), padded to a multiple of the world size
    and dealt out rank by rank, so ``start`` (samples this rank already used) is all a
    resumed run needs to carry on with the very same samples and augmentations.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if size < 1:
            raise ValueError("cannot sample from an empty data set")
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_rank = math.ceil(self.size / self.world_size)
        epoch, offset = divmod(self.start, per_rank)
        while True:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=generator)
            # Repeat to a multiple of the world size (several times over for tiny sets).
            order = order.repeat(math.ceil(per_rank * self.world_size / self.size))
            order = order[: per_rank * self.world_size]
            seeds = torch.randint(0, 2**62, (per_rank * self.world_size,), generator=generator)
            mine, my_seeds = (
                order[self.rank :: self.world_size],
                seeds[self.rank :: self.world_size],
            )
            for position in range(offset, per_rank):
                yield int(mine[position]), int(my_seeds[position])
            epoch, offset = epoch + 1, 0


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ...: every sample exactly once across ranks (evaluation)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Augmented(Dataset[tuple[Tensor, Tensor]]):
    """Applies ``transforms`` under the torch RNG seeded by the sampler's per-sample seed."""

    def __init__(self, dataset: SegmentationDataset, transforms: Callable[..., Any] | None):
        self.dataset = dataset
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, seed = key
        image, target = self.dataset[index]
        if self.transforms is None:
            return image, target
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image, target = self.transforms(image, target)
        return image, target


# ---------------------------------------------------------------- the solver


def parameter_groups(
    net: nn.Module, lr: float, weight_decay: float, bias_lr_mult: float
) -> list[dict[str, Any]]:
    """The reference's two groups: weights (decayed, lr) and biases (no decay, lr x 2).

    Frozen parameters (the bilinear upsampling, unless learned) are left out entirely.
    """
    weights = [p for p in net.parameters() if p.requires_grad and p.ndim > 1]
    biases = [p for p in net.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": weights, "lr": lr, "lr_mult": 1.0, "weight_decay": weight_decay},
        {"params": biases, "lr": lr * bias_lr_mult, "lr_mult": bias_lr_mult, "weight_decay": 0.0},
    ]


def make_optimizer(
    net: nn.Module,
    name: str,
    lr: float,
    *,
    momentum: float,
    weight_decay: float,
    bias_lr_mult: float,
) -> torch.optim.Optimizer:
    """SGD with momentum (the reference), or AdamW with the same two parameter groups."""
    groups = parameter_groups(net, lr, weight_decay, bias_lr_mult)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def segmentation_loss(logits: Tensor, target: Tensor, mode: str) -> Tensor:
    """Cross-entropy over pixels, 255 ignored.

    ``sum`` (the reference): summed over each image's pixels and averaged over the images,
    as Caffe's SoftmaxWithLoss with ``normalize: false`` (normalisation by batch size), so
    the reference learning rates hold at any batch size. ``mean``: averaged over the
    labelled pixels of the batch. A batch with no pixel labelled gives 0.
    """
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    if mode == "sum":
        return total / target.shape[0]
    labelled = (target != IGNORE_INDEX).sum().clamp(min=1)
    return total / labelled


def learning_rate_at(base: float, policy: str, iteration: int, max_iter: int) -> float:
    """``fixed``: ``base``; ``poly``: base x (1 - iteration / max_iter) ** 0.9."""
    if policy == "poly":
        return base * float((1 - min(iteration, max_iter) / max_iter) ** POLY_POWER)
    return base


# ---------------------------------------------------------------- RNG states


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


def _gather(value: Any, procs: Processes) -> list[Any]:
    if not procs.distributed:
        return [value]
    gathered: list[Any] = [None] * procs.world_size
    dist.all_gather_object(gathered, value)
    return gathered


# ---------------------------------------------------------------- log and plots


class RunLog:
    """``log.jsonl``: one JSON record per line, ``{"iteration": ..., "split": ...}``."""

    def __init__(self, path: Path, keep_until: int | None):
        self.path = path
        # Resuming: drop what a crashed run logged after its last checkpoint.
        kept = [r for r in self.read() if keep_until is not None and r["iteration"] <= keep_until]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")


def plot_log(records: list[dict[str, Any]], path: Path) -> Path:
    """Training loss and validation mean IU against iterations, as one PNG."""
    from matplotlib.figure import Figure

    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val" and r.get("mean_iu") is not None]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, iu_ax = fig.subplots(1, 2)
    loss_ax.plot([r["iteration"] for r in train], [r["loss"] for r in train], lw=1)
    loss_ax.set_xlabel("iteration")
    loss_ax.set_ylabel("training loss")
    loss_ax.set_title("loss")
    iu_ax.plot([r["iteration"] for r in val], [100 * r["mean_iu"] for r in val], marker="o")
    iu_ax.set_xlabel("iteration")
    iu_ax.set_ylabel("mean IU (%)")
    iu_ax.set_title("validation mean IU")
    for ax in (loss_ax, iu_ax):
        ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


# ---------------------------------------------------------------- the run, step by step


def train(config: TrainConfig, *, resumed: Checkpoint | None = None) -> Path:
    """Train as ``config`` says (on every torchrun process); returns the best checkpoint.

    Writes ``last.pt`` and ``best.pt`` (highest validation mean IU), ``log.jsonl`` and
    ``training.png`` into ``config.out``; only rank 0 writes. ``resumed`` is
    ``config.resume`` already loaded, if the caller has it.
    """
    procs, device = init_processes(config.device)
    try:
        return _train(config, procs, device, resumed)
    finally:
        if procs.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    config: TrainConfig, procs: Processes, device: torch.device, resumed: Checkpoint | None
) -> Path:
    """Data, model, optimizer, resume, loop: torchvision's reference order."""
    autocast = amp_dtype(config.amp, device)
    out = _output_folder(Path(config.out), resuming=bool(config.resume))
    if config.resume and resumed is None:
        resumed = load_checkpoint(config.resume)
    if resumed is not None and resumed.training_state is None:
        raise CheckpointError(f"{config.resume}: holds no training state; it cannot be resumed")
    if resumed is not None and resumed.iteration >= config.max_iter:
        raise ConfigError(
            f"--max-iter {config.max_iter}: {config.resume} is already at iteration "
            f"{resumed.iteration}; nothing to train (give a larger --max-iter)"
        )
    say = _printer(procs)
    # Seeded before the network is built: a random init (``none``) repeats too.
    _seed(config.seed + procs.rank)

    train_set, val_set = _open_data(
        config.data,
        config.data_format,
        train_split=config.train_split,
        val_data=config.val_data,
        val_format=config.val_format,
        val_split=config.val_split,
    )
    classes, palette = _class_names(train_set, config.classes)
    spec = ModelSpec(config.arch, len(classes), config.width, config.learn_upsampling)
    if resumed is not None:
        net, preprocessing = _resumed_model(resumed, spec, config.resume)
        classes, palette = list(resumed.classes), list(resumed.palette)
    else:
        net, preprocessing = _initialized_model(spec, config.init, classes, procs, say)
    if config.check_data:
        _check_data((train_set, val_set), procs, config.workers)

    state = RunState()
    if resumed is not None:
        state.iteration = resumed.iteration
        state.metrics = dict(resumed.metrics) or None
    if procs.is_main:
        out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / LOG, state.iteration if resumed else None) if procs.is_main else None

    train_loader, val_loader = _loaders(
        train_set,
        val_set,
        batch_size=config.batch_size,
        augment=train_transforms(
            config.crop, config.scale_range, config.flip, preprocessing.mean_rgb_255
        ),
        fill=preprocessing.mean_rgb_255,
        workers=config.workers,
        seed=config.seed,
        start=state.iteration * config.batch_size,
        procs=procs,
        pin=device.type == "cuda",
    )
    model = _placed(net, device, procs, fixed_size=config.crop is not None)
    optimizer = make_optimizer(
        net,
        config.optimizer,
        config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        bias_lr_mult=config.bias_lr_mult,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    if resumed is not None:
        _restore(
            resumed,
            optimizer,
            scaler,
            state,
            optimizer_name=config.optimizer,
            procs=procs,
            device=device,
            say=say,
            source=config.resume,
            batch_size=config.batch_size,
        )

    say(
        f"training {config.arch} (width {config.width:g}, {len(classes)} classes) on "
        f"{train_set.describe()}, validating on {val_set.describe()}; {config.optimizer}, "
        f"{config.loss} loss, lr {config.learning_rate:g} ({config.lr_policy}), "
        f"batch {config.batch_size} x {procs.world_size} process(es) on {device}"
    )
    run = Run(
        net=net,
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        normalize=Normalize(preprocessing).to(device),
        device=device,
        autocast=autocast,
        procs=procs,
        out=out,
        log=log,
        say=say,
        state=state,
        record=Record(classes, palette, preprocessing, train_set.describe(), config.to_dict()),
    )
    _loop(run, train_loader, val_loader, config)
    say(f"done: {out / BEST} (best mean IU {100 * state.best_mean_iu:.2f}), {out / LAST}")
    return out / BEST


def _output_folder(out: Path, *, resuming: bool) -> Path:
    """``out``, checked before any data is read: a folder we may write in, holding no run
    unless this one resumes it."""
    try:
        check_folder(out)
    except OSError as exc:
        raise ConfigError(f"--out {out}: {exc}") from exc
    if not resuming and (out / LAST).exists():
        raise TrainingError(
            f"{out}: already holds a run ({LAST}); continue it with --resume {out / LAST} "
            "or choose another --out"
        )
    return out


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global generator, see rng_state)


def _open_data(
    data: str,
    data_format: str,
    *,
    train_split: str,
    val_data: str,
    val_format: str,
    val_split: str,
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training and validation sets (``val_data`` "": a split of ``data``)."""
    if not data:
        raise ConfigError("data: no training data given (--data DIR)")
    train_set = open_dataset(data, train_split, data_format)
    if val_data:
        val_set = open_dataset(val_data, val_split, val_format)
    else:
        val_set = open_dataset(data, val_split, data_format)
    if val_set.num_classes != train_set.num_classes:
        raise DataError(
            f"{val_set.root}: {val_set.num_classes} classes, but the training data "
            f"{train_set.root} has {train_set.num_classes}"
        )
    return train_set, val_set


def _class_names(train_set: SegmentationDataset, names: list[str]) -> tuple[list[str], list[Color]]:
    """The run's class names (``names``, else the data's) and colours (the data's)."""
    if names and len(names) != train_set.num_classes:
        raise ConfigError(
            f"classes: {len(names)} names, but {train_set.root} has {train_set.num_classes} classes"
        )
    return list(names or train_set.classes), list(train_set.palette)


def _resumed_model(resumed: Checkpoint, spec: ModelSpec, source: str) -> tuple[FCN, Preprocessing]:
    if resumed.spec != spec:
        raise ConfigError(f"resume: {source} holds {resumed.spec}, the config asks for {spec}")
    net = build_fcn(spec)
    net.load_state_dict(resumed.state_dict)
    return net, resumed.preprocessing


def _initialized_model(
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


def _check_data(datasets: tuple[SegmentationDataset, ...], procs: Processes, workers: int) -> None:
    """Every rank checks its share; all problems are gathered so each rank fails alike."""
    problems: list[str] = []
    for dataset in datasets:
        mine = range(procs.rank, len(dataset), procs.world_size)
        found = check_dataset(dataset, mine, workers=max(1, workers) * 2, progress=procs.is_main)
        problems.extend(str(p) for p in found)
    everything = sorted({p for share in _gather(problems, procs) for p in share})
    if everything:
        raise DataError(
            f"{len(everything)} problem(s) in the data, found before training:\n"
            + format_problems(everything)
        )


def _loaders(
    train_set: SegmentationDataset,
    val_set: SegmentationDataset,
    *,
    batch_size: int,
    augment: Callable[..., Any] | None,
    fill: Color,
    workers: int,
    seed: int,
    start: int,
    procs: Processes,
    pin: bool,
) -> tuple[Batches, Batches]:
    """This rank's endless training batches from sample ``start`` on, and its share of the
    validation set at native size."""
    collate = partial(collate_padded, fill_rgb=fill)
    sampler = TrainSampler(len(train_set), seed, procs.rank, procs.world_size, start)
    train_loader: Batches = DataLoader(
        Augmented(train_set, augment),
        batch_sampler=BatchSampler(sampler, batch_size, drop_last=True),  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        # Own generators: creating a loader iterator must not draw from the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )
    val_loader: Batches = DataLoader(
        val_set,
        batch_size=1,
        sampler=ShardSampler(len(val_set), procs.rank, procs.world_size),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    return train_loader, val_loader


def _placed(net: FCN, device: torch.device, procs: Processes, *, fixed_size: bool) -> nn.Module:
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


def _restore(
    resumed: Checkpoint,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: RunState,
    *,
    optimizer_name: str,
    procs: Processes,
    device: torch.device,
    say: Callable[[str], None],
    source: str,
    batch_size: int,
) -> None:
    """Optimiser moments, scaler, RNG and best figure from the checkpoint; the solver's
    settings (lr, momentum, weight decay, lr multipliers) stay those of the config."""
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
        state.best_mean_iu = float(saved.get("best_mean_iu", -1.0))
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
    if len(rng) != procs.world_size or saved_batch != batch_size:
        say(
            f"resuming with {procs.world_size} process(es) x batch {batch_size} a run saved with "
            f"{len(rng)} x {saved_batch}: it goes on, but will not repeat the uninterrupted run"
        )
    say(f"resumed at iteration {state.iteration}")


def _printer(procs: Processes) -> Callable[[str], None]:
    from tqdm import tqdm

    def say(message: str) -> None:
        if procs.is_main:
            tqdm.write(message)

    return say


# ---------------------------------------------------------------- the loop


@dataclass
class RunState:
    iteration: int = 0
    best_mean_iu: float = -1.0
    metrics: dict[str, float] | None = None
    saved_at: int = -1


@dataclass(frozen=True)
class Record:
    """What every checkpoint of the run records besides weights and training state."""

    classes: list[str]
    palette: list[Color]
    preprocessing: Preprocessing
    dataset: str
    config: dict[str, Any]


@dataclass
class Run:
    """The pieces one training step, a validation and a checkpoint act on."""

    net: FCN
    model: nn.Module  # ``net``, or ``net`` in DDP
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    normalize: Normalize
    device: torch.device
    autocast: torch.dtype | None
    procs: Processes
    out: Path
    log: RunLog | None  # rank 0 only
    say: Callable[[str], None]
    state: RunState
    record: Record

    def step(self, images: Tensor, targets: Tensor, lr: float, loss_mode: str) -> Tensor:
        """One optimiser step on a batch at learning rate ``lr``; returns the loss."""
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True).long()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        x = self.normalize(images)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self.autocast, enabled=self.autocast is not None
        ):
            logits = self.model(x)
        # This process's loss: DDP averages the gradients over processes, so with ``sum``
        # the step is that of one batch of every process's images (Caffe's normalisation).
        loss = segmentation_loss(logits, targets, loss_mode)
        self.optimizer.zero_grad(set_to_none=True)
        scaled: Tensor = self.scaler.scale(loss)
        torch.autograd.backward(scaled)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.iteration += 1
        return loss

    def validate(self, loader: Batches) -> None:
        """The four metrics over the whole validation set (each rank its share), logged."""
        # Native sizes: cuDNN benchmarking would re-tune its kernels for every image size.
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False
        try:
            confusion = evaluate_model(
                self.net,
                loader,
                self.normalize,
                len(self.record.classes),
                self.device,
                autocast=self.autocast,
            )
        finally:
            torch.backends.cudnn.benchmark = benchmark
        confusion.all_reduce()
        metrics = confusion.compute()
        self.state.metrics = metrics.summary()
        if self.log is not None:
            self.log.write(
                {
                    "iteration": self.state.iteration,
                    "split": "val",
                    **metrics.summary(),
                    "class_iu": metrics.class_iu,
                }
            )
            plot_log(self.log.read(), self.out / PLOT)
        self.say(f"iteration {self.state.iteration}: {format_summary(metrics)}")

    def save(self, batch_size: int, *, best: bool = True) -> None:
        """``last.pt`` (and, if ``best``, ``best.pt`` when mean IU improved) at this step;
        every rank takes part, since each one's RNG state goes in."""
        state = self.state
        rng = _gather(rng_state(self.device), self.procs)
        state.saved_at = state.iteration  # on every rank: they must agree on the next save
        if not self.procs.is_main:
            return
        improved = (
            best and state.metrics is not None and state.metrics["mean_iu"] > state.best_mean_iu
        )
        if improved and state.metrics is not None:
            state.best_mean_iu = state.metrics["mean_iu"]
        record = self.record
        ckpt = Checkpoint(
            spec=self.net.spec,
            state_dict={k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            classes=record.classes,
            palette=record.palette,
            preprocessing=record.preprocessing,
            dataset=record.dataset,
            metrics=dict(state.metrics or {}),
            config=record.config,
            iteration=state.iteration,
            training_state={
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "best_mean_iu": state.best_mean_iu,
                "world_size": self.procs.world_size,
                "batch_size": batch_size,
            },
        )
        save_checkpoint(ckpt, self.out / LAST)
        if improved or (best and state.metrics is not None and not (self.out / BEST).exists()):
            save_checkpoint(ckpt, self.out / BEST)


class LossWindow:
    """The training loss, steps and images since the last log line."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.restart()

    def restart(self) -> None:
        self.loss.zero_()
        self.steps = self.images = 0
        self.start = time.perf_counter()

    def add(self, loss: Tensor, images: int) -> None:
        self.loss += loss.detach()
        self.steps += 1
        self.images += images

    def mean_loss(self, procs: Processes) -> float:
        """The mean loss per step over the window and every process."""
        if procs.distributed:
            dist.all_reduce(self.loss)
            self.loss /= procs.world_size
        return float(self.loss) / self.steps

    def images_per_second(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)


def _loop(run: Run, train_loader: Batches, val_loader: Batches, config: TrainConfig) -> None:
    """Step to ``config.max_iter``: log every ``log_every``, validate and save every
    ``val_every`` and at the end; Ctrl-C saves the last step (on one process)."""
    from tqdm import tqdm

    state, procs = run.state, run.procs
    bar = tqdm(
        total=config.max_iter,
        initial=state.iteration,
        unit="it",
        dynamic_ncols=True,
        disable=True if not (procs.is_main and config.progress) else None,
    )
    window = LossWindow(run.device)
    batches = iter(train_loader)
    run.model.train()
    try:
        while state.iteration < config.max_iter:
            images, targets = next(batches)
            lr = learning_rate_at(
                config.learning_rate, config.lr_policy, state.iteration, config.max_iter
            )
            loss = run.step(images, targets, lr, config.loss)
            bar.update(1)
            window.add(loss, images.shape[0] * procs.world_size)
            at_end = state.iteration == config.max_iter
            if state.iteration % config.log_every == 0 or at_end:
                _log_training(run, window, bar, lr, config.learning_rate)
                window.restart()
            if state.iteration % config.val_every == 0 or at_end:
                run.validate(val_loader)
                run.save(config.batch_size)
                window.start = time.perf_counter()
    except KeyboardInterrupt:
        # Keep the steps done: last.pt at a step boundary resumes exactly (one process only,
        # since the others may be anywhere).
        # Not best.pt: the steps since the last validation were never scored.
        if not procs.distributed and state.saved_at != state.iteration and state.iteration > 0:
            run.save(config.batch_size, best=False)
            run.say(f"interrupted: saved {run.out / LAST} at iteration {state.iteration}")
        raise
    finally:
        bar.close()


def _log_training(run: Run, window: LossWindow, bar: tqdm[Any], lr: float, base_lr: float) -> None:
    """The window's mean loss, lr and speed: on the bar (or a line) and in the log."""
    iteration = run.state.iteration
    mean_loss = window.mean_loss(run.procs)
    if not math.isfinite(mean_loss):
        raise TrainingError(
            f"the loss became {mean_loss} by iteration {iteration}; "
            f"lower --lr (now {base_lr:g}) or check the data"
        )
    rate = window.images_per_second()
    bar.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{lr:.2g}", img_s=f"{rate:.1f}")
    if bar.disable:  # no bar (not a terminal): a line instead
        run.say(f"iteration {iteration}: loss {mean_loss:.4g}, lr {lr:.3g}, {rate:.1f} images/s")
    if run.log is not None:
        run.log.write(
            {
                "iteration": iteration,
                "split": "train",
                "loss": mean_loss,
                "lr": lr,
                "images_per_s": rate,
                "time": time.time(),
            }
        )


# ---------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML or JSON file of settings (applied over the defaults, under the flags)",
    )
    add_config_arguments(parser)


def config_from_args(args: argparse.Namespace, resumed: Checkpoint | None = None) -> TrainConfig:
    """Defaults (or the resumed checkpoint's config), then ``--config``, then flags;
    ``resumed`` is the ``--resume`` checkpoint if already loaded."""
    config = TrainConfig()
    overrides = flag_overrides(args)
    if overrides.get("resume"):
        resumed = resumed or load_checkpoint(overrides["resume"])
        config = TrainConfig.from_dict(resumed.config, f"{overrides['resume']} (config)")
    if args.config is not None:
        config = config.updated(load_config_file(args.config), str(args.config))
    return config.updated(overrides, "flags")


def run(args: argparse.Namespace) -> int:
    resume = flag_overrides(args).get("resume")
    resumed = load_checkpoint(resume) if resume else None  # read once, for config and state
    train(config_from_args(args, resumed), resumed=resumed)
    return 0

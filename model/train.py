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
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from model.backbones import WeightsError, initialize
from model.caffemodel import CaffeModelError
from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from model.config import (
    ConfigError,
    TrainConfig,
    add_config_arguments,
    amp_dtype,
    flag_overrides,
    load_config_file,
    resolve_device,
)
from model.datasets import (
    DataError,
    SegmentationDataset,
    check_dataset,
    format_problems,
    open_dataset,
)
from model.evaluate import evaluate_model, format_summary
from model.fcn import FCN, ModelSpec, build_fcn
from model.files import atomic_path
from model.palette import IGNORE_INDEX, Color
from model.preprocessing import Normalize, Preprocessing
from model.transforms import collate_padded, train_transforms

LAST = "last.pt"
BEST = "best.pt"
LOG = "log.jsonl"
PLOT = "training.png"
POLY_POWER = 0.9


class TrainingError(RuntimeError):
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
    """Cross-entropy over pixels, 255 ignored: summed (``sum``, the reference) or averaged
    over the labelled pixels of the batch (``mean``). A batch with none labelled gives 0."""
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    if mode == "sum":
        return total
    labelled = (target != IGNORE_INDEX).sum().clamp(min=1)
    return total / labelled


def learning_rate_at(base: float, policy: str, iteration: int, max_iter: int) -> float:
    """``fixed``: ``base``; ``poly``: base x (1 - iteration / max_iter) ** 0.9."""
    if policy == "poly":
        return base * float((1 - min(iteration, max_iter) / max_iter) ** POLY_POWER)
    return base


# ---------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, Python and NumPy RNG states as checkpoint-safe values."""
    version, internal, gauss = random.getstate()
    # NumPy's legacy global generator: what third-party code (augmentations) draws from.
    numpy_state = np.random.get_state(legacy=True)  # noqa: NPY002
    assert isinstance(numpy_state, tuple)
    name, keys, pos, has_gauss, cached = numpy_state
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    if (
        state["cuda"]
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002
        (numpy["name"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached"])
    )


def _gather(value: Any, procs: Processes) -> list[Any]:
    if not procs.distributed:
        return [value]
    gathered: list[Any] = [None] * procs.world_size
    dist.all_gather_object(gathered, value)
    return gathered


# ---------------------------------------------------------------- log and plots


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


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
            f.write(json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n")


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


# ---------------------------------------------------------------- the run


@dataclass
class RunState:
    iteration: int = 0
    best_mean_iu: float = -1.0
    metrics: dict[str, float] | None = None
    saved_at: int = -1


def _open_data(config: TrainConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    if not config.data:
        raise ConfigError("data: no training data given (--data DIR)")
    train_set = open_dataset(config.data, config.train_split, config.data_format)
    if config.val_data:
        val_set = open_dataset(config.val_data, config.val_split, config.val_format)
    else:
        val_set = open_dataset(config.data, config.val_split, config.data_format)
    if val_set.num_classes != train_set.num_classes:
        raise DataError(
            f"{val_set.root}: {val_set.num_classes} classes, but the training data "
            f"{train_set.root} has {train_set.num_classes}"
        )
    return train_set, val_set


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


def _model_and_labels(
    config: TrainConfig,
    train_set: SegmentationDataset,
    resumed: Checkpoint | None,
    procs: Processes,
) -> tuple[FCN, Preprocessing, list[str], list[Color]]:
    """The network (initialised or resumed), its preprocessing and its class names/colours."""
    classes, palette = list(train_set.classes), list(train_set.palette)
    if config.classes:
        if len(config.classes) != len(classes):
            raise ConfigError(
                f"classes: {len(config.classes)} names, but {train_set.root} has "
                f"{len(classes)} classes"
            )
        classes = list(config.classes)
    scheme, _, parent_path = config.init.partition(":")
    if resumed is None and scheme == "checkpoint" and parent_path:
        parent = load_checkpoint(parent_path)
        if parent.spec.num_classes != len(classes):
            raise ConfigError(
                f"init: {parent_path} predicts {parent.spec.num_classes} classes, "
                f"the data has {len(classes)}"
            )
        classes, palette = list(parent.classes), list(parent.palette)
    spec = ModelSpec(config.arch, len(classes), config.width, config.learn_upsampling)
    net = build_fcn(spec)
    if resumed is not None:
        if resumed.spec != spec:
            raise ConfigError(
                f"resume: {config.resume} holds {resumed.spec}, the config asks for {spec}"
            )
        net.load_state_dict(resumed.state_dict)
        return net, resumed.preprocessing, list(resumed.classes), list(resumed.palette)
    # Rank 0 first, so that a weights download happens once.
    if procs.distributed and not procs.is_main:
        dist.barrier()
    preprocessing = initialize(net, config.init)
    if procs.distributed and procs.is_main:
        dist.barrier()
    return net, preprocessing, classes, palette


def train(config: TrainConfig) -> Path:
    """Train as ``config`` says (on every torchrun process); returns the best checkpoint.

    Writes ``last.pt`` and ``best.pt`` (highest validation mean IU), ``log.jsonl`` and
    ``training.png`` into ``config.out``; only rank 0 writes.
    """
    procs, device = init_processes(config.device)
    try:
        return _train(config, procs, device)
    finally:
        if procs.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, procs: Processes, device: torch.device) -> Path:
    autocast = amp_dtype(config.amp, device)
    out = Path(config.out)
    resumed: Checkpoint | None = None
    if config.resume:
        resumed = load_checkpoint(config.resume)
        if resumed.training_state is None:
            raise CheckpointError(f"{config.resume}: holds no training state; it cannot be resumed")
    elif (out / LAST).exists():
        raise TrainingError(
            f"{out}: already holds a run ({LAST}); continue it with --resume {out / LAST} "
            "or choose another --out"
        )
    say: Callable[[str], None] = _printer(procs)

    # Seeded before the network is built: a random init (``none``) repeats too.
    seed = config.seed + procs.rank
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global generator, see rng_state)
    train_set, val_set = _open_data(config)
    net, preprocessing, classes, palette = _model_and_labels(config, train_set, resumed, procs)
    if config.check_data:
        _check_data((train_set, val_set), procs, config.workers)

    state = RunState()
    if resumed is not None:
        state.iteration = resumed.iteration
        state.metrics = dict(resumed.metrics) or None
    if procs.is_main:
        out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / LOG, state.iteration if resumed else None) if procs.is_main else None

    fill = preprocessing.mean_rgb_255
    augment = train_transforms(config.crop, config.scale_range, config.flip, fill)
    collate = partial(collate_padded, fill_rgb=fill)
    pin = device.type == "cuda"
    sampler = TrainSampler(
        len(train_set),
        config.seed,
        procs.rank,
        procs.world_size,
        state.iteration * config.batch_size,
    )
    train_loader: DataLoader[tuple[Tensor, Tensor]] = DataLoader(
        Augmented(train_set, augment),
        batch_sampler=BatchSampler(sampler, config.batch_size, drop_last=True),  # type: ignore[arg-type]
        num_workers=config.workers,
        collate_fn=collate,
        pin_memory=pin,
        # Own generators: creating a loader iterator must not draw from the global RNG.
        generator=torch.Generator().manual_seed(config.seed),
    )
    val_loader: DataLoader[tuple[Tensor, Tensor]] = DataLoader(
        val_set,
        batch_size=1,
        sampler=ShardSampler(len(val_set), procs.rank, procs.world_size),
        num_workers=config.workers,
        collate_fn=collate,
        pin_memory=pin,
        persistent_workers=config.workers > 0,
        generator=torch.Generator().manual_seed(config.seed),
    )

    channels_last = device.type == "cuda"
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
        # Fixed-size crops let cuDNN pick its kernels once; native sizes would re-pick per size.
        torch.backends.cudnn.benchmark = config.crop is not None
    model: nn.Module = net
    if procs.distributed:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    normalize = Normalize(preprocessing).to(device)
    base_lr = config.learning_rate
    optimizer = make_optimizer(
        net,
        config.optimizer,
        base_lr,
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
            procs=procs,
            say=say,
            source=config.resume,
            batch_size=config.batch_size,
        )

    say(
        f"training {config.arch} (width {config.width:g}, {len(classes)} classes) on "
        f"{train_set.describe()}, validating on {val_set.describe()}; {config.optimizer}, "
        f"{config.loss} loss, lr {base_lr:g} ({config.lr_policy}), "
        f"batch {config.batch_size} x {procs.world_size} process(es) on {device}"
    )

    def checkpoint_now() -> None:
        rng = _gather(rng_state(), procs)
        state.saved_at = state.iteration  # on every rank: they must agree on the next save
        if not procs.is_main:
            return
        improved = state.metrics is not None and state.metrics["mean_iu"] > state.best_mean_iu
        if improved and state.metrics is not None:
            state.best_mean_iu = state.metrics["mean_iu"]
        ckpt = Checkpoint(
            spec=net.spec,
            state_dict={k: v.detach().cpu() for k, v in net.state_dict().items()},
            classes=classes,
            palette=palette,
            preprocessing=preprocessing,
            dataset=train_set.describe(),
            metrics=dict(state.metrics or {}),
            config=config.to_dict(),
            iteration=state.iteration,
            training_state={
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng,
                "best_mean_iu": state.best_mean_iu,
                "world_size": procs.world_size,
                "batch_size": config.batch_size,
            },
        )
        save_checkpoint(ckpt, out / LAST)
        if improved or not (out / BEST).exists():
            save_checkpoint(ckpt, out / BEST)

    def validate() -> None:
        confusion = evaluate_model(
            net, val_loader, normalize, len(classes), device, autocast=autocast
        )
        confusion.all_reduce()
        metrics = confusion.compute()
        state.metrics = metrics.summary()
        if log is not None:
            log.write(
                {
                    "iteration": state.iteration,
                    "split": "val",
                    **metrics.summary(),
                    "class_iu": metrics.class_iu,
                }
            )
            plot_log(log.read(), out / PLOT)
        say(f"iteration {state.iteration}: {format_summary(metrics)}")

    from tqdm import tqdm

    bar = tqdm(
        total=config.max_iter,
        initial=state.iteration,
        unit="it",
        dynamic_ncols=True,
        disable=True if not (procs.is_main and config.progress) else None,
    )
    window_loss = torch.zeros((), device=device)
    window_steps = window_images = 0
    window_start = time.perf_counter()
    batches = iter(train_loader)
    model.train()
    try:
        while state.iteration < config.max_iter:
            images, targets = next(batches)
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True).long()
            lr = learning_rate_at(base_lr, config.lr_policy, state.iteration, config.max_iter)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
            x = normalize(images)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                logits = model(x)
            loss = segmentation_loss(logits, targets, config.loss)
            # DDP averages gradients over processes; the summed loss sums them instead.
            scaled = loss * procs.world_size if config.loss == "sum" else loss
            optimizer.zero_grad(set_to_none=True)
            scaled_loss: Tensor = scaler.scale(scaled)
            torch.autograd.backward(scaled_loss)
            scaler.step(optimizer)
            scaler.update()
            state.iteration += 1
            bar.update(1)

            window_loss += loss.detach()
            window_steps += 1
            window_images += images.shape[0] * procs.world_size
            if state.iteration % config.log_every == 0 or state.iteration == config.max_iter:
                if procs.distributed:
                    dist.all_reduce(window_loss)
                    window_loss /= procs.world_size
                mean_loss = float(window_loss) / window_steps
                if not math.isfinite(mean_loss):
                    raise TrainingError(
                        f"the loss became {mean_loss} by iteration {state.iteration}; "
                        f"lower --lr (now {base_lr:g}) or check the data"
                    )
                rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                bar.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{lr:.2g}", img_s=f"{rate:.1f}")
                if bar.disable:  # no bar (not a terminal): a line instead
                    say(
                        f"iteration {state.iteration}: loss {mean_loss:.4g}, lr {lr:.3g}, "
                        f"{rate:.1f} images/s"
                    )
                if log is not None:
                    log.write(
                        {
                            "iteration": state.iteration,
                            "split": "train",
                            "loss": mean_loss,
                            "lr": lr,
                            "images_per_s": rate,
                            "time": time.time(),
                        }
                    )
                window_loss.zero_()
                window_steps = window_images = 0
                window_start = time.perf_counter()

            if state.iteration % config.val_every == 0 or state.iteration == config.max_iter:
                validate()
                checkpoint_now()
                window_start = time.perf_counter()
    except KeyboardInterrupt:
        # Keep the steps done: last.pt at a step boundary resumes exactly (one process only,
        # since the others may be anywhere).
        if not procs.distributed and state.saved_at != state.iteration and state.iteration > 0:
            checkpoint_now()
            say(f"interrupted: saved {out / LAST} at iteration {state.iteration}")
        raise
    finally:
        bar.close()
    if state.saved_at != state.iteration:  # resumed at or past max_iter: nothing was run
        checkpoint_now()
    say(f"done: {out / BEST} (best mean IU {100 * state.best_mean_iu:.2f}), {out / LAST}")
    return out / BEST


def _restore(
    resumed: Checkpoint,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: RunState,
    *,
    procs: Processes,
    say: Callable[[str], None],
    source: str,
    batch_size: int,
) -> None:
    saved = resumed.training_state or {}
    try:
        optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        state.best_mean_iu = float(saved.get("best_mean_iu", -1.0))
        rng = saved.get("rng") or []
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: unusable training state ({exc})") from exc
    if len(rng) == procs.world_size:
        set_rng_state(rng[procs.rank])
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


# ---------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML or JSON file of settings (applied over the defaults, under the flags)",
    )
    add_config_arguments(parser)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults (or the resumed checkpoint's config), then ``--config``, then flags."""
    config = TrainConfig()
    overrides = flag_overrides(args)
    if overrides.get("resume"):
        resumed = load_checkpoint(overrides["resume"])
        config = TrainConfig.from_dict(resumed.config, f"{overrides['resume']} (config)")
    if args.config is not None:
        config = config.updated(load_config_file(args.config), str(args.config))
    return config.updated(overrides, "flags")


def run(args: argparse.Namespace) -> int:
    from model.cli import CLIError

    try:
        config = config_from_args(args)
        train(config)
    except (
        ConfigError,
        DataError,
        CheckpointError,
        WeightsError,
        CaffeModelError,
        TrainingError,
    ) as exc:
        raise CLIError(str(exc)) from exc
    return 0

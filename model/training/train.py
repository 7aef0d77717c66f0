"""``train(config)``: the paper's solver on one process or many (torchrun), read top to bottom:
start (fresh, or resolved once from ``--resume``), data, model, optimizer, resume, loop.
Writes ``last.pt``/``best.pt``, a log and a plot; a resumed run repeats the uninterrupted
one step for step (``sampling``, ``resume``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from contract.palette import Color
from model.checkpoint import Checkpoint
from model.data.checks import check_dataset, format_problems
from model.data.datasets import DataError, SegmentationDataset
from model.data.layouts import open_dataset
from model.data.reference_sets import SIFTFlowDataset
from model.data.transforms import train_transforms
from model.devices import amp_dtype
from model.nets.fcn import FCN, ModelSpec
from model.nets.preprocessing import Normalize
from model.training.config import ConfigError, TrainConfig
from model.training.distributed import Processes, close_processes, gather, init_processes
from model.training.loop import Loss, Record, Run, RunState, run_loop
from model.training.networks import placed, starting_model
from model.training.resume import Weights, restore_solver, seed_rngs, starting_state
from model.training.runlog import BEST, LAST, open_log, output_folder, printer
from model.training.sampling import make_loaders
from model.training.solver import class_frequency_weights, make_optimizer


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
        close_processes(procs)


def _train(
    config: TrainConfig, procs: Processes, device: torch.device, loaded: Checkpoint | None
) -> Path:
    """Start, data, model, optimizer, resume, loop: torchvision's reference order."""
    autocast = amp_dtype(config.amp, device)
    out = output_folder(Path(config.out), resuming=bool(config.resume))
    start = starting_state(
        config.resume,
        loaded,
        max_iter=config.max_iter,
        balanced=config.class_weights == "balanced",
    )
    say = printer(procs)
    # Seeded before the network is built: a random init (``none``) repeats too.
    seed_rngs(config.seed + procs.rank)

    train_set, val_set = _open_data(
        config.data,
        config.data_format,
        train_split=config.train_split,
        val_data=config.val_data,
        val_format=config.val_format,
        val_split=config.val_split,
    )
    classes, palette = _class_names(train_set, config.classes, start.weights)
    # The data's count, not the resumed names': a resumed network must fit the data too.
    spec = ModelSpec(
        config.arch,
        train_set.num_classes,
        config.width,
        config.learn_upsampling,
        config.backbone,
        _geometry_classes(config, train_set),
    )
    net, preprocessing = starting_model(
        spec, start.weights, init=config.init, classes=classes, procs=procs, say=say
    )
    if config.check_data:
        _check_data((train_set, val_set), procs, config.workers)
    weight = _loss_weights(
        config.class_weights, start.class_weights, train_set, len(classes), procs=procs, say=say
    )
    if config.score_only:
        trained = freeze_all_but_scores(net)
        say(f"--score-only: training {', '.join(trained)}; the rest stays as initialised")
    log = open_log(out, start.keep_log_until, weight) if procs.is_main else None

    train_loader, val_loader = make_loaders(
        train_set,
        val_set,
        batch_size=config.batch_size,
        augment=train_transforms(
            config.crop, config.scale_range, config.flip, preprocessing.mean_rgb_255
        ),
        fill=preprocessing.mean_rgb_255,
        workers=config.workers,
        seed=config.seed,
        start=start.iteration * config.batch_size * config.iter_size,
        procs=procs,
        pin=device.type == "cuda",
    )
    model = placed(net, device, procs, fixed_size=config.crop is not None)
    optimizer = make_optimizer(
        net,
        config.optimizer,
        config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        bias_lr_mult=config.bias_lr_mult,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    restore_solver(
        start.solver,
        optimizer,
        scaler,
        optimizer_name=config.optimizer,
        procs=procs,
        device=device,
        say=say,
        batch_size=config.batch_size,
        iter_size=config.iter_size,
    )

    say(
        f"training {config.arch} (width {config.width:g}, {len(classes)} classes) on "
        f"{train_set.describe()}, validating on {val_set.describe()}; {config.optimizer}, "
        f"{config.loss} loss, lr {config.learning_rate:g} ({config.lr_policy}), "
        f"batch {config.batch_size} x {procs.world_size} process(es)"
        + (f" x iter size {config.iter_size}" if config.iter_size > 1 else "")
        + (f", loss over {config.loss_sample:g} of the cells" if config.loss_sample < 1 else "")
        + f" on {device}"
    )
    state = RunState(
        iteration=start.iteration,
        best_mean_iu=start.best_mean_iu,
        metrics=start.metrics,
        val_loss=start.val_loss,
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
        loss=Loss(config.loss, weight, config.loss_sample, config.iter_size),
    )
    run_loop(
        run,
        train_loader,
        val_loader,
        max_iter=config.max_iter,
        base_lr=config.learning_rate,
        lr_policy=config.lr_policy,
        batch_size=config.batch_size,
        log_every=config.log_every,
        val_every=config.val_every,
        progress=config.progress,
    )
    say(f"done: {out / BEST} (best mean IU {100 * state.best_mean_iu:.2f}), {out / LAST}")
    return out / BEST


def _geometry_classes(config: TrainConfig, train_set: SegmentationDataset) -> int:
    """The geometric head's class count (0: none); a SIFT Flow training set then yields both
    label maps (``SIFTFlowDataset.with_geometry``)."""
    if not config.geometry:
        return 0
    if not isinstance(train_set, SIFTFlowDataset):
        raise ConfigError(
            f"geometry: {train_set.describe()} has no geometric labels; only SIFT Flow has "
            "(--no-geometry trains the one head)"
        )
    if config.backbone != "vgg16":
        raise ConfigError(
            f"geometry: only the VGG16 nets have a geometric head, not {config.backbone}"
        )
    train_set.with_geometry = True
    return len(train_set.geometry_classes)


def score_layers(net: FCN) -> list[str]:
    """The layers ``--score-only`` trains: ``score_fr`` and the skips' score layers. The
    paper's FCN-32s-fixed fine-tunes only the last layer; on 16s/8s the skip score layers
    are last layers too (they start at zero and nothing else would ever move them)."""
    return list(net.score_layers)


def freeze_all_but_scores(net: FCN) -> list[str]:
    """Stop gradients to every parameter outside ``score_layers`` (upsampling included),
    so the optimizer never sees them; returns the layers left trainable."""
    trained = score_layers(net)
    for name, param in net.named_parameters():
        param.requires_grad_(name.split(".")[0] in trained)
    return trained


def _loss_weights(
    mode: str,
    resumed: Tensor | None,
    dataset: SegmentationDataset,
    num_classes: int,
    *,
    procs: Processes,
    say: Callable[[str], None],
) -> Tensor | None:
    """The loss's class weights: none, or ``balanced``: those a resumed run trained with,
    else counted from ``dataset``'s labels."""
    if mode != "balanced":
        return None
    weight = resumed if resumed is not None else _balanced_weights(dataset, num_classes, procs)
    say(f"class weights (balanced): {', '.join(f'{w:.3g}' for w in weight.tolist())}")
    return weight


def _balanced_weights(dataset: SegmentationDataset, num_classes: int, procs: Processes) -> Tensor:
    """Inverse-frequency weights from the training labels' pixel counts (255 excluded),
    every rank counting its share."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for index in range(procs.rank, len(dataset), procs.world_size):
        target = dataset.read_target(dataset.samples[index].target)
        ids = target[target < num_classes].astype(np.int64)
        counts += np.bincount(ids.ravel(), minlength=num_classes)
    total = np.sum([np.asarray(share) for share in gather(counts.tolist(), procs)], axis=0)
    try:
        return class_frequency_weights(torch.from_numpy(total))
    except ValueError as exc:
        raise DataError(f"{dataset.root}: {exc}") from exc


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


def _class_names(
    train_set: SegmentationDataset, names: list[str], resumed: Weights | None
) -> tuple[list[str], list[Color]]:
    """The run's class names and colours: a resumed run's own, else ``names`` (else the
    data's) and the data's colours."""
    if names and len(names) != train_set.num_classes:
        raise ConfigError(
            f"classes: {len(names)} names, but {train_set.root} has {train_set.num_classes} classes"
        )
    if resumed is not None:
        return list(resumed.classes), list(resumed.palette)
    return list(names or train_set.classes), list(train_set.palette)


def _check_data(datasets: tuple[SegmentationDataset, ...], procs: Processes, workers: int) -> None:
    """Every rank checks its share; all problems are gathered so each rank fails alike."""
    problems: list[str] = []
    for dataset in datasets:
        mine = range(procs.rank, len(dataset), procs.world_size)
        found = check_dataset(dataset, mine, workers=max(1, workers) * 2, progress=procs.is_main)
        problems.extend(str(p) for p in found)
    everything = sorted({p for share in gather(problems, procs) for p in share})
    if everything:
        raise DataError(
            f"{len(everything)} problem(s) in the data, found before training:\n"
            + format_problems(everything)
        )

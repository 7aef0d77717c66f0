"""The step loop: one run's pieces and state, a training step, a validation, a checkpoint,
and the loop that logs, validates and saves on schedule (and on Ctrl-C)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from contract.palette import Color
from model.checkpoint import Checkpoint, save_checkpoint
from model.data.reference_sets import SIFTFlowDataset
from model.evaluation.geometry import geometric_accuracy, geometry_counts, has_geometry
from model.evaluation.report import format_summary
from model.evaluation.validation import LossMeter, evaluate_model
from model.nets.fcn import FCN
from model.nets.preprocessing import Normalize, Preprocessing
from model.training.distributed import Processes, gather
from model.training.interrupt import interrupt_between_steps
from model.training.resume import rng_state, training_state
from model.training.runlog import BEST, LAST, PLOT, LossWindow, RunLog, TrainingError, plot_log
from model.training.sampling import Batches
from model.training.solver import learning_rate_at, sample_cells, segmentation_loss

if TYPE_CHECKING:
    from tqdm import tqdm


@dataclass
class RunState:
    """Where the run stands; a resumed run starts from its checkpoint's."""

    iteration: int = 0
    best_mean_iu: float = -1.0
    metrics: dict[str, float] | None = None
    val_loss: float | None = None  # at the last validation, as the reference's score.py
    saved_at: int = -1


@dataclass(frozen=True)
class Loss:
    """The training loss: ``mode`` (sum/mean), class ``weight`` [C] or None, the share of
    final-layer cells ``sample`` kept (loss sampling), and ``iter_size`` batches a step."""

    mode: str = "sum"
    weight: Tensor | None = None
    sample: float = 1.0
    iter_size: int = 1


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
    loss: Loss

    def step(self, batches: list[tuple[Tensor, Tensor]], lr: float) -> Tensor:
        """One optimiser step at learning rate ``lr`` on ``loss.iter_size`` batches, their
        gradients summed; returns the step's loss (the mean of the batches')."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for k, (images, targets) in enumerate(batches):
            # DDP: reduce the gradients once, after the last batch of the step.
            last = k == len(batches) - 1
            no_sync = getattr(self.model, "no_sync", None)
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                loss = self._loss(images, targets)
                # Caffe's iter_size: each batch's loss / iter_size, so K batches of 1 take
                # the step of one batch of K under the loss's normalisation.
                scaled: Tensor = self.scaler.scale(loss / len(batches))
                torch.autograd.backward(scaled)
            total += loss.detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.iteration += 1
        return total / len(batches)

    def _loss(self, images: Tensor, targets: Tensor) -> Tensor:
        """This process's loss on one batch: DDP averages the gradients over processes, so
        with ``sum`` the step is that of one batch of every process's images (Caffe's
        normalisation)."""
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True).long()
        # Two heads: targets [N, 2, H, W], the semantic map then the geometric one.
        geometry = targets[:, 1] if targets.ndim == 4 else None
        targets = sample_cells(targets[:, 0] if geometry is not None else targets, self.loss.sample)
        x = self.normalize(images)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self.autocast, enabled=self.autocast is not None
        ):
            if geometry is None:
                logits = self.model(x)
            else:
                logits, geometry_logits = self.model(x, geometry=True)
        loss = segmentation_loss(logits, targets, self.loss.mode, weight=self.loss.weight)
        if geometry is not None:
            # The reference's SIFT Flow nets: loss + loss_geo, each pixel-summed, unweighted.
            geometry = sample_cells(geometry, self.loss.sample)
            loss = loss + segmentation_loss(geometry_logits, geometry, self.loss.mode)
        return loss

    def validate(self, loader: Batches) -> None:
        """The four metrics and the loss (unweighted, unsampled, mean over the images, as the
        reference's score.py) over the whole validation set (each rank its share), logged."""
        # Native sizes: cuDNN benchmarking would re-tune its kernels for every image size.
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False
        meter = LossMeter(self.loss.mode, self.device)
        try:
            confusion = evaluate_model(
                self.net,
                loader,
                self.normalize,
                len(self.record.classes),
                self.device,
                autocast=self.autocast,
                loss=meter,
            )
            geometry = self._geometric_accuracy(loader)
        finally:
            torch.backends.cudnn.benchmark = benchmark
        confusion.all_reduce()
        metrics = confusion.compute()
        summary = metrics.summary() | geometry
        self.state.metrics = summary
        self.state.val_loss = meter.value(all_reduce=True)
        if self.log is not None:
            self.log.write(
                {
                    "iteration": self.state.iteration,
                    "split": "val",
                    "loss": self.state.val_loss,
                    **summary,
                    "class_iu": metrics.class_iu,
                }
            )
            plot_log(self.log.read(), self.out / PLOT)
        self.say(
            f"iteration {self.state.iteration}: loss {self.state.val_loss:.4g}  "
            f"{format_summary(metrics)}"
            + "".join(f"  geom. acc {100 * v:.2f}" for v in geometry.values())
        )

    def _geometric_accuracy(self, loader: Batches) -> dict[str, float]:
        """``{"geometric_accuracy": ...}`` of a two-head net on SIFT Flow (this rank's share,
        summed over ranks), as the reference's solve.py scores ``score_geo``; else {}."""
        dataset = loader.dataset
        if not isinstance(dataset, SIFTFlowDataset) or not has_geometry(self.net, dataset):
            return {}
        procs = self.procs
        counts = geometry_counts(
            self.net,
            dataset,
            self.normalize,
            self.device,
            autocast=self.autocast,
            indices=range(procs.rank, len(dataset), procs.world_size),
        )
        return {"geometric_accuracy": geometric_accuracy(counts, all_reduce=True)}

    def save(self, batch_size: int, *, best: bool = True) -> None:
        """``last.pt`` (and, if ``best``, ``best.pt`` when mean IU improved) at this step;
        every rank takes part, since each one's RNG state goes in."""
        state = self.state
        rng = gather(rng_state(self.device), self.procs)
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
            training_state=training_state(
                self.optimizer,
                self.scaler,
                rng,
                best_mean_iu=state.best_mean_iu,
                world_size=self.procs.world_size,
                batch_size=batch_size,
                iter_size=self.loss.iter_size,
                class_weights=self.loss.weight,
                val_loss=state.val_loss,
            ),
        )
        save_checkpoint(ckpt, self.out / LAST)
        if improved or (best and state.metrics is not None and not (self.out / BEST).exists()):
            save_checkpoint(ckpt, self.out / BEST)


def run_loop(
    run: Run,
    train_loader: Batches,
    val_loader: Batches,
    *,
    max_iter: int,
    base_lr: float,
    lr_policy: str,
    batch_size: int,
    log_every: int,
    val_every: int,
    progress: bool,
) -> None:
    """Step to ``max_iter`` (each step ``run.loss.iter_size`` batches): log every
    ``log_every``, validate and save every ``val_every`` and at the end; Ctrl-C saves the
    last step (on one process)."""
    from tqdm import tqdm

    state, procs = run.state, run.procs
    bar = tqdm(
        total=max_iter,
        initial=state.iteration,
        unit="it",
        dynamic_ncols=True,
        disable=True if not (procs.is_main and progress) else None,
    )
    window = LossWindow(run.device)
    batches: Iterator[tuple[Tensor, Tensor]] = iter(train_loader)
    run.model.train()
    try:
        with interrupt_between_steps(enabled=not procs.distributed) as check_interrupt:
            while state.iteration < max_iter:
                check_interrupt()
                step_batches = [next(batches) for _ in range(run.loss.iter_size)]
                lr = learning_rate_at(base_lr, lr_policy, state.iteration, max_iter)
                step_loss = run.step(step_batches, lr)
                bar.update(1)
                images = sum(b[0].shape[0] for b in step_batches)
                window.add(step_loss, images * procs.world_size)
                at_end = state.iteration == max_iter
                if state.iteration % log_every == 0 or at_end:
                    _log_training(run, window, bar, lr, base_lr)
                    window.restart()
                if state.iteration % val_every == 0 or at_end:
                    run.validate(val_loader)
                    run.save(batch_size)
                    window.start = time.perf_counter()
    except KeyboardInterrupt:
        # Keep the steps done: last.pt at a step boundary resumes exactly (one process only,
        # since the others may be anywhere).
        # Not best.pt: the steps since the last validation were never scored.
        if not procs.distributed and state.saved_at != state.iteration and state.iteration > 0:
            run.save(batch_size, best=False)
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

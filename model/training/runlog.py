"""What a run writes and says: its output folder (``last.pt``, ``best.pt``, ``log.jsonl``,
``training.png``), the JSONL log and its plot, the loss window, and rank 0's messages."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from model.errors import FCNError
from model.evaluation.metrics import json_safe
from model.files import atomic_path, check_folder
from model.training.config import ConfigError
from model.training.distributed import Processes

LAST = "last.pt"
BEST = "best.pt"
LOG = "log.jsonl"
PLOT = "training.png"


class TrainingError(FCNError, RuntimeError):
    """A run that cannot start or go on (a clobbered output folder, a diverged loss...)."""


def output_folder(out: Path, *, resuming: bool) -> Path:
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


def open_log(out: Path, keep_until: int | None, class_weights: Tensor | None) -> RunLog:
    """Rank 0's ``log.jsonl`` in ``out`` (made if need be): a resumed run's keeps its records
    to ``keep_until``; a new one (None) opens with the loss's class weights, if any."""
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / LOG, keep_until)
    if keep_until is None and class_weights is not None:
        log.write({"iteration": 0, "split": "setup", "class_weights": class_weights.tolist()})
    return log


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


def printer(procs: Processes) -> Callable[[str], None]:
    """``say(message)``: a line on rank 0, written past the progress bar; silent elsewhere."""
    from tqdm import tqdm

    def say(message: str) -> None:
        if procs.is_main:
            tqdm.write(message)

    return say

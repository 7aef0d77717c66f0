"""The run log: a resumed run keeps what was logged up to its checkpoint and drops what a
crashed run logged after it; a new run starts a new log."""

from __future__ import annotations

from pathlib import Path

from model.training.runlog import LOG, RunLog


def test_a_resumed_log_drops_what_came_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / LOG
    log = RunLog(path, keep_until=None)
    for iteration in (1, 2, 3):
        log.write({"iteration": iteration, "split": "train", "loss": float(iteration)})
    assert [r["iteration"] for r in RunLog(path, keep_until=2).read()] == [1, 2]
    assert RunLog(path, keep_until=None).read() == []

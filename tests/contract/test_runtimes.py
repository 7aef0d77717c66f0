"""The OpenVINO side of ``contract.runtimes`` that no service test reaches: files opened and
dropped in any order leave the process able to take a signal."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.runtimes import openvino_installed
from tests.isolation import run_without

pytestmark = pytest.mark.skipif(not openvino_installed(), reason="openvino is not installed")

# Two models and the bf16 probe, dropped in an order unlike their making; then a signal with
# a Python handler, as Ctrl-C or a DataLoader worker's SIGCHLD arrives. Each OpenVINO Core
# swaps the thread's signal stack: a Core per model, dropped out of order, left the thread on
# freed memory and the signal killed the process (SIGSEGV).
OPEN_AND_DROP = """
import gc, os, signal
from contract.runtimes import OpenVinoModel, native_bf16
first = OpenVinoModel({path!r}, "fp32", 1)
second = OpenVinoModel({path!r}, "fp32", 1)
native_bf16()
del first
gc.collect()
del second
gc.collect()
signal.signal(signal.SIGUSR1, lambda signum, frame: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
print("alive")
"""


@pytest.mark.slow
def test_models_dropped_in_any_order_leave_the_process_able_to_take_a_signal(
    model_path: Path,
) -> None:
    done = run_without((), OPEN_AND_DROP.format(path=str(model_path)))
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.split() == ["handled", "alive"]

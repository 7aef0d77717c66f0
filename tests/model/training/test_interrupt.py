"""Ctrl-C during training stops at a step boundary; a second one stops at once.

Each case runs in a fresh interpreter: the signal is sent to the process, and a process that
has run the rest of the suite carries threads and signal stacks of every library it loaded
(ONNX Runtime, OpenVINO, torch), which are not what ``fcn train`` runs with.
"""

from __future__ import annotations

from tests.isolation import run_without

# SIGINT handled as Python does in a terminal, even where this suite was started in the
# background (SIGINT ignored there, and so in its children).
PYTHON_CTRL_C = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from model.training.interrupt import interrupt_between_steps
"""


def run(code: str) -> str:
    done = run_without((), PYTHON_CTRL_C + code + "\nprint('done')\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("done"), done.stdout
    return done.stderr


def test_the_first_ctrl_c_waits_for_the_step_boundary_and_the_second_does_not() -> None:
    stderr = run(
        """
with interrupt_between_steps() as check:
    check()  # nothing asked yet
    os.kill(os.getpid(), signal.SIGINT)  # lands mid-step: the step goes on
    try:
        check()
        raise SystemExit("check() did not stop at the step boundary")
    except KeyboardInterrupt:
        pass
    try:
        os.kill(os.getpid(), signal.SIGINT)
        raise SystemExit("the second Ctrl-C did not stop at once")
    except KeyboardInterrupt:
        pass
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
"""
    )
    assert "stopping after this step" in stderr


def test_off_it_leaves_ctrl_c_to_python() -> None:
    run(
        """
with interrupt_between_steps(enabled=False) as check:
    check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    try:
        os.kill(os.getpid(), signal.SIGINT)  # Python's own: at once, not at check()
        raise SystemExit("Ctrl-C was not Python's")
    except KeyboardInterrupt:
        pass
"""
    )


def test_an_ignored_ctrl_c_stays_ignored() -> None:
    """A run started with SIGINT ignored (nohup, a background job) keeps ignoring it."""
    run(
        """
signal.signal(signal.SIGINT, signal.SIG_IGN)
with interrupt_between_steps() as check:
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGINT)
    check()
assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
"""
    )

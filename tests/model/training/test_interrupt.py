"""Ctrl-C during training stops at a step boundary; a second one stops at once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from model.training.interrupt import interrupt_between_steps


@pytest.fixture
def python_ctrl_c() -> Iterator[None]:
    """SIGINT handled as Python does in a terminal, even where this suite was started in the
    background (SIGINT ignored); restored afterwards."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


@pytest.mark.usefixtures("python_ctrl_c")
def test_the_first_ctrl_c_waits_for_the_step_boundary_and_the_second_does_not(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with interrupt_between_steps() as check:
        check()  # nothing asked yet
        os.kill(os.getpid(), signal.SIGINT)  # lands mid-step: the step goes on
        assert "stopping after this step" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.usefixtures("python_ctrl_c")
def test_off_it_leaves_ctrl_c_to_python() -> None:
    with interrupt_between_steps(enabled=False) as check:
        check()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):  # Python's own: at once, not at check()
            os.kill(os.getpid(), signal.SIGINT)


def test_an_ignored_ctrl_c_stays_ignored() -> None:
    """A run started with SIGINT ignored (nohup, a background job) keeps ignoring it."""
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt_between_steps() as check:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            check()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)

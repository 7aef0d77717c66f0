"""Ctrl-C during training stops at a step boundary; a second one stops at once."""

from __future__ import annotations

import os
import signal

import pytest

from model.training.interrupt import interrupt_between_steps


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


def test_off_it_leaves_ctrl_c_to_python() -> None:
    with interrupt_between_steps(enabled=False) as check:
        check()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):  # Python's own: at once, not at check()
            os.kill(os.getpid(), signal.SIGINT)

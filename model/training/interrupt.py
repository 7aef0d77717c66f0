"""Ctrl-C during training: the first one stops the loop at the next step boundary, a second
one at once. Python raises KeyboardInterrupt wherever the main thread happens to be,
including a finaliser or a callback that ignores it, so a lone Ctrl-C could be lost; a flag
the loop reads between steps never is."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType


class StepInterrupt:
    """Whether Ctrl-C has asked the loop to stop; ``check`` raises KeyboardInterrupt if so."""

    def __init__(self) -> None:
        self.requested = False

    def check(self) -> None:
        """Raise KeyboardInterrupt at this step boundary when Ctrl-C asked for it."""
        if self.requested:
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second Ctrl-C: do not wait for the step to finish
            signal.default_int_handler(signum, frame)
        self.requested = True
        print(
            "Ctrl-C: stopping after this step (Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )


@contextlib.contextmanager
def interrupt_between_steps(enabled: bool = True) -> Iterator[Callable[[], None]]:
    """Within the block, SIGINT sets a flag that the yielded ``check`` turns into
    KeyboardInterrupt. Off (Python's own handling) when not ``enabled`` (several processes,
    which stop together as torchrun says), off the main thread, or when SIGINT is not Python's
    default handler (an embedding application's own)."""
    if (
        not enabled
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield lambda: None
        return
    interrupt = StepInterrupt()
    signal.signal(signal.SIGINT, interrupt._handle)
    try:
        yield interrupt.check
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)

"""SIGTERM treated like Ctrl-C (SIGINT), so that a stopped run says so.

A batch scheduler, ``timeout`` or ``docker stop`` ends a process with SIGTERM. Python's
default is to die at once: no failure record, an exit status the caller cannot tell from a
crash, a predict output that looks complete. Inside :func:`sigterm_as_interrupt` a SIGTERM
raises :class:`Terminated` (a :class:`KeyboardInterrupt`), so every ``except
KeyboardInterrupt`` / ``except BaseException`` path that handles Ctrl-C handles it too
(train's failure record in ``metrics.json``, predict's partial summary, Lightning's graceful
shutdown), and the command exits with ``128 + signal`` (143; 130 for Ctrl-C).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (raised by the handler of :func:`sigterm_as_interrupt`)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


#: The signal that interrupted the current command (None: none yet).
received: int | None = None


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    global received
    if signum == signal.SIGINT:  # Ctrl-C as Python does it, remembered for the exit status
        received = received or signum
        raise KeyboardInterrupt
    if received is None:
        received = signum
        raise Terminated(signum)
    # a second SIGTERM while shutting down: the first one is being handled


def describe(error: BaseException | None = None) -> str:
    """``"SIGTERM"`` / ``"SIGINT"`` (Ctrl-C): what interrupted the command."""
    if isinstance(error, Terminated):
        return signal.Signals(error.signum).name
    if received is not None:
        return signal.Signals(received).name
    return "SIGINT"


def interrupt_status() -> int:
    """Exit status of an interrupted command: 128 + the signal (143 SIGTERM, 130 SIGINT)."""
    return 128 + (received if received is not None else signal.SIGINT)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block a SIGTERM raises :class:`Terminated` and a SIGINT a KeyboardInterrupt, both
    remembered in :data:`received` (main thread only; the handlers are restored after)."""
    global received
    received = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_terminated) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

"""SIGINT and SIGTERM as an exception, at once or at the caller's next safe point."""

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``done`` counts the work finished before it
    (images, frames or training steps)."""

    def __init__(self, signum: int = signal.SIGINT, done: int = 0):
        super().__init__(signum, done)
        self.signum, self.done = signum, done

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def as_interrupted(err: KeyboardInterrupt, done: Optional[int] = None) -> Interrupted:
    """``err`` (a plain Ctrl-C too) as ``Interrupted``; ``done`` replaces its count if given."""
    signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
    if done is None:
        done = err.done if isinstance(err, Interrupted) else 0
    return Interrupted(signum, done)


class PendingSignal:
    """The signal that ``interruptible(defer=True)`` received, for the caller to act on."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def raise_if_received(self, done: int = 0) -> None:
        """Raise ``Interrupted`` if a signal arrived; call it where stopping is safe."""
        if self.signum is not None:
            raise Interrupted(self.signum, done)


@contextmanager
def interruptible(defer: bool = False) -> Iterator[PendingSignal]:
    """Turn SIGINT and SIGTERM into ``Interrupted`` inside the block (handlers restored after).

    By default the exception is raised where the signal lands; the writers' own clean-up
    (``common.atomic``) removes their temporary files. With ``defer`` the signal is only
    recorded in the yielded ``PendingSignal``: a training step is never cut in half, and
    the caller saves its state before it calls ``raise_if_received``. Outside the main
    thread, where Python allows no handlers, signals keep their default behaviour.
    """
    pending = PendingSignal()
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return

    def handler(signum: int, frame: object) -> None:
        if not defer:
            raise Interrupted(signum)
        pending.signum = signum

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield pending
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)

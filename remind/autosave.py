"""Saving a run's state inside a segment of the stream: on a timer, and when the process is asked to stop.

A streaming loop calls :meth:`Autosave.tick` at points where its state is complete and resumable (the
image experiments: between batches of the stream; VQA: between questions). ``tick`` calls the loop's
``save`` when ``--checkpoint_every_minutes`` have passed since the last save, and when SIGINT or SIGTERM
has arrived; after a save caused by a signal it raises :class:`StopRequested`, which the entry points
turn into a one-line message and exit status 128 + the signal number. A second signal while a stop is
pending interrupts at once (the previous checkpoint stays intact: every write is atomic).

Signals that arrive while no loop ticks (base initialisation, an evaluation) are honoured at the next
tick or at :meth:`Autosave.checkpointed` (after a point's checkpoint).
"""
from __future__ import annotations

import math
import signal
import time
from typing import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(Exception):
    """The process was asked to stop; the state was saved and a rerun continues from it."""

    def __init__(self, signum: int, where: str):
        super().__init__(f"stopped by {signal.Signals(signum).name}; the run's state is saved ({where}): "
                         "run the same command again to continue")
        self.signum = signum
        self.exit_code = 128 + signum


def check_every_minutes(minutes: float) -> float:
    """``--checkpoint_every_minutes`` or a ValueError: NaN compares false with everything, so it would turn the
    timed saves off without a word, and inf is no interval (0 is the documented way to turn them off)."""
    if not (math.isfinite(minutes) and minutes >= 0):
        raise ValueError(f"--checkpoint_every_minutes must be a finite number >= 0 (0 turns timed saves off), "
                         f"got {minutes}")
    return minutes


class StoppedAtOnce(KeyboardInterrupt):
    """A second signal while a stop was pending: the process stops where it is, without saving.

    A KeyboardInterrupt (not an Exception), so that no ``except Exception`` on the way up swallows it; every
    write is atomic, so the state on disk is the last complete one.
    """

    def __init__(self, signum: int):
        super().__init__(f"stopped at once by a second {signal.Signals(signum).name}; the run's last complete "
                         "checkpoint on disk is kept: run the same command again to continue from it")
        self.signum = signum
        self.exit_code = 128 + signum


class Autosave:
    """Timer and signal handling for mid-segment checkpoints.

    Args:
        every_minutes: minutes between timed saves (fractions allowed); 0 turns the timer off (signals
            still save).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, every_minutes: float, clock: Callable[[], float] = time.monotonic):
        self.interval = check_every_minutes(every_minutes) * 60.0
        self.clock = clock
        self.last = clock()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    # ------------------------------------------------------------- signals
    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second one: stop now, without waiting for a safe point
            raise StoppedAtOnce(signum)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: saving the run's state at the next safe point "
              "(send it again to stop at once)", flush=True)

    def __enter__(self) -> "Autosave":
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: no handlers, the timer still works
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    # ---------------------------------------------------------------- ticks
    @property
    def stop_pending(self) -> bool:
        return self.signum is not None

    def due(self) -> bool:
        return self.stop_pending or (self.interval > 0 and self.clock() - self.last >= self.interval)

    def saved(self) -> None:
        """Restart the timer (after any complete save, timed or not)."""
        self.last = self.clock()

    def tick(self, save: Callable[[], str]) -> None:
        """Save when due; ``save()`` returns where it saved. Raises StopRequested after a signal."""
        if not self.due():
            return
        where = save()
        self.saved()
        if self.stop_pending:
            raise StopRequested(self.signum, where)

    def checkpointed(self, where: str) -> None:
        """A point's state was just written (``where``): restart the timer, and stop here if a signal is pending."""
        self.saved()
        if self.stop_pending:
            raise StopRequested(self.signum, where)

"""How training stops before its last epoch: a request from an extension
(:meth:`Trainer.request_stop <xpcnn.train.Trainer.request_stop>`, e.g. early
stopping), or a signal (Ctrl-C's SIGINT, a scheduler's SIGTERM) turned into a
request that the loop honours after the current step, so the trainer's state
stays consistent and can be checkpointed.

In a data-parallel run the requests travel as :func:`stop_flags` through a
collective, so that every rank stops after the same step (``xpcnn.train.parallel``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["SIGNALS", "StopRequest", "TrainingInterrupted", "deferred_signals", "stop_flags"]

#: The signals that stop training after the current step: Ctrl-C and a scheduler's
#: (Slurm preemption, ``kill``, a container stop).
SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class StopRequest:
    """Why training ends early: ``reason`` (printed and stored in the history), and
    ``signum``, the signal that asked (None: :meth:`Trainer.request_stop`)."""

    reason: str
    signum: int | None = None

    @classmethod
    def from_signal(cls, signum: int, where: str = "") -> StopRequest:
        return cls(f"interrupted by {signal.Signals(signum).name}{where}", signum)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM during training: raised after the current step
    completed, so the trainer's state is consistent and can be checkpointed.
    ``status`` is the shell's exit status for the signal (130, 143)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def status(self) -> int:
        return 128 + int(self.signum)


def stop_flags(request: StopRequest | None) -> list[float]:
    """``request`` as numbers that add up over ranks: [requested, SIGINT, SIGTERM]."""
    if request is None:
        return [0.0] * (1 + len(SIGNALS))
    return [float(request.signum is None)] + [float(request.signum == s) for s in SIGNALS]


def agreed_request(flags: Sequence[float], mine: StopRequest | None) -> StopRequest | None:
    """The request that the summed ``flags`` of every rank make, or None; this rank's
    own (``mine``) when it is of the same kind, so that its reason is kept. A signal
    wins over a request; SIGTERM over SIGINT."""
    for signum, flag in reversed(list(zip(SIGNALS, flags[1:], strict=True))):
        if flag > 0:
            same = mine is not None and mine.signum == signum
            return mine if same else StopRequest.from_signal(signum, " on another rank")
    if flags[0] > 0:
        return mine if mine is not None else StopRequest("stop requested on another rank")
    return None


@contextlib.contextmanager
def deferred_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM call ``on_signal(signum)`` instead of
    acting; a second one acts at once, as the handler before the block would
    (SIGINT: KeyboardInterrupt; SIGTERM: the process ends). The previous handlers
    are restored on the way out. Outside the main thread, signals are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if not seen:
            seen.append(signum)
            on_signal(signum)
            return
        before = previous[signum]
        if callable(before):
            before(signum, frame)
        elif before != signal.SIG_IGN:  # the default action: restore it and let it act
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for signum in SIGNALS:
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for number, before in previous.items():  # None: set outside Python, not restorable
            signal.signal(number, signal.SIG_DFL if before is None else before)

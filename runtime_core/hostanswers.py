"""The answers of a host's wake-up: held while cheap groups run, then sent in one write.

Why: a host runs one wake-up's requests grouped by model (:mod:`runtime_core.host`). With
traffic over many models most groups hold one request, and a write per group woke the main
process once per request: 200 models cost more CPU per request than one model, whose
requests share a group and a write (issue 20, ``docs/benchmarks.md``). So an answer waits
for the next group when that group is surely cheap (:func:`cheap`), and a wake-up of cheap
groups leaves in one write, as one model's group does.

Bounded: answers are held at most ``host_answer_hold`` seconds (:data:`HOLD`, 0.1 ms, by
default; 0 turns holding off): a group is waited for only if the time already held plus
its model's measured cost fit in that. Before a group that is not surely cheap (a model not
measured yet, a runtime that may wait for I/O, a large request, a model whose recent calls
were long), what is held leaves first.

A group that was cheap until now and runs long is the case left. While the host holds
answers, a timer (``ITIMER_REAL``, every :data:`TICK`) sends what has been held past
``host_answer_hold``; it stops at the first tick after which nothing was held, so a quiet
host has no timer. Its handler is Python: it runs when the long call next runs Python code
or returns from a system call (``time.sleep``, I/O). A call that stays in C code throughout
keeps the held answers until it returns, or until the main process finds the host stalled
(``host_stall_after``) and sends their requests to a sibling host. A one-shot timer armed
and disarmed per wake-up did the same more exactly, but its two system calls cost as much
as the holding saved (``docs/benchmarks.md``).

Cancel and timeout: nothing is cancelled; every answer held is sent, by the timer, before
the next group that is not cheap, or at the end of the wake-up (:meth:`Answers.flush`).
Death: answers held when the host dies die with it; the main process retries their
requests as it does for every request of a dead host.

Signals: the handler is installed once per host, with ``SA_RESTART`` so that C code in a
runtime sees no interrupted system call. A runtime that installs a handler of its own for
``SIGALRM`` while it loads turns holding off (answers go per group). A worker forked from
the host gets the default handler back (:func:`reset_in_child`).
"""

from __future__ import annotations

import signal
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime_core.inference import ModelHandler

__all__ = ["HOLD", "HOLD_BYTES", "TICK", "Answers", "cheap", "reset_in_child"]

#: Most seconds an answer waits for later groups of its wake-up: the default of the
#: ``host_answer_hold`` setting.
HOLD = 100e-6
#: Seconds between the timer's looks while the host holds answers.
TICK = 0.005
#: Most request bytes of a group that held answers may wait for: a request far larger than
#: the model's usual ones may take far longer than its measured cost.
HOLD_BYTES = 16 << 10


def cheap(handler: ModelHandler, envelopes: list[Any], hold: float) -> bool:
    """Whether held answers may wait for this group: its runtime computes without waiting on
    I/O (``predict_never_waits``), its requests are small, and its model's recent calls
    (``unit_cost``, the largest of the last ones, decaying) fit in ``hold`` seconds."""
    if not handler.never_waits or handler.unit_cost * len(envelopes) > hold:
        return False
    return sum(len(e.payload) for e in envelopes) <= HOLD_BYTES


class Answers:
    """The reply frames of one host's wake-up, not yet written to its data socket."""

    def __init__(self, data: socket.socket, hold: float = HOLD) -> None:
        self.data = data
        self.pieces: list[bytes] = []
        #: Most seconds answers are held (0: never; also when ``SIGALRM`` is not ours).
        self.hold_for = hold if hold > 0 and _install(self._tick) else 0.0
        self._held_since = 0.0  # perf_counter when the oldest answer held was ready; 0: none held
        self._ticking = False
        self._holds = 0  # holds since the last tick
        self._sending = False  # a write is under way (the handler must not write beside it)

    def wait_for(self, handler: ModelHandler, envelopes: list[Any]) -> bool:
        """Hold what :attr:`pieces` holds for this next group, if it is surely cheap; ``False``:
        the caller flushes instead (the group may run long, or holding is off)."""
        if not self.hold_for:
            return False
        now = time.perf_counter()
        if not self._held_since:
            self._held_since = now
        if not cheap(handler, envelopes, self.hold_for - (now - self._held_since)):
            return False
        self._holds += 1
        if not self._ticking:
            signal.setitimer(signal.ITIMER_REAL, TICK, TICK)
            self._ticking = True
        return True

    def check_signal(self) -> None:
        """After a model's load: if its runtime took ``SIGALRM`` for a handler of its own,
        holding stops for good (the timer would no longer send held answers)."""
        if self.hold_for and signal.getsignal(signal.SIGALRM) != self._tick:
            self.hold_for = 0.0

    def flush(self) -> None:
        """Write what is held, now."""
        self._sending = True
        try:
            self._held_since = 0.0
            if self.pieces:
                data = b"".join(self.pieces)
                self.pieces.clear()
                self.data.sendall(data)
        finally:
            self._sending = False

    def _tick(self, signum: int, frame: object) -> None:
        # Between two bytecodes, wherever the host is: in a wake-up, a group that was cheap
        # until now may be running long.
        if self._sending:
            return
        if self.pieces and self._held_since and time.perf_counter() - self._held_since >= self.hold_for:
            self.flush()
        elif not self._holds and not self.pieces:  # nothing held since the last tick: quiet
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._ticking = False
        self._holds = 0


def _install(handler: Any) -> bool:
    """Make ``handler`` this process's ``SIGALRM`` handler, with ``SA_RESTART``; ``False`` when
    something else already handles the signal (or this is not the main thread)."""
    try:
        if signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, None):
            return False
        signal.signal(signal.SIGALRM, handler)
        signal.siginterrupt(signal.SIGALRM, False)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not the main thread, not POSIX
        return False
    return True


def reset_in_child() -> None:
    """In a worker forked from a host: ``SIGALRM`` back to its default (a fork keeps the
    handler, but not the timer)."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)

"""Scheduling points for a worker's long call while it runs at ``SCHED_IDLE``.

Why: while a cheap model has work, a costly model's workers run at ``SCHED_IDLE``
(:mod:`runtime_core.cpupriority`) so that the kernel runs the cheap request's processes
(the main process, a host, a client) the moment they wake. Linux's EEVDF scheduler does
that only for a woken task that is *eligible*, one not ahead of its fair share. A task that
has just shared its CPU with other normal-priority tasks comes back slightly ahead. It is
eligible again after a few microseconds of the worker's run, but nothing looks again: a
worker computing in C makes no system call, and the kernel does not preempt user space
between its ticks. The woken task waits for the next tick, up to 4 ms at 250 Hz: a cheap
request's p99 beside a costly model was one tick (issue 20, ``docs/benchmarks.md``).

What: while a batch runs on a thread whose policy is ``SCHED_IDLE``, a POSIX timer sends
that thread a real-time signal every :data:`PERIOD`. The handler is libc's
``sched_yield`` itself, a C function: a Python handler would only run when the call
returns. Each signal makes the kernel choose again, and a waiting task that is eligible by
then gets the CPU. When nothing else waits, the worker continues at once. The cost is one
signal per period of the call (measured in ``docs/benchmarks.md``).

Bounded: one timer per thread, made on first use and kept; two ``timer_settime`` calls per
batch at ``SCHED_IDLE``, and at any other policy one read of the policy. A system call made
during the batch may be interrupted: the handler is installed with ``SA_RESTART``, and
Python retries the rest (PEP 475); a batch that awaits I/O is woken once per period while
it waits, and the event loop waits again.

Cancel and timeout: the timer is disarmed when the batch ends, however it ends. Worker
death: a process's timers die with it, and a forked child inherits none (it makes its
own). Not Linux, or the signal already has a handler: :meth:`YieldPoints.arm` does
nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading

log = logging.getLogger("runtime_core.worker")

#: Seconds between scheduling points. The longest a woken task then waits behind a worker at
#: ``SCHED_IDLE``, instead of a tick (4 ms at 250 Hz).
PERIOD = 0.001

#: The real-time signal used. A process that already handles it gets no scheduling points.
SIGNAL = signal.SIGRTMIN + 10

_CLOCK_MONOTONIC = 1
_SIGEV_THREAD_ID = 4
_SA_RESTART = 0x10000000


class _Sigaction(ctypes.Structure):
    # struct sigaction of 64-bit Linux with glibc: handler, 1024-bit mask, flags, restorer.
    _fields_ = [
        ("sa_handler", ctypes.c_void_p),
        ("sa_mask", ctypes.c_ulong * 16),
        ("sa_flags", ctypes.c_int),
        ("sa_restorer", ctypes.c_void_p),
    ]


class _Sigevent(ctypes.Structure):
    # struct sigevent: value, signal, notify, then a 48-byte union whose first int is the
    # target thread's id for SIGEV_THREAD_ID.
    _fields_ = [
        ("sigev_value", ctypes.c_void_p),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("sigev_tid", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _spec(seconds: float) -> _Itimerspec:
    whole = int(seconds)
    step = _Timespec(whole, int((seconds - whole) * 1e9))
    return _Itimerspec(step, step)


_ON = _spec(PERIOD)
_OFF = _spec(0.0)

_lock = threading.Lock()
_libc: ctypes.CDLL | None = None
_installed: bool | None = None  # None: not tried in this process yet


def _install() -> bool:
    """Make ``sched_yield`` the process's handler of :data:`SIGNAL`, once; ``False`` if this is
    not possible here."""
    global _libc, _installed
    with _lock:
        if _installed is None:
            _installed = False
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                yield_address = ctypes.cast(libc.sched_yield, ctypes.c_void_p).value
                current = _Sigaction()
                if libc.sigaction(SIGNAL, None, ctypes.byref(current)) != 0:
                    return False
                if current.sa_handler not in (None, 0, yield_address):
                    log.debug("signal %d already has a handler: no scheduling points", SIGNAL)
                    return False
                action = _Sigaction(sa_handler=yield_address, sa_flags=_SA_RESTART)
                if libc.sigaction(SIGNAL, ctypes.byref(action), None) != 0:
                    return False
                libc.timer_create.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
                libc.timer_settime.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
                libc.timer_gettime.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
                _libc, _installed = libc, True
            except (OSError, AttributeError):  # pragma: no cover - not Linux
                return False
        return _installed


def _forked() -> None:
    global _lock
    _lock = threading.Lock()  # the parent may have held it; the handler itself is inherited


os.register_at_fork(after_in_child=_forked)


class YieldPoints:
    """Scheduling points for the batches of one thread (a worker's serving loop); see the
    module docstring."""

    def __init__(self) -> None:
        self._timer: ctypes.c_void_p | None = None
        self._thread = 0  # the thread the timer signals

    def _make_timer(self) -> ctypes.c_void_p | None:
        if not _install() or _libc is None:
            return None
        event = _Sigevent(sigev_signo=SIGNAL, sigev_notify=_SIGEV_THREAD_ID, sigev_tid=threading.get_native_id())
        timer = ctypes.c_void_p()
        if _libc.timer_create(_CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(timer)) != 0:
            return None
        self._thread = threading.get_native_id()
        return timer

    def arm(self) -> bool:
        """Start the scheduling points if this thread is at ``SCHED_IDLE`` now; ``True`` if they
        started, and then :meth:`disarm` must follow when the batch ends."""
        if os.sched_getscheduler(0) != os.SCHED_IDLE:
            return False
        if self._timer is None or self._thread != threading.get_native_id():
            self._timer = self._make_timer()
        if self._timer is None or _libc is None:
            return False
        return bool(_libc.timer_settime(self._timer, 0, ctypes.byref(_ON), None) == 0)

    def disarm(self) -> None:
        if self._timer is not None and _libc is not None:
            _libc.timer_settime(self._timer, 0, ctypes.byref(_OFF), None)

    def armed(self) -> bool:
        """Whether this object's timer is counting down now (for tests and diagnostics)."""
        if self._timer is None or _libc is None:
            return False
        left = _Itimerspec()
        if _libc.timer_gettime(self._timer, ctypes.byref(left)) != 0:
            return False
        return bool(left.it_value.tv_sec or left.it_value.tv_nsec)

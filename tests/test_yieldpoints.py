"""Scheduling points for a worker's batch at ``SCHED_IDLE`` (``runtime_core.yieldpoints``).

A thread may lower its own policy to ``SCHED_IDLE`` without privileges, so these tests run
the real timer and the real signal in a thread of their own. The signal is blocked in that
thread while it is checked, so that its arrival shows as pending instead of being handled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from runtime_core.testing import wait_until
from runtime_core.yieldpoints import SIGNAL, YieldPoints

T = TypeVar("T")


def in_thread(body: Callable[[], T]) -> T:
    """``body()`` on a fresh thread (whose policy it may change), its result or its error."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(body())
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def test_a_thread_at_normal_priority_gets_no_timer() -> None:
    def body() -> tuple[bool, bool]:
        points = YieldPoints()
        return points.arm(), points.armed()

    assert in_thread(body) == (False, False)


def test_a_thread_at_sched_idle_is_signalled_while_armed_and_not_after() -> None:
    def body() -> None:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        signal.pthread_sigmask(signal.SIG_BLOCK, [SIGNAL])
        try:
            points = YieldPoints()
            assert points.arm()
            assert points.armed()
            wait_until(lambda: SIGNAL in signal.sigpending(), message="the timer's signal")
            points.disarm()
            assert not points.armed()
            assert points.arm(), "a second batch arms the same timer again"
            points.disarm()
            assert not points.armed()
        finally:
            signal.sigtimedwait([SIGNAL], 0)  # a signal still pending (recent kernels drop it on disarm)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [SIGNAL])

    in_thread(body)


def test_the_handler_lets_a_busy_call_and_a_sleep_finish_with_their_results() -> None:
    """Unblocked, the signal runs ``sched_yield`` in the middle of C code and of a sleep
    (which Python resumes): the process survives and the results are the ones expected."""

    def body() -> tuple[int, str]:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        points = YieldPoints()
        assert points.arm()
        try:
            total = sum(range(3_000_000))
            threading.Event().wait(0.02)
            return total, str(sorted(range(100_000), reverse=True)[0])
        finally:
            points.disarm()

    assert in_thread(body) == (sum(range(3_000_000)), "99999")


def test_a_signal_the_process_already_handles_is_left_to_its_handler() -> None:
    """A model's own code that took the signal first keeps it: no scheduling points, and its
    handler is still the one called."""
    script = """
import os, signal, threading
from runtime_core.yieldpoints import SIGNAL, YieldPoints
seen = []
signal.signal(SIGNAL, lambda *_: seen.append(1))
def body():
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    print(YieldPoints().arm())
thread = threading.Thread(target=body)
thread.start(); thread.join()
signal.raise_signal(SIGNAL)
print(seen)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "[1]"]

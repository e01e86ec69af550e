"""Process plumbing shared by the templates and the workers: names, lifetimes, logging.

Nothing here knows about models or requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import Any

#: Thread caps applied to the templates' environment before numpy and friends import.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - not Linux
        return threading.active_count()


def set_parent_death_signal() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def set_process_name(name: str) -> None:
    """Set the kernel's name for this process (``ps -o comm``, ``top``; 15 bytes at most)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def watch_main_process(pid: int) -> None:
    """Daemon thread body: exit at once when the main process is gone."""
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
    select.select([fd], [], [])
    os._exit(1)


try:  # imported here, in the templates, so that forked workers need not import it
    import uvloop as _uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    _uvloop = None  # type: ignore[assignment]


def new_loop() -> asyncio.AbstractEventLoop:
    if _uvloop is not None:
        return _uvloop.new_event_loop()
    return asyncio.new_event_loop()  # pragma: no cover


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, pid, message, and
    ``model`` when the call passed ``extra={"model": ...}``; ``exception`` holds a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime
        import json

        doc: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        model = getattr(record, "model", None)
        if model is not None:
            doc["model"] = model
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure_logging(level: str, fmt: str | None = None) -> None:
    """Log to stderr at ``level``; ``fmt`` is ``text`` or ``json`` (default: the
    ``RUNTIME_CORE_LOG_FORMAT`` variable, which workers inherit from the server)."""
    handler = logging.StreamHandler(sys.stderr)
    if (fmt or os.environ.get("RUNTIME_CORE_LOG_FORMAT", "text")).lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)

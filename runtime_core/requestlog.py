"""The request log's writer (``request_log = true``), shared by both front ends.

One JSON object per inference request, written to stderr through the logger
``runtime_core.requests`` as a bare line whatever ``log_format`` says, so that a log shipper
can parse them line by line. The data plane's :class:`~runtime_core.dataplane.Observation`
gathers the fields, from what the server measured anyway, and calls :func:`write`.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

from runtime_core.envelope import Outcome

log = logging.getLogger("runtime_core.requests")

#: The metadata key (gRPC) and header (HTTP) that carries a request's id, in and out.
REQUEST_ID = "X-Request-ID"


def setup() -> None:
    """Give the logger a handler of its own that writes each message as it is."""
    if not any(getattr(h, "_rc_request_log", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._rc_request_log = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # not again through the server's own (text or JSON) handler


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def write(
    *,
    protocol: str,
    model: str | None,
    version: str | None,
    status: int,
    request_id: str,
    bytes_in: int,
    bytes_out: int,
    outcome: Outcome | None,
    total: float,
) -> None:
    """Write one request's line. ``outcome``: the worker's answer, which gives the queue and
    compute times (``None`` when no worker answered: both are ``null``); ``total`` in seconds."""
    line = {
        "time": round(time.time(), 3),
        "protocol": protocol,
        "model": model,
        "version": version,
        "status": status,
        "request_id": request_id,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "queue_ms": ms(outcome.queued) if outcome is not None else None,
        "compute_ms": ms(outcome.compute) if outcome is not None else None,
        "total_ms": ms(total),
    }
    log.info("%s", orjson.dumps(line).decode())

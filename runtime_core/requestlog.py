"""The request log's writer (``request_log = true``), shared by both front ends.

One JSON object per inference request, written to stderr through the logger
``runtime_core.requests`` as a bare line whatever ``log_format`` says, so that a log shipper
can parse them line by line. The front ends (:mod:`runtime_core.rest.requestlog`, and the
gRPC service) gather the fields from what they measured anyway and call :func:`write`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

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


def write(line: dict[str, Any]) -> None:
    log.info("%s", orjson.dumps(line).decode())

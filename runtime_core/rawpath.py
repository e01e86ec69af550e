"""The request path of a runtime that reads requests itself (``Runtime.raw_requests``).

:class:`~runtime_core.inference.ModelHandler` hands such a runtime the requests of a
wake-up as they came: each one's deadline is checked first (an expired one is answered
504 without reaching the runtime), the rest go to ``infer_raw`` in one call, in the trace
context of the first that has one, and each reply's bytes become its outcome. A reply
that is an exception, or an ``infer_raw`` that raises, is answered like a failing
``predict`` (``InvalidRequest``: 400; anything else: 500 with an error id, logged).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import InferenceFailed
from runtime_core.runtime import RawReply, Runtime
from runtime_core.tracing import attach, detach

__all__ = ["RawHandler", "run_raw"]

log = logging.getLogger("runtime_core.inference")


class RawHandler(Protocol):
    """What :func:`run_raw` needs of a :class:`~runtime_core.inference.ModelHandler`."""

    runtime: Runtime
    model_name: str

    def check_deadline(self, envelope: Envelope) -> None: ...

    def _error(self, exc: BaseException, started: float) -> Outcome: ...


async def run_raw(handler: RawHandler, envelopes: list[Envelope], started: float) -> list[Outcome]:
    """The requests of a ``raw_requests`` runtime: handed over as they came, answered as it replies."""
    outcomes: list[Outcome | None] = [None] * len(envelopes)
    live: list[Envelope] = []
    places: list[int] = []
    for i, envelope in enumerate(envelopes):
        try:
            handler.check_deadline(envelope)
        except Exception as exc:
            outcomes[i] = handler._error(exc, started)
        else:
            live.append(envelope)
            places.append(i)
    if live:
        trace = next((e.trace for e in live if e.trace), "")
        token = attach(trace) if trace else None
        try:
            replies: list[RawReply | Exception] = await handler.runtime.infer_raw(live)
        except Exception as exc:
            replies = [exc] * len(live)
        finally:
            if token is not None:
                detach(token)
        if len(replies) != len(live):
            log.error("model %r: infer_raw answered %d of %d requests", handler.model_name, len(replies), len(live))
            failure = InferenceFailed(f"model {handler.model_name!r}: its runtime lost requests")
            replies = [failure] * len(live)
        # The runtime's time, shared evenly; how it grouped the requests (if at all) it keeps
        # to itself, so each counts as a call of its own.
        elapsed = (time.perf_counter() - started) / len(live)
        for i, reply in zip(places, replies, strict=True):
            if isinstance(reply, RawReply):
                outcomes[i] = Outcome(
                    code=0, body=reply.body, wire=reply.wire, header_length=reply.header_length, compute=elapsed
                )
            else:
                outcomes[i] = handler._error(reply, started)
    return [o for o in outcomes if o is not None]

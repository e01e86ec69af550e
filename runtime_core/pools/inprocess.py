"""``parallel_workers: 0``: the model runs in the main process's event loop.

Bounded by ``capacity`` (the batch depth). Cancel: a cancelled future's request still
runs; its outcome is dropped. There is no worker to die: a runtime that blocks the loop
blocks the server, which is why this mode is opt-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from runtime_core.batchloop import BatchLoop
from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import ModelLoadError
from runtime_core.inference import ModelHandler
from runtime_core.pools.base import ModelPool, PoolHealth
from runtime_core.pools.dispatch import BATCH_DEPTH
from runtime_core.runtime import Runtime

log = logging.getLogger("runtime_core.pools")


class InProcessPool(ModelPool):
    """``parallel_workers: 0``: the runtime lives in the main process and runs in its event
    loop, fed by the same batch loop as a worker."""

    def __init__(self, runtime: Runtime, depth: int = 1, max_elements: int = 0) -> None:
        self._runtime = runtime
        batch = BATCH_DEPTH if getattr(runtime, "supports_batching", False) else 1
        self._depth = max(depth, runtime.settings.max_batch_size, batch)
        self._batcher = BatchLoop(
            ModelHandler(runtime, max_elements), runtime.settings.max_batch_size, runtime.settings.max_batch_time
        )
        self._runner: asyncio.Task[None] | None = None
        self._inflight = 0
        self._closing = False

    async def start(self) -> None:
        try:
            await self._runtime.load()
        except Exception as exc:
            log.debug("in-process load failed", exc_info=True)
            raise ModelLoadError(str(exc), model=self._runtime.context.model_name) from exc
        self.metadata = self._runtime.metadata()
        self._runner = asyncio.get_running_loop().create_task(self._batcher.run())

    @property
    def capacity(self) -> int:
        return self._depth

    @property
    def inflight(self) -> int:
        return self._inflight

    def submit(self, envelope: Envelope) -> asyncio.Future[Outcome]:
        self._inflight += 1
        future = self._batcher.submit(envelope)
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: object) -> None:
        # No on_capacity() here: room frees only when one of the pool's requests ends, which the
        # scheduler sees itself (the future it got from submit); telling it again would run its
        # dispatch a second time per request, before its own accounting of the request.
        self._inflight -= 1

    def health(self) -> PoolHealth:
        return PoolHealth(workers=0, ready=0 if self._closing else 1, restarts=0)

    async def aclose(self, grace: float = 30.0) -> None:
        self._closing = True
        deadline = time.monotonic() + grace
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._batcher.close()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner
        with contextlib.suppress(Exception):
            await self._runtime.unload()

"""The model repository: which models exist, their state, and load/unload/reload.

The repository folder is scanned for ``model-settings.json`` files. A model may have
several versions side by side: several folders with one ``name`` and different
``parameters.version`` (MLServer's layout), or numeric version folders ``<model>/1/``,
``<model>/2/`` under one settings file (Triton's layout). Each version of each model is
keyed ``name`` or ``name/version`` (:func:`~runtime_core.model_names.model_key`) and gets its
own record, pool (see :mod:`runtime_core.pools`) and lane in the scheduler: to the
scheduler, the pools, the statistics and the memory budget a version is a model. The
repository API's load and unload act on every version of a name; a request without a
version goes to the model's default version (:meth:`ModelRepository.get`).

Operations on one version are serialised by a per-version lock; operations on
different ones run concurrently, and at most ``max_concurrent_loads``
of them load at the same time (peak memory is the sum of what loads at once).

Reload (a ``load`` of a model that is READY) starts a new pool beside the old
one, switches the scheduler to it once it is ready, then drains and closes the
old pool: requests in flight finish on the old workers and none fail. If the
new pool fails to load, the old one keeps serving and the error is returned.

Bounds and endings. At most ``max_concurrent_loads`` pools start at once; each start is
bounded by ``startup_timeout`` in the pool. A caller that goes away does not stop an
operation it asked for: :meth:`ModelRepository.load` and :meth:`ModelRepository.unload` run
as tasks of their own that the caller only awaits (a gRPC call past its deadline is cancelled
on the server side; cancelling a load half-way would leave the version LOADING with a pool
half started). A load whose worker or host dies fails with that error: a first load leaves
the version UNAVAILABLE with the reason, a reload leaves the previous version serving. At
shutdown (:meth:`ModelRepository.aclose`) operations still running are cancelled, then
every pool is drained and closed.

The repository coordinates; its parts are :mod:`runtime_core.repository_scan` (what the
folder holds, with each settings file's parse reused while it is unchanged) and
:mod:`runtime_core.model_records` (each version's record and state, found by name and
version).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from runtime_core.errors import ModelLoadError, ModelNotFound, RuntimeCoreError, SettingsError
from runtime_core.limits import memory_limit
from runtime_core.model_names import split_key, valid_name
from runtime_core.model_records import ModelRecord, ModelState, RecordBook, label
from runtime_core.plugins import RuntimeEntry, RuntimeRegistry
from runtime_core.pools.factory import PoolFactory
from runtime_core.repository_scan import INDEX_SCAN_SECONDS, RepositoryScan
from runtime_core.sanitize import client_message, quoted
from runtime_core.scheduler import FairScheduler
from runtime_core.settings import ModelSettings, ServerSettings
from runtime_core.steps import run_steps_async

if TYPE_CHECKING:
    from runtime_core.pools.base import ModelPool

T = TypeVar("T")

# The record types, split_key and INDEX_SCAN_SECONDS lived here before issue 22 split them
# off; the front ends, the statistics, the metrics and the CLI still import them from here.
__all__ = [
    "INDEX_SCAN_SECONDS",
    "ModelRecord",
    "ModelRepository",
    "ModelState",
    "Progress",
    "default_memory_budget",
    "split_key",
]

log = logging.getLogger("runtime_core.repository")


def default_memory_budget() -> int:
    """Half the memory of the machine, or of the container's cgroup limit when that is lower."""
    return max((memory_limit() or 0) // 2, 64 * 1024 * 1024)


#: ``progress(name, runtime, seconds, error)`` is called once per model load.
Progress = Callable[[str, str, float, str | None], None]


def _quiet(name: str, runtime: str, seconds: float, error: str | None) -> None:
    return None


class ModelRepository:
    """Owns every model's record and pool; the REST layer and the CLI drive it."""

    def __init__(
        self,
        root: Path | None,
        server: ServerSettings,
        registry: RuntimeRegistry,
        scheduler: FairScheduler,
        *,
        progress: Progress = _quiet,
    ) -> None:
        self.root = root.resolve() if root else None
        self.server = server
        self.registry = registry
        self.scheduler = scheduler
        self.progress = progress
        self._records = RecordBook()
        self._scanner = RepositoryScan(self.root, server, registry)
        #: By key: the lock of a version and how many operations hold or wait for it; dropped
        #: when none does, so that idle models cost no lock each (issue 23).
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._limiter = asyncio.Semaphore(server.max_concurrent_loads)
        budget = server.memory_budget if server.memory_budget is not None else default_memory_budget()
        self.pools = PoolFactory(server, budget)  # chooses each model's backend (issue 22)
        self.residency = self.pools.residency
        #: Whether pools load on first request: ``lazy_load``, with "auto" decided by the
        #: number of models found at start (see :meth:`load_all`).
        self._lazy = server.lazy_load is True
        #: The scan made before the event loop started (by :meth:`prewarm`), used once by
        #: :meth:`load_all` instead of parsing every settings file a second time.
        self._prescan: tuple[dict[str, ModelSettings], list[SettingsError]] | None = None
        #: Loads and unloads under way for callers (see :meth:`_detached`).
        self._operations: set[asyncio.Task[Any]] = set()
        #: The repository index's scan of the folder while one runs (:meth:`index`).
        self._index_scan: asyncio.Future[set[str]] | None = None

    # ------------------------------------------------------------------ discovery

    def scan(self) -> tuple[dict[str, ModelSettings], list[SettingsError]]:
        """Parse every model settings file; returns the valid ones by key (``name`` or
        ``name/version``) and the errors (``model`` of each: the key it concerns)."""
        return self._scanner.scan()

    def prewarm(self, found: dict[str, ModelSettings] | None = None) -> None:
        """Start the root template of every runtime the repository uses (``found``: a scan
        already made). Importing a framework is slow but light on memory, so it starts at
        once for all runtimes (even before the event loop, from the command line) and outside
        the load limiter; starting it twice is a no-op."""
        if found is None:
            self._prescan = self.scan()
            found = self._prescan[0]
        paths: list[str] = []
        for settings in found.values():
            with contextlib.suppress(RuntimeCoreError):
                entry = self._entry(settings)
                if settings.workers(self.server) > 0 and entry.import_path not in paths:
                    paths.append(entry.import_path)
        self.pools.prewarm(paths)

    async def load_all(self) -> None:
        """Load every model found; failures are recorded UNAVAILABLE, the others serve."""
        if self._prescan is not None:
            (found, errors), self._prescan = self._prescan, None
        else:
            found, errors = self.scan()
            self.prewarm(found)
        self._lazy = self.server.lazy_for(len(found))
        if self._lazy and self.server.lazy_load == "auto":
            log.info("%d models: each loads on its first request (lazy_load auto)", len(found))
        for error in errors:
            name = error.model or (Path(error.path).parent.name if error.path else "?")
            record = self._record(*split_key(name))
            record.state = ModelState.UNAVAILABLE
            record.reason = client_message(error.message)
            log.error("%s", error.message)
            self.progress(name, "?", 0.0, error.message)
        await asyncio.gather(*(self._load(s) for s in found.values()))

    # ------------------------------------------------------------------ operations

    @contextlib.asynccontextmanager
    async def _lock(self, key: str) -> AsyncIterator[None]:
        """Hold the lock of one version (operations on it run one at a time)."""
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0] and self._locks.get(key) is entry:
                del self._locks[key]

    def _record(self, name: str, version: str | None) -> ModelRecord:
        """The record of one version of a model, made on first use."""
        return self._records.ensure(name, version)

    def _detached(self, coro: Coroutine[Any, Any, T] | asyncio.Future[T]) -> Awaitable[T]:
        """Run ``coro`` as a task of its own, which goes on if the caller is cancelled."""
        task = asyncio.ensure_future(coro)
        self._operations.add(task)
        task.add_done_callback(self._operation_done)
        return asyncio.shield(task)

    def _operation_done(self, task: asyncio.Task[Any]) -> None:
        self._operations.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that left is not told, and need not be

    async def load(self, name: str) -> list[ModelRecord]:
        """Load every version of ``name`` from the repository folder (reloading the loaded
        ones, unloading the ones whose folder is gone); errors if any version fails. Runs to
        its end even if the caller is cancelled."""
        return await self._detached(self._load_name(name))

    async def _load_name(self, name: str) -> list[ModelRecord]:
        if not valid_name(name):
            raise ModelNotFound(f"invalid model name {quoted(name)}")
        found, errors = await self._scanner.scan_async()
        wanted = [s for s in found.values() if s.name == name]
        if not wanted:
            for error in errors:
                if error.model is not None and split_key(error.model)[0] == name:
                    raise error
            raise ModelNotFound(f"model {quoted(name)} is not in the model repository", model=name)
        results = await asyncio.gather(*(self._load(s) for s in wanted), return_exceptions=True)
        keys = {s.key for s in wanted}
        for record in self._records.of_name(name):
            if record.key not in keys and record.state is ModelState.READY:
                await self._unload(record.key)
        records: list[ModelRecord] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            records.append(result)
        for record in records:
            if record.state is not ModelState.READY:
                # Settings problems (a runtime not installed, ...) are the caller's to fix: 400.
                kind = SettingsError if isinstance(record.error, SettingsError) else ModelLoadError
                raise kind(f"model {label(record)} failed to load: {record.reason}", model=name)
        return records

    def _entry(self, settings: ModelSettings) -> RuntimeEntry:
        return self.registry.get(settings.runtime_name, model=settings.name, path=str(settings.path))

    def _make_pool(self, settings: ModelSettings, entry: RuntimeEntry) -> ModelPool:
        uri = settings.resolve_uri(self.root, entry.cls.artifact_names)
        return self.pools.make(settings, entry, uri, lazy=self._lazy)

    async def _load(self, settings: ModelSettings) -> ModelRecord:
        name = settings.key  # in logs and in the progress lines: which version
        async with self._lock(name):
            record = self._record(settings.name, settings.version)
            reloading = record.state is ModelState.READY and name in self.scheduler
            if not reloading:
                record.state = ModelState.LOADING
                record.reason = ""
            started = time.perf_counter()
            runtime_name = settings.runtime_name
            try:
                entry = self._entry(settings)
                runtime_name = entry.name
                pool = self._make_pool(settings, entry)
                async with self._limiter:
                    await pool.start()
            except Exception as exc:
                if not isinstance(exc, RuntimeCoreError):  # a bug, in a plugin or here: log it whole
                    log.log(
                        logging.DEBUG if reloading else logging.ERROR,
                        "model %r: unexpected error while loading",
                        name,
                        exc_info=True,
                    )
                    exc = ModelLoadError(f"unexpected error: {exc}", model=name)
                seconds = time.perf_counter() - started
                if reloading:
                    # Not a start-up failure: the model still serves (issue 20). One line, naming
                    # the file that was read; the worker's traceback is at debug.
                    log.error(
                        "model %r (%s): reload failed, the previous version keeps serving: %s",
                        name,
                        self._artifact_or_settings(settings),
                        exc.message,
                    )
                else:
                    log.error("model %r (%s): load failed: %s", name, settings.path, exc.message)
                    self.progress(name, runtime_name, seconds, exc.message)
                record.error = exc
                if not reloading:
                    record.state = ModelState.UNAVAILABLE
                    record.reason = client_message(exc.message)
                    record.settings = settings
                    record.runtime = runtime_name
                    return record
                raise
            seconds = time.perf_counter() - started
            old_pool = None
            if reloading:
                old_pool = self.scheduler.replace_pool(name, pool)
            else:
                self.scheduler.add(
                    name,
                    pool,
                    weight=settings.weight,
                    max_queue=settings.max_queue_size or self.server.max_queue_size,
                )
            record.pool = pool
            record.settings = settings
            record.runtime = runtime_name
            record.raw_requests = entry.cls.raw_requests
            record.state = ModelState.READY
            record.reason = ""
            record.load_time = seconds
            self.progress(name, runtime_name, seconds, None)
            if old_pool is not None:
                await old_pool.aclose()
            return record

    async def unload(self, name: str) -> None:
        """Unload every loaded version of ``name``; runs to its end even if the caller is
        cancelled."""
        loaded = [r for r in self._records.of_name(name) if r.state is ModelState.READY]
        if not loaded:
            raise ModelNotFound(f"model {quoted(name)} is not loaded", model=name)
        await self._detached(asyncio.gather(*(self._unload(r.key) for r in loaded)))

    async def _unload(self, key: str) -> None:
        record = self._records.get(key)
        if record is None:
            return
        async with self._lock(key):
            if record.state is not ModelState.READY:
                return
            record.state = ModelState.UNLOADING
            pool = self.scheduler.remove(key)
            if pool is not None:
                await pool.aclose()
            record.pool = None
            record.state = ModelState.UNAVAILABLE
            record.reason = "unloaded"
            log.info("model %r unloaded", key)

    # ------------------------------------------------------------------ watching

    def _artifact_or_settings(self, settings: ModelSettings) -> Path | None:
        """The model's artifact, when it can be told, else its settings file: the file a
        failed load most likely failed on."""
        try:
            return settings.resolve_uri(self.root, self._entry(settings).cls.artifact_names) or settings.path
        except RuntimeCoreError:
            return settings.path

    async def watch(self, interval: float) -> None:
        """Poll the repository folder: load new models, reload changed ones (new workers up,
        then switch, then old ones drained), unload removed ones. Runs until cancelled."""
        known = await run_steps_async(self._scanner.fingerprints((await self._scanner.scan_async())[0]))
        while True:
            await asyncio.sleep(interval)
            try:
                found, _ = await self._scanner.scan_async()
                current = await run_steps_async(self._scanner.fingerprints(found))
            except OSError as exc:
                log.warning("cannot scan the model repository: %s", exc)
                continue
            for name in sorted(set(known) - set(current)):
                record = self._records.get(name)
                if record is not None and record.state is ModelState.READY:
                    log.info("model %r: its folder is gone; unloading", name)
                    await self._unload(name)
            for name, stamp in sorted(current.items()):
                if known.get(name) == stamp:
                    continue
                log.info("model %r: files changed; (re)loading", name)
                try:
                    await self._load(found[name])
                except RuntimeCoreError:
                    pass  # _load said it in one line; the previous version keeps serving
            known = current

    async def aclose(self, grace: float = 30.0) -> None:
        for task in list(self._operations):
            task.cancel()
        await asyncio.gather(*self._operations, return_exceptions=True)
        loaded = [r for r in self._records if r.pool is not None]
        pools = [self.scheduler.remove(r.key) for r in loaded]
        await asyncio.gather(*(p.aclose(grace) for p in pools if p is not None), return_exceptions=True)
        for record in loaded:
            record.pool = None
            record.state = ModelState.UNAVAILABLE
            record.reason = "server stopped"
        await self.pools.aclose()

    # ------------------------------------------------------------------ queries

    def get(self, name: str, version: str | None = None) -> ModelRecord:
        """The record of ``version`` of ``name`` or, without a version, of its default version:
        ``default_version`` from its settings, else its highest ready version, else its highest
        version (see :func:`~runtime_core.model_names.version_order`)."""
        return self._records.find(name, version)

    def versions(self, name: str, ready_only: bool = True) -> list[str]:
        """The versions of ``name`` (the READY ones, by default), lowest first."""
        return self._records.versions(name, ready_only)

    def record(self, key: str) -> ModelRecord | None:
        """The record of one version by its key (``name`` or ``name/version``)."""
        return self._records.get(key)

    async def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """One row per version of every model found or loaded: name, version (if any), state,
        reason and, for a loaded one, residency. The folder's models come from a scan at most
        ``INDEX_SCAN_SECONDS`` old, made in steps between the loop's other work; callers that
        come while it runs share it."""
        found = self._scanner.fresh_for_index()
        if found is None:
            if self._index_scan is None:
                self._index_scan = asyncio.ensure_future(self._scanner.found_for_index())
                self._index_scan.add_done_callback(self._index_scanned)
            found = await asyncio.shield(self._index_scan)
        return await run_steps_async(self._records.index(found, ready_only))

    def _index_scanned(self, scan: asyncio.Future[set[str]]) -> None:
        self._index_scan = None
        if not scan.cancelled():
            scan.exception()  # seen by the callers that awaited it; not logged as never retrieved

    def records(self) -> list[ModelRecord]:
        """Every version's record, by name then version."""
        return self._records.ordered()

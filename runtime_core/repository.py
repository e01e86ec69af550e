"""The model repository: which models exist, their state, and load/unload/reload.

The repository folder is scanned for ``model-settings.json`` files. Each model
gets a pool (see :mod:`runtime_core.pools`) and a lane in the scheduler. Model
operations on one name are serialised by a per-model lock; operations on
different models run concurrently, and at most ``max_concurrent_loads``
models load at the same time (peak memory is the sum of what loads at once).

Reload (a ``load`` of a model that is READY) starts a new pool beside the old
one, switches the scheduler to it once it is ready, then drains and closes the
old pool: requests in flight finish on the old workers and none fail. If the
new pool fails to load, the old one keeps serving and the error is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from runtime_core.errors import ModelLoadError, ModelNotFound, RuntimeCoreError, SettingsError
from runtime_core.inference import client_message
from runtime_core.layout import single_model
from runtime_core.limits import memory_limit
from runtime_core.plugins import RuntimeEntry, RuntimeRegistry
from runtime_core.pools.base import ModelPool
from runtime_core.pools.inprocess import InProcessPool
from runtime_core.pools.process import ProcessPool
from runtime_core.pools.ray import RayPool
from runtime_core.pools.residency import Residency
from runtime_core.pools.templates import Templates
from runtime_core.runtime import ModelMetadata, RuntimeContext
from runtime_core.scheduler import FairScheduler
from runtime_core.settings import (
    MODEL_NAME_RE,
    ModelSettings,
    ServerSettings,
    find_model_settings,
    load_model_settings,
)

log = logging.getLogger("runtime_core.repository")


def default_memory_budget() -> int:
    """Half the memory of the machine, or of the container's cgroup limit when that is lower."""
    return max((memory_limit() or 0) // 2, 64 * 1024 * 1024)


class ModelState(StrEnum):
    UNKNOWN = "UNKNOWN"
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class ModelRecord:
    name: str
    state: ModelState = ModelState.UNKNOWN
    reason: str = ""
    settings: ModelSettings | None = None
    pool: ModelPool | None = None
    runtime: str = ""
    load_time: float = 0.0
    error: RuntimeCoreError | None = None

    @property
    def version(self) -> str | None:
        return self.settings.version if self.settings else None

    @property
    def metadata(self) -> ModelMetadata | None:
        return self.pool.metadata if self.pool else None


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
        self._records: dict[str, ModelRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._limiter = asyncio.Semaphore(server.max_concurrent_loads)
        self.templates = Templates(server.log_level, server.startup_timeout)
        budget = server.memory_budget if server.memory_budget is not None else default_memory_budget()
        self.residency = Residency(budget, self.templates, server.worker_timeout)

    # ------------------------------------------------------------------ discovery

    def scan(self) -> tuple[dict[str, ModelSettings], list[SettingsError]]:
        """Parse every model settings file; returns the valid ones by name and the errors."""
        found: dict[str, ModelSettings] = {}
        errors: list[SettingsError] = []
        if self.root is None:
            return found, errors
        paths = find_model_settings(self.root)
        if not paths:  # KServe's layout: one model's files, no settings file (issue 11)
            return single_model(self.root, self.server, self.registry)
        for path in paths:
            try:
                settings = load_model_settings(path)
            except SettingsError as exc:
                errors.append(exc)
                continue
            if settings.name in found:
                errors.append(
                    SettingsError(
                        f"{path}: model name {settings.name!r} is already used by {found[settings.name].path}",
                        model=settings.name,
                        path=str(path),
                    )
                )
                continue
            found[settings.name] = settings
        return found, errors

    def prewarm(self, found: dict[str, ModelSettings] | None = None) -> None:
        """Start the root template of every runtime the repository uses (``found``: a scan
        already made). Importing a framework is slow but light on memory, so it starts at
        once for all runtimes (even before the event loop, from the command line) and outside
        the load limiter; starting it twice is a no-op."""
        if found is None:
            found, _ = self.scan()
        paths: list[str] = []
        for settings in found.values():
            with contextlib.suppress(RuntimeCoreError):
                entry = self._entry(settings)
                if settings.workers(self.server) > 0 and entry.import_path not in paths:
                    paths.append(entry.import_path)
        self.templates.prewarm(paths)

    async def load_all(self) -> None:
        """Load every model found; failures are recorded UNAVAILABLE, the others serve."""
        found, errors = self.scan()
        self.prewarm(found)
        for error in errors:
            name = error.model or (Path(error.path).parent.name if error.path else "?")
            record = self._records.setdefault(name, ModelRecord(name))
            record.state = ModelState.UNAVAILABLE
            record.reason = client_message(error.message)
            log.error("%s", error.message)
            self.progress(name, "?", 0.0, error.message)
        await asyncio.gather(*(self._load(s) for s in found.values()))

    # ------------------------------------------------------------------ operations

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str) -> ModelRecord:
        """Load ``name`` from the repository folder, or reload it if it is loaded."""
        if not MODEL_NAME_RE.match(name) or ".." in name:
            raise ModelNotFound(f"invalid model name {name!r}")
        found, errors = self.scan()
        settings = found.get(name)
        if settings is None:
            for error in errors:
                if error.model == name:
                    raise error
            raise ModelNotFound(f"model {name!r} is not in the model repository", model=name)
        record = await self._load(settings)
        if record.state is not ModelState.READY:
            # Settings problems (a runtime not installed, ...) are the caller's to fix: 400.
            kind = SettingsError if isinstance(record.error, SettingsError) else ModelLoadError
            raise kind(f"model {name!r} failed to load: {record.reason}", model=name)
        return record

    def _entry(self, settings: ModelSettings) -> RuntimeEntry:
        return self.registry.get(settings.runtime_name, model=settings.name, path=str(settings.path))

    def _make_pool(self, settings: ModelSettings, entry: RuntimeEntry) -> ModelPool:
        uri = settings.resolve_uri(self.root, entry.cls.artifact_names)
        if settings.backend_name(self.server) == "ray":  # workers as Ray actors (issue 11)
            return RayPool(settings, entry, self.server, uri=str(uri) if uri else None)
        if settings.workers(self.server) == 0:
            assert settings.folder is not None
            context = RuntimeContext(
                model_name=settings.name,
                version=settings.version,
                folder=settings.folder,
                uri=uri,
                threads=settings.thread_cap(self.server),
                worker_index=None,
            )
            return InProcessPool(entry.cls(settings, context), self.server.pipeline_depth, self.server.max_elements)
        return ProcessPool(
            settings,
            entry,
            self.server,
            uri=str(uri) if uri else None,
            templates=self.templates,
            residency=self.residency,
            lazy=self.server.lazy_load,
        )

    async def _load(self, settings: ModelSettings) -> ModelRecord:
        name = settings.name
        async with self._lock(name):
            record = self._records.setdefault(name, ModelRecord(name))
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
                    log.error("model %r: unexpected error while loading", name, exc_info=True)
                    exc = ModelLoadError(f"unexpected error: {exc}", model=name)
                seconds = time.perf_counter() - started
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
            record.state = ModelState.READY
            record.reason = ""
            record.load_time = seconds
            self.progress(name, runtime_name, seconds, None)
            if old_pool is not None:
                await old_pool.aclose()
            return record

    async def unload(self, name: str) -> None:
        record = self._records.get(name)
        if record is None or record.state is ModelState.UNKNOWN:
            raise ModelNotFound(f"model {name!r} is not loaded", model=name)
        async with self._lock(name):
            if record.state is not ModelState.READY:
                raise ModelNotFound(f"model {name!r} is not loaded", model=name)
            record.state = ModelState.UNLOADING
            pool = self.scheduler.remove(name)
            if pool is not None:
                await pool.aclose()
            record.pool = None
            record.state = ModelState.UNAVAILABLE
            record.reason = "unloaded"
            log.info("model %r unloaded", name)

    # ------------------------------------------------------------------ watching

    def _fingerprints(self, found: dict[str, ModelSettings]) -> dict[str, tuple[Any, ...]]:
        """Per model: sizes and mtimes of its settings file, the files beside it and its URI."""
        prints: dict[str, tuple[Any, ...]] = {}
        for name, settings in found.items():
            files: set[Path] = set()
            if settings.folder is not None:
                files.update(p for p in settings.folder.iterdir() if p.is_file())
            try:
                uri = settings.resolve_uri(self.root)
            except SettingsError:
                uri = None
            if uri is not None and uri.is_file():
                files.add(uri)
            stamp = []
            for path in sorted(files):
                try:
                    st = path.stat()
                except OSError:
                    continue
                stamp.append((str(path), st.st_mtime_ns, st.st_size))
            prints[name] = tuple(stamp)
        return prints

    async def watch(self, interval: float) -> None:
        """Poll the repository folder: load new models, reload changed ones (new workers up,
        then switch, then old ones drained), unload removed ones. Runs until cancelled."""
        known = self._fingerprints(self.scan()[0])
        while True:
            await asyncio.sleep(interval)
            try:
                found, _ = self.scan()
                current = self._fingerprints(found)
            except OSError as exc:
                log.warning("cannot scan the model repository: %s", exc)
                continue
            for name in sorted(set(known) - set(current)):
                record = self._records.get(name)
                if record is not None and record.state is ModelState.READY:
                    log.info("model %r: its folder is gone; unloading", name)
                    with contextlib.suppress(RuntimeCoreError):
                        await self.unload(name)
            for name, stamp in sorted(current.items()):
                if known.get(name) == stamp:
                    continue
                log.info("model %r: files changed; (re)loading", name)
                try:
                    await self._load(found[name])
                except RuntimeCoreError as exc:
                    log.error("model %r: reload failed, the old version keeps serving: %s", name, exc.message)
            known = current

    async def aclose(self, grace: float = 30.0) -> None:
        names = [n for n, r in self._records.items() if r.pool is not None]
        pools = [self.scheduler.remove(n) for n in names]
        await asyncio.gather(*(p.aclose(grace) for p in pools if p is not None), return_exceptions=True)
        for name in names:
            self._records[name].pool = None
            self._records[name].state = ModelState.UNAVAILABLE
            self._records[name].reason = "server stopped"
        await self.residency.aclose()
        await self.templates.aclose()

    # ------------------------------------------------------------------ queries

    def get(self, name: str, version: str | None = None) -> ModelRecord:
        record = self._records.get(name)
        if record is None:
            raise ModelNotFound(f"model {name!r} not found", model=name)
        if version is not None and version != (record.version or "") and not (
            record.settings and version in record.settings.versions
        ):
            raise ModelNotFound(f"model {name!r} has no version {version!r}", model=name)
        return record

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        found, _ = self.scan()
        names = sorted(set(self._records) | set(found))
        out = []
        for name in names:
            record = self._records.get(name) or ModelRecord(name, settings=found.get(name))
            if ready_only and record.state is not ModelState.READY:
                continue
            item: dict[str, Any] = {"name": name}
            version = record.version or (found[name].version if name in found else None)
            if version:
                item["version"] = version
            item["state"] = record.state.value
            item["reason"] = record.reason
            if record.pool is not None:
                item["residency"] = record.pool.health().residency
            out.append(item)
        return out

    def records(self) -> list[ModelRecord]:
        return list(self._records.values())

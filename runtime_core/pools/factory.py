"""The one place that chooses where a model's requests run, and owns what backends share.

:class:`PoolFactory` holds the server's :class:`~runtime_core.pools.templates.Templates`
(the root and the hosts the local backend forks from) and its
:class:`~runtime_core.pools.residency.Residency` (memory budget, eviction, supervisor), and
builds one pool per model version:

* ``backend: ray`` -> :class:`~runtime_core.pools.ray.RayPool` (workers as Ray actors, issue 11);
* ``parallel_workers: 0`` -> :class:`~runtime_core.pools.inprocess.InProcessPool`;
* otherwise -> :class:`~runtime_core.pools.process.ProcessPool` on its runtime's host.

The repository asks this factory for pools and knows no backend by name (issue 22).
"""

from __future__ import annotations

from pathlib import Path

from runtime_core.plugins import RuntimeEntry
from runtime_core.pools.base import ModelPool
from runtime_core.pools.inprocess import InProcessPool
from runtime_core.pools.process import ProcessPool
from runtime_core.pools.ray import RayPool
from runtime_core.pools.residency import Residency
from runtime_core.pools.templates import Templates
from runtime_core.runtime import RuntimeContext
from runtime_core.settings import ModelSettings, ServerSettings


class PoolFactory:
    """Chooses a backend per model and owns the templates and the residency book."""

    def __init__(self, server: ServerSettings, memory_budget: int) -> None:
        self.server = server
        self.templates = Templates(
            server.log_level, server.startup_timeout, server.host_stall_after, server.host_answer_hold
        )
        self.residency = Residency(memory_budget, self.templates, server.worker_timeout)

    def prewarm(self, import_paths: list[str]) -> None:
        """Start the root template now, preloading ``import_paths`` (needs no event loop)."""
        self.templates.prewarm(import_paths)

    def make(self, settings: ModelSettings, entry: RuntimeEntry, uri: Path | None, *, lazy: bool) -> ModelPool:
        """A new, not yet started pool for ``settings`` (one version of a model); ``lazy``: a
        process pool loads its model on its first request, not in ``start``."""
        server = self.server
        if settings.backend_name(server) == "ray":  # workers as Ray actors (issue 11)
            return RayPool(settings, entry, server, uri=str(uri) if uri else None)
        if settings.workers(server) == 0:
            assert settings.folder is not None
            context = RuntimeContext(
                model_name=settings.name,
                version=settings.version,
                folder=settings.folder,
                uri=uri,
                threads=settings.thread_cap(server),
                worker_index=None,
            )
            return InProcessPool(entry.cls(settings, context), server.pipeline_depth, server.max_elements)
        return ProcessPool(
            settings,
            entry,
            server,
            uri=str(uri) if uri else None,
            templates=self.templates,
            residency=self.residency,
            lazy=lazy,
        )

    async def aclose(self) -> None:
        """Stop the supervisor, then the hosts and the root (after every pool closed)."""
        await self.residency.aclose()
        await self.templates.aclose()

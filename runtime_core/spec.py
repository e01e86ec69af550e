"""How a model's runtime is built, wherever it runs: one module for every place that builds one.

A :class:`WorkerSpec` is everything needed to build one model version's runtime, and travels
(pickled) to where it is built: a host loads it (:mod:`runtime_core.host`), a fresh worker
interpreter loads it (:mod:`runtime_core.worker`), a Ray actor loads it
(:mod:`runtime_core.pools.ray`). :func:`worker_spec` makes one from the main process's
settings, for both pool backends; :meth:`WorkerSpec.build` makes the runtime from it, for all
of them (issue 22). Runtimes travel by import path, never as class objects.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from runtime_core.plugins import RuntimeEntry, import_runtime
from runtime_core.runtime import ModelMetadata, Runtime, RuntimeContext
from runtime_core.settings import ModelSettings, ServerSettings

log = logging.getLogger("runtime_core.worker")


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a host or a worker needs to build one model's runtime."""

    settings: dict[str, Any]
    settings_path: str
    import_path: str
    uri: str | None
    threads: int
    main_pid: int
    log_level: str
    max_elements: int = 0
    folder: str = ""
    """The model's files' folder when it is not the settings file's (a numeric version folder)."""

    @property
    def name(self) -> str:
        return str(self.settings["name"])

    @property
    def key(self) -> str:
        """The model's version's key (``name`` or ``name/version``), as the pools know it."""
        return self.model_settings().key

    def model_settings(self) -> ModelSettings:
        settings = ModelSettings.model_validate(self.settings)
        settings.share_fields_set()
        settings._path = Path(self.settings_path)
        if self.folder:
            settings._folder = Path(self.folder)
        return settings

    def build(self, index: int | None) -> Runtime:
        cls = import_runtime(self.import_path)
        settings = self.model_settings()
        folder = settings.folder  # the version folder, else the settings file's
        assert folder is not None  # model_settings() set the settings file's path
        context = RuntimeContext(
            model_name=settings.name,
            version=settings.version,
            folder=folder,
            uri=Path(self.uri) if self.uri else None,
            threads=self.threads,
            worker_index=index,
        )
        return cls(settings, context)


def metadata_of(runtime: Runtime) -> ModelMetadata:
    try:
        return runtime.metadata()
    except Exception:
        log.warning("model %r: metadata() failed; showing the declared inputs and outputs", runtime.context.model_name)
        return Runtime.metadata(runtime)


def worker_spec(
    settings: ModelSettings, entry: RuntimeEntry, server: ServerSettings, *, uri: str | None, threads: int
) -> WorkerSpec:
    """The spec of ``settings``'s runtime, to be built with ``threads`` threads in its pools."""
    return WorkerSpec(
        # Only what differs from the defaults, which validate back to the same settings: the
        # spec travels to every load and a host keeps it per model (issue 23).
        settings=settings.model_dump(exclude_defaults=True),
        settings_path=str(settings.path),
        import_path=entry.import_path,
        uri=uri,
        threads=threads,
        main_pid=os.getpid(),
        log_level=server.log_level,
        max_elements=server.max_elements,
        folder=_own_folder(settings),
    )


def _own_folder(settings: ModelSettings) -> str:
    """The model's files' folder when it is not the settings file's (Triton's numeric version
    folders), else "": a host then holds one ``Path`` less per model (issue 23)."""
    folder, path = settings.folder, settings.path
    if folder is None or (path is not None and folder == path.parent):
        return ""
    return str(folder)

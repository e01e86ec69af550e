"""The repository's records of model versions: each one's state, and the book that finds them.

A record is made on the first operation on a version (a load, or a settings error that
concerns it) and kept for the server's life, so that a model that failed or was unloaded
still answers with its state and reason. The book finds a record by its key (``name`` or
``name/version``, :func:`~runtime_core.model_names.model_key`), or by name and version,
where a request without a version goes to the model's default version
(:meth:`RecordBook.find`). Records change only in the repository, under its lock of the
version; the book itself holds no lock and starts no task.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from runtime_core.errors import ModelNotFound, RuntimeCoreError
from runtime_core.model_names import model_key, split_key, version_order
from runtime_core.runtime import ModelMetadata
from runtime_core.sanitize import quoted
from runtime_core.settings import ModelSettings
from runtime_core.steps import Stepper, Steps

if TYPE_CHECKING:
    from runtime_core.pools.base import ModelPool

__all__ = ["ModelRecord", "ModelState", "RecordBook", "label"]


class ModelState(StrEnum):
    UNKNOWN = "UNKNOWN"
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class ModelRecord:
    """One version of one model (or a model without versions)."""

    name: str
    version: str | None = None
    state: ModelState = ModelState.UNKNOWN
    reason: str = ""
    settings: ModelSettings | None = None
    pool: ModelPool | None = None
    runtime: str = ""
    load_time: float = 0.0
    error: RuntimeCoreError | None = None
    raw_requests: bool = False
    """Its runtime reads requests itself (``Runtime.raw_requests``): they carry their headers."""

    @property
    def key(self) -> str:
        """The scheduler's, the pools' and the statistics' name for this version."""
        return model_key(self.name, self.version)

    @property
    def metadata(self) -> ModelMetadata | None:
        return self.pool.metadata if self.pool else None


def label(record: ModelRecord) -> str:
    """``'name'``, or ``'name' version 'v'``, for messages."""
    return repr(record.name) + (f" version {record.version!r}" if record.version else "")


class RecordBook:
    """Every version's record, by key and by name then version."""

    def __init__(self) -> None:
        self._by_key: dict[str, ModelRecord] = {}
        #: name -> version -> record, for the names that have a versioned record. A model
        #: without versions (most of them) is found by its key, which is its name: a dict of one
        #: record per model was 0.23 KB, 2.3 MB at 10,000 models (issue 23).
        self._by_name: dict[str, dict[str | None, ModelRecord]] = {}

    def ensure(self, name: str, version: str | None) -> ModelRecord:
        """The record of one version of a model, made on first use."""
        key = model_key(name, version)
        record = self._by_key.get(key)
        if record is None:
            record = self._by_key[key] = ModelRecord(name, version)
            versions = self._by_name.get(name)
            if versions is not None:
                versions[version] = record
            elif version is not None:
                plain = self._by_key.get(name)  # made before this one: it comes first
                self._by_name[name] = {None: plain, version: record} if plain is not None else {version: record}
        return record

    def get(self, key: str) -> ModelRecord | None:
        """The record of one version by its key, if it has one."""
        return self._by_key.get(key)

    def _versions(self, name: str) -> dict[str | None, ModelRecord]:
        versions = self._by_name.get(name)
        if versions is not None:
            return versions
        plain = self._by_key.get(name)
        return {None: plain} if plain is not None else {}

    def of_name(self, name: str) -> list[ModelRecord]:
        """The records of every version of ``name`` that has one."""
        return list(self._versions(name).values())

    def __iter__(self) -> Iterator[ModelRecord]:
        return iter(self._by_key.values())

    def find(self, name: str, version: str | None = None) -> ModelRecord:
        """The record of ``version`` of ``name`` or, without a version, of its default version:
        ``default_version`` from its settings, else its highest ready version, else its highest
        version (see :func:`~runtime_core.model_names.version_order`)."""
        versions = self._by_name.get(name)
        if versions is None:
            # A model without versions, on every request: found by its key, nothing to choose.
            plain = self._by_key.get(name)
            if plain is None:
                # Triton's wording, which Triton clients' examples look for (issue 21)
                raise ModelNotFound(f"Request for unknown model: {quoted(name)} is not found", model=name)
            versions = {None: plain}
            if version is None:
                return plain
        elif version is None:
            if len(versions) == 1:
                return next(iter(versions.values()))
            return _default(versions)
        record = versions.get(version)
        if record is not None:
            return record
        for each in versions.values():  # MLServer's ``versions`` list, accepted as aliases
            if each.settings is not None and version in each.settings.versions:
                return each
        raise ModelNotFound(
            f"Request for unknown model: {quoted(name)} version {quoted(version)} is not found", model=name
        )

    def versions(self, name: str, ready_only: bool = True) -> list[str]:
        """The versions of ``name`` (the READY ones, by default), lowest first."""
        records = self._versions(name).values()
        chosen = [r.version for r in records if r.state is ModelState.READY or not ready_only]
        return sorted((v for v in chosen if v is not None), key=version_order)

    def ordered(self) -> list[ModelRecord]:
        """Every version's record, by name then version."""
        # Every scrape of /metrics and every status page sorts them: at 10,000 models without
        # versions, parsing an empty version per record was most of the sort.
        return sorted(self._by_key.values(), key=lambda r: (r.name, version_order(r.version) if r.version else ()))

    def index(self, found: set[str], ready_only: bool = False) -> Steps[list[dict[str, Any]]]:
        """One row per version that is in ``found`` (keys of a scan) or has a record: name,
        version (if any), state, reason and, for a loaded one, residency; in steps
        (:mod:`runtime_core.steps`): at 10,000 models it is tens of milliseconds of work. No
        record is made for a folder not loaded, no sort key parsed for a model without
        versions."""
        stepper = Stepper()
        rows: list[tuple[str, str | None, ModelRecord | None]] = []
        by_key = self._by_key
        for key in found | by_key.keys():
            if stepper.due():
                yield
            name, version = split_key(key)
            rows.append((name, version, by_key.get(key)))
        rows.sort(key=lambda row: (row[0], version_order(row[1]) if row[1] else ()))
        unknown, ready = ModelState.UNKNOWN, ModelState.READY
        out: list[dict[str, Any]] = []
        for name, version, record in rows:
            if stepper.due():
                yield
            if record is None:  # in the folder, never loaded
                if not ready_only:
                    item = {"name": name, "version": version} if version else {"name": name}
                    out.append(item | {"state": unknown.value, "reason": ""})
                continue
            if ready_only and record.state is not ready:
                continue
            item = {"name": name, "version": version} if version else {"name": name}
            item["state"] = record.state.value
            item["reason"] = record.reason
            if record.pool is not None:
                health = record.pool.health()
                item["residency"] = health.residency
                if record.state is ready and not health.serving:
                    item["state"] = ModelState.UNAVAILABLE.value
                    item["reason"] = "its host process stopped; the model loads into a new host on its next request"
            out.append(item)
        return out


def _default(versions: dict[str | None, ModelRecord]) -> ModelRecord:
    """The default of several versions: the ``default_version`` its settings name (the
    highest version's say wins), else the highest ready version, else the highest."""
    named = sorted((r for v, r in versions.items() if v is not None), key=lambda r: version_order(r.version or ""))
    if not named:
        return versions[None]
    for record in reversed(named):
        wanted = record.settings.default_version if record.settings is not None else None
        if wanted is not None and wanted in versions:
            return versions[wanted]
    ready = [r for r in named if r.state is ModelState.READY]
    return (ready or named)[-1]

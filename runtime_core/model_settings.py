"""The settings of one model: one ``model-settings.json`` per model folder.

Unknown keys are errors that name the file and the key. MLServer's keys that mean nothing
here are dropped with a warning (:mod:`runtime_core.mlserver_compat`). A model's settings
that default to the server's (workers, backend, queue bound) are resolved against the
:class:`~runtime_core.server_settings.ServerSettings` passed in, never read from the
environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from runtime_core import mlserver_compat
from runtime_core.errors import SettingsError
from runtime_core.limits import cpu_count
from runtime_core.model_names import model_key, valid_name
from runtime_core.settings_files import format_validation, read_json_object

if TYPE_CHECKING:
    from runtime_core.server_settings import ServerSettings

__all__ = [
    "MODEL_SETTINGS_FILE",
    "ModelParameters",
    "ModelSettings",
    "RayActorSettings",
    "TensorSettings",
    "find_model_settings",
    "load_model_settings",
]

MODEL_SETTINGS_FILE = "model-settings.json"


class TensorSettings(BaseModel):
    """Declared metadata for one input or output of a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    datatype: str
    shape: list[int] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ModelParameters(BaseModel):
    """The ``parameters`` object of ``model-settings.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str | None = None
    """Model artifact, relative to the settings file's folder (confined to the repository)."""

    version: str | None = None
    """Version label served in metadata and at ``/versions/{v}`` URLs. Several folders with one
    ``name`` and different versions serve side by side (see :func:`~runtime_core.model_names.version_order`)."""

    extra: dict[str, Any] = Field(default_factory=dict)
    """Free settings for the runtime."""

    content_type: str | None = None
    """Default content type of requests (MLServer's ``np``, ``pd``, ``str``, ``base64``)."""

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: str | None) -> str | None:
        if value is not None and not valid_name(value):
            raise ValueError("must be letters, digits, '_', '-' or '.', without '..' or '/'")
        return value


class RayActorSettings(BaseModel):
    """The ``ray`` object of ``model-settings.json``: how the model's Ray actors are placed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_cpus: float = Field(1.0, ge=0)
    """Logical CPUs each actor reserves (fractions allowed, e.g. ``0.5``)."""

    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources each actor reserves, e.g. ``{"big-memory": 1}``."""

    placement: Literal["SPREAD", "DEFAULT"] = "SPREAD"
    """Ray scheduling strategy: ``SPREAD`` puts the actors on as many nodes as it can;
    ``DEFAULT`` lets Ray pack them by load."""


#: The ``parameters`` and ``ray`` of every model whose file leaves them out: one object each,
#: shared (frozen; their dicts are only read), not two per model. At ten thousand models the
#: copies were 1.2 KB a model in the main process and again in its host (issue 23). A default
#: factory's result is used as it is, where a plain default would be copied for each model.
_DEFAULT_PARAMETERS = ModelParameters()
_DEFAULT_RAY = RayActorSettings.model_validate({})


class _NoneDeclared(list[Any]):
    """The ``inputs``, ``outputs`` or ``versions`` of every model whose file declares none: one
    empty list, shared (three per model were 0.17 KB, in the main process and in the host,
    issue 23). Settings are frozen; this list refuses to grow, so that no model's can change
    another's."""

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("a model's settings are read-only")

    append = extend = insert = __setitem__ = __iadd__ = _refuse  # type: ignore[assignment]


_NONE_DECLARED: list[Any] = _NoneDeclared()

#: The names of the fields a settings file set, one set per distinct combination (most files
#: set the same few keys): see :meth:`ModelSettings.share_fields_set`.
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


class ModelSettings(BaseModel):
    """One ``model-settings.json``. Unknown keys are errors that name the file and the key."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: str
    """Model name in URLs; defaults to the folder name."""

    runtime: str | None = None
    """Name of the runtime plugin (see ``runtime-core runtimes``)."""

    implementation: str | None = None
    """MLServer compatibility: ``mlserver_sklearn.SKLearnModel`` and the like map to a runtime."""

    parameters: ModelParameters = Field(default_factory=lambda: _DEFAULT_PARAMETERS)
    inputs: list[TensorSettings] = Field(default_factory=lambda: _NONE_DECLARED)
    outputs: list[TensorSettings] = Field(default_factory=lambda: _NONE_DECLARED)

    parallel_workers: int | None = Field(None, ge=0)
    """Most worker processes this model may have (0: run in the main process); default: the
    server's ``parallel_workers``."""

    min_workers: int | None = Field(None, ge=0)
    """Dedicated workers this model keeps even when idle; default: the server's ``min_workers``."""

    threads: int | None = Field(None, ge=1)
    """BLAS/OpenMP/xgboost threads per worker; default: cores divided among the workers."""

    backend: Literal["process", "ray"] | None = None
    """Where this model's workers run; default: the server's ``pool_backend``."""

    ray: RayActorSettings = Field(default_factory=lambda: _DEFAULT_RAY)
    """Placement of the model's Ray actors (``backend: ray`` only)."""

    weight: float = Field(1.0, gt=0, validation_alias=AliasChoices("weight", "priority"))
    """Fair-share weight: a model of weight 2 gets twice the CPU of weight 1 when both are busy."""

    max_queue_size: int | None = Field(None, ge=1)
    """Bound of this model's queue; default: the server's ``max_queue_size``."""

    max_batch_size: int = Field(0, ge=0)
    """Adaptive batching: most requests merged into one call (0 or 1: off)."""

    max_batch_time: float = Field(0.0, ge=0)
    """Adaptive batching: longest wait, in seconds, for a batch to fill."""

    platform: str = ""
    """Free label shown in metadata (MLServer/Triton compatibility)."""

    versions: list[str] = Field(default_factory=lambda: _NONE_DECLARED)
    """MLServer compatibility: accepted and shown in metadata."""

    default_version: str | None = None
    """Of a model with several versions: the one its unversioned routes serve (default: the
    highest ready version). Any of the model's settings files may say it; they must agree."""

    _path: Path | None = PrivateAttr(default=None)
    #: The folder of the model's files when it is not the settings file's (Triton's numeric
    #: version folders, see :func:`as_version`).
    _folder: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not valid_name(value):
            raise ValueError("must be letters, digits, '_', '-' or '.', without '..' or '/'")
        return value

    def share_fields_set(self) -> None:
        """Replace pydantic's record of the fields these settings set by an equal set shared
        with every model that set the same ones (a set per model was 0.2 KB, in the main
        process and in its host, issue 23). Frozen settings never change it; pydantic's
        ``model_copy`` copies it before an update."""
        own = self.__pydantic_fields_set__
        object.__setattr__(self, "__pydantic_fields_set__", _FIELDS_SETS.setdefault(frozenset(own), own))

    @property
    def path(self) -> Path | None:
        """The ``model-settings.json`` this came from."""
        return self._path

    @property
    def folder(self) -> Path | None:
        """Where the model's files are: the settings file's folder, or its version folder."""
        if self._folder is not None:
            return self._folder
        return self._path.parent if self._path else None

    @property
    def key(self) -> str:
        """The model's version's identity in the server: ``name``, or ``name/version``."""
        return model_key(self.name, self.version)

    def as_version(self, version: str, folder: Path) -> ModelSettings:
        """These settings for one numeric version folder of Triton's layout (``<model>/<v>/``):
        same settings file, ``parameters.version`` set, files looked up in ``folder``."""
        copy = self.model_copy(update={"parameters": self.parameters.model_copy(update={"version": version})})
        copy._path, copy._folder = self._path, folder
        return copy

    @property
    def version(self) -> str | None:
        return self.parameters.version

    @property
    def runtime_name(self) -> str:
        """The runtime named by ``runtime`` or, failing that, ``implementation``."""
        return self.runtime or self.implementation or ""

    def backend_name(self, server: ServerSettings) -> str:
        return self.backend or server.pool_backend

    def workers(self, server: ServerSettings) -> int:
        return server.parallel_workers if self.parallel_workers is None else self.parallel_workers

    def min_workers_for(self, server: ServerSettings) -> int:
        return server.min_workers if self.min_workers is None else self.min_workers

    def thread_cap(self, server: ServerSettings) -> int:
        """Threads per worker: set explicitly, or the cores divided among this model's workers."""
        if self.threads is not None:
            return self.threads
        return max(1, cpu_count() // max(1, self.workers(server)))

    def resolve_uri(self, repository: Path | None, default_names: tuple[str, ...] = ()) -> Path | None:
        """The artifact path: ``parameters.uri``, else the first of ``default_names`` present
        in the model folder, else ``None``. One confinement rule for both: the path, with every
        symlink resolved, must stay inside the repository (the model folder without one)."""
        folder = self.folder
        if folder is None:
            return None
        root = (repository or folder).resolve()
        if self.parameters.uri:
            uri = self.parameters.uri
            if os.path.isabs(uri) or "\\" in uri or "%" in uri:
                raise SettingsError(
                    f"{self.path}: model {self.name!r}: parameters.uri must be a relative path",
                    model=self.name,
                    path=str(self.path),
                )
            return self._confined(folder / uri, root, "parameters.uri")
        for candidate in default_names:
            if (folder / candidate).exists():
                return self._confined(folder / candidate, root, f"artifact {candidate!r}")
        return None

    def _confined(self, path: Path, root: Path, what: str) -> Path:
        resolved = path.resolve()
        if resolved != root and root not in resolved.parents:
            raise SettingsError(
                f"{self.path}: model {self.name!r}: {what} leaves the model repository",
                model=self.name,
                path=str(self.path),
            )
        return resolved


def load_model_settings(path: Path, *, in_version_folder: bool = False) -> ModelSettings:
    """Read one ``model-settings.json``; errors name the file and the offending key.

    ``in_version_folder``: the file is in a numeric version folder of Triton's layout
    (``<model>/<v>/model-settings.json``): its name defaults to the model folder's name and
    its ``parameters.version`` to the version folder's."""
    raw = read_json_object(path)
    if in_version_folder:
        raw.setdefault("name", path.parent.parent.name)
        if isinstance(raw.get("parameters", {}), dict):
            raw["parameters"] = {"version": path.parent.name, **raw.get("parameters", {})}
    raw.setdefault("name", path.parent.name)
    mlserver_compat.drop_model_keys(raw, path)
    try:
        settings = ModelSettings.model_validate(raw)
    except ValidationError as exc:
        raise SettingsError(f"{path}: {format_validation(exc)}", model=raw.get("name"), path=str(path)) from None
    if settings.runtime and settings.implementation:
        raise SettingsError(f"{path}: set 'runtime' or 'implementation', not both", model=settings.name, path=str(path))
    if not settings.runtime_name:
        raise SettingsError(f"{path}: model {settings.name!r} names no 'runtime'", model=settings.name, path=str(path))
    settings._path = path.resolve()
    settings.share_fields_set()
    return settings


def find_model_settings(repository: Path) -> list[Path]:
    """Every ``model-settings.json`` under ``repository``, in a stable order (``Path``'s).

    Links to folders are not followed (as ``Path.rglob``). ``os.walk`` rather than ``rglob``:
    it lists a repository of many thousand model folders in half the time (issue 23,
    docs/benchmarks.md)."""
    found: list[str] = []
    for folder, _, files in os.walk(repository):
        if MODEL_SETTINGS_FILE in files:
            path = os.path.join(folder, MODEL_SETTINGS_FILE)
            if os.path.isfile(path):
                found.append(path)
    found.sort(key=lambda path: path.split(os.sep))
    return [Path(path) for path in found]

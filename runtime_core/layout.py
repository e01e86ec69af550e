"""KServe's single-model layout: one model's files directly in the repository folder.

KServe's storage initializer downloads an ``InferenceService``'s ``storageUri`` into
``/mnt/models`` and writes no ``model-settings.json``; the serving runtime learns the
model's name (and possibly its framework) from environment variables. When the
repository folder holds no ``model-settings.json`` at all, :func:`single_model` builds
the settings of that one model:

- name: ``model_name`` (``RUNTIME_CORE_MODEL_NAME`` or ``MLSERVER_MODEL_NAME``), else the
  folder's name;
- runtime: ``model_runtime`` (``RUNTIME_CORE_MODEL_RUNTIME`` or
  ``MLSERVER_MODEL_IMPLEMENTATION``, runtime aliases accepted), else inferred from the
  artifact: a file whose suffix is one of an installed runtime's ``artifact_names``
  (``model.joblib``/``.pkl`` -> sklearn, ``.json``/``.ubj``/``.bst`` -> xgboost). Two
  candidate runtimes, or two candidate files, are an error that says which variable to set.

A folder with neither a known artifact nor a model name is an empty repository, as before.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from runtime_core.errors import RuntimeCoreError, SettingsError
from runtime_core.plugins import RuntimeEntry, RuntimeRegistry
from runtime_core.settings import SERVER_SETTINGS_FILE, ModelSettings, ServerSettings

__all__ = ["single_model"]

_NAME_VARIABLE = "RUNTIME_CORE_MODEL_NAME"
_RUNTIME_VARIABLE = "RUNTIME_CORE_MODEL_RUNTIME"


def _files(folder: Path) -> list[Path]:
    """Regular files directly in ``folder`` that could be an artifact, in a stable order."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != SERVER_SETTINGS_FILE
    )


def _suffixes(entry: RuntimeEntry) -> set[str]:
    return {Path(name).suffix for name in entry.cls.artifact_names if Path(name).suffix}


def _artifact(entry: RuntimeEntry, files: list[Path], name: str, folder: Path) -> Path | None:
    """The one file of ``files`` that ``entry`` would load: a file named exactly as one of
    its ``artifact_names`` (in their order), else the only file with one of their suffixes."""
    by_name = {p.name: p for p in files}
    for candidate in entry.cls.artifact_names:
        if candidate in by_name:
            return by_name[candidate]
    matches = [p for p in files if p.suffix in _suffixes(entry)]
    if len(matches) > 1:
        listed = ", ".join(p.name for p in matches)
        raise SettingsError(
            f"{folder}: model {name!r}: several {entry.name} artifacts ({listed}); keep one, or add a "
            f"model-settings.json with parameters.uri",
            model=name,
            path=str(folder),
        )
    return matches[0] if matches else None


def _build(folder: Path, name: str, runtime: str, artifact: Path | None) -> ModelSettings:
    parameters = {"uri": artifact.name} if artifact is not None else {}
    try:
        settings = ModelSettings.model_validate({"name": name, "runtime": runtime, "parameters": parameters})
    except ValidationError:
        raise SettingsError(
            f"{folder}: model name {name!r} (from {_NAME_VARIABLE}) must be letters, digits, '_', '-' or '.'",
            model=name,
            path=str(folder),
        ) from None
    # Errors about this model name its artifact (or the folder): there is no settings file.
    settings._path = artifact if artifact is not None else folder / "(no model-settings.json)"
    return settings


def single_model(
    folder: Path, server: ServerSettings, registry: RuntimeRegistry
) -> tuple[dict[str, ModelSettings], list[SettingsError]]:
    """The one model of a single-model folder, as :meth:`ModelRepository.scan` returns models:
    ``({name: settings}, [])``, or ``({}, [error])`` when the folder is a single-model layout
    that cannot be served, or ``({}, [])`` when it is not one (an empty repository)."""
    name = server.model_name or folder.name
    try:
        files = _files(folder)
        if server.model_runtime:
            entry = registry.get(server.model_runtime, model=name, path=str(folder))
            return {name: _build(folder, name, entry.name, _artifact(entry, files, name, folder))}, []
        candidates = [(e, a) for e in registry if (a := _artifact(e, files, name, folder)) is not None]
        if not candidates:
            if server.model_name is None:
                return {}, []
            raise SettingsError(
                f"{folder}: model {name!r}: no model-settings.json and no model file that an installed "
                f"runtime recognises; set {_RUNTIME_VARIABLE}",
                model=name,
                path=str(folder),
            )
        if len(candidates) > 1:
            found = ", ".join(f"{a.name} ({e.name})" for e, a in candidates)
            raise SettingsError(
                f"{folder}: model {name!r}: cannot tell the runtime from the files: {found}; set {_RUNTIME_VARIABLE}",
                model=name,
                path=str(folder),
            )
        entry, artifact = candidates[0]
        return {name: _build(folder, name, entry.name, artifact)}, []
    except SettingsError as exc:
        if exc.model is None:
            exc.model = name
        return {}, [exc]
    except (RuntimeCoreError, OSError) as exc:
        message = exc.message if isinstance(exc, RuntimeCoreError) else exc.__class__.__name__
        return {}, [SettingsError(f"{folder}: model {name!r}: {message}", model=name, path=str(folder))]

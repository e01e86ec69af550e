"""Where the server's settings come from, and which source wins.

Lowest precedence first: defaults, ``settings.json`` at the root of the model repository,
MLServer's ``MLSERVER_*`` variables (MLServer's keys and variables are translated by
:mod:`runtime_core.mlserver_compat`), ``RUNTIME_CORE_*`` environment variables, then
command-line flags. An error names the source the bad value came from. Nothing here reads
the environment or the working directory at import time: :func:`load_server_settings`
does it when the command line asks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource

from runtime_core import mlserver_compat
from runtime_core.errors import SettingsError
from runtime_core.server_settings import ENV_PREFIX, ServerSettings
from runtime_core.settings_files import format_validation_item, read_json_object

__all__ = ["SERVER_SETTINGS_FILE", "load_server_settings"]

SERVER_SETTINGS_FILE = "settings.json"


def _read_server_json(json_file: Path | None) -> dict[str, Any]:
    """The object in ``settings.json`` (``{}`` when the file is absent or empty)."""
    if json_file is None or not json_file.is_file():
        return {}
    return read_json_object(json_file, blank_is_empty=True)


def _env_names(field: str) -> list[str]:
    """The environment variables that set ``field``, ours first: which one an error names."""
    if field == "parallel_workers":
        return [ENV_PREFIX + "PARALLEL_WORKERS", "MLSERVER_MODEL_PARALLEL_WORKERS"]
    if field == "model_name":
        return [ENV_PREFIX + "MODEL_NAME", "MLSERVER_MODEL_NAME"]
    if field == "model_runtime":
        return [ENV_PREFIX + "MODEL_RUNTIME", "MLSERVER_MODEL_IMPLEMENTATION"]
    return [ENV_PREFIX + field.upper()]


def load_server_settings(repository: Path | None = None, **overrides: Any) -> ServerSettings:
    """Build server settings: CLI ``overrides`` > environment > ``settings.json`` > defaults.

    ``overrides`` with the value ``None`` are ignored (flags the user did not give).
    Errors name where the bad value came from: a flag, an environment variable or the file.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    json_file = repository / SERVER_SETTINGS_FILE if repository is not None else None
    raw_file = _read_server_json(json_file)
    ours = frozenset(ServerSettings.model_fields)
    from_file = mlserver_compat.translate_server_keys(raw_file, dict.fromkeys(raw_file, str(json_file)), ours)
    raw_env, env_origin = mlserver_compat.environment(os.environ)
    from_mlserver_env = mlserver_compat.translate_server_keys(raw_env, env_origin, ours)
    # The setting each MLServer variable ended up in, for error messages.
    mlserver_source = {mlserver_compat.target_of(key): origin for key, origin in env_origin.items()}
    if repository is not None:
        given.setdefault("model_repository", repository)

    class _FromRepository(ServerSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if from_mlserver_env:
                sources.append(InitSettingsSource(settings_cls, init_kwargs=from_mlserver_env))
            if from_file:
                sources.append(InitSettingsSource(settings_cls, init_kwargs=from_file))
            return tuple(sources)

    def source_of(field: str) -> str:
        if field in given:
            return "command line"
        env = {k.upper() for k in os.environ}
        for name in _env_names(field):
            if name in env:
                return f"environment variable {name}"
        if field in mlserver_source:
            return mlserver_source[field]
        return str(json_file) if field in from_file else "server settings"

    try:
        built = _FromRepository(**given)
    except ValidationError as exc:
        parts: dict[str, list[str]] = {}
        for item in exc.errors():
            if item["loc"]:  # errors of aliased fields are reported under the alias
                field = str(item["loc"][0])
                field = "parallel_workers" if field in _env_names("parallel_workers") else field
                item["loc"] = (field, *item["loc"][1:])
            field = str(item["loc"][0]) if item["loc"] else ""
            where = str(json_file) if item["type"] == "extra_forbidden" else source_of(field)
            parts.setdefault(where, []).append(format_validation_item(item))
        message = "; ".join(f"{where}: {', '.join(items)}" for where, items in parts.items())
        path = str(json_file) if json_file is not None and str(json_file) in parts else None
        raise SettingsError(message, path=path) from None
    return built

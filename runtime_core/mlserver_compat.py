"""MLServer compatibility: MLServer's settings keys and ``MLSERVER_*`` variables, in our terms.

MLServer 1.7.1 reads its server settings from ``settings.json`` and ``MLSERVER_<FIELD>``
variables (its ``Settings`` and ``CORSSettings``), and a model's settings from
``model-settings.json`` and ``MLSERVER_MODEL_<FIELD>`` variables (its ``ModelSettings`` and
``ModelParameters``). Every one of those fields is listed here, with the setting of ours it
sets or the reason it is ignored, so that no MLServer key or variable is ever dropped
silently: an ignored one gets one warning line naming it, and an ``MLSERVER_*`` variable that
is no MLServer 1.7.1 field gets one too.

Nothing here reads settings of ours: :mod:`runtime_core.settings` passes its field names in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime_core.errors import SettingsError

__all__ = [
    "CORS_FIELDS",
    "MLSERVER_VERSION",
    "MODEL_FIELDS",
    "SERVER_FIELDS",
    "Key",
    "drop_model_keys",
    "environment",
    "translate_server_keys",
]

log = logging.getLogger("runtime_core.settings")

#: The MLServer release whose fields are listed here.
MLSERVER_VERSION = "1.7.1"


@dataclass(frozen=True)
class Key:
    """What one MLServer field becomes here: ``target``, the setting of ours it sets, or
    ``None`` and ``why`` it is ignored."""

    target: str | None
    why: str = ""


def _ignored(why: str) -> Key:
    return Key(None, why)


_KAFKA = _ignored("Kafka is not supported")
_CACHE = _ignored("responses are not cached")
_REPOSITORY = _ignored("the model repository is always the folder")

#: MLServer's ``Settings``: ``settings.json`` keys and ``MLSERVER_<FIELD>`` variables.
SERVER_FIELDS: Mapping[str, Key] = {
    "debug": Key("log_level"),  # true: log_level debug
    "parallel_workers": Key("parallel_workers"),
    "parallel_workers_timeout": _ignored("workers are stopped after shutdown_grace"),
    "environments_dir": _ignored("runtime-core does not unpack per-model environments"),
    "model_repository_implementation": _REPOSITORY,
    "model_repository_root": Key("model_repository"),
    "model_repository_implementation_args": _REPOSITORY,
    "load_models_at_startup": Key("load_models_at_startup"),
    "server_name": _ignored("the server's name is runtime-core"),
    "server_version": _ignored("the server's version is its own"),
    "extensions": _ignored("the extensions list is the server's own"),
    "host": Key("host"),
    "http_port": Key("http_port"),
    "root_path": _ignored("routes are served at the root"),
    "grpc_port": Key("grpc_port"),
    "grpc_max_message_length": _ignored("the message size limit is max_request_size"),
    "cors_settings": Key("cors_settings"),
    "metrics_endpoint": _ignored("metrics are served at /metrics (on http_port, and on metrics_port if set)"),
    "metrics_port": Key("metrics_port"),
    "metrics_rest_server_prefix": _ignored("metric names are runtime-core's own"),
    "metrics_dir": _ignored("workers report metrics to the main process"),
    "use_structured_logging": Key("log_format"),  # true: log_format json
    "logging_settings": _ignored("use log_level and log_format"),
    "kafka_enabled": _KAFKA,
    "kafka_servers": _KAFKA,
    "kafka_topic_input": _KAFKA,
    "kafka_topic_output": _KAFKA,
    "tracing_server": _ignored(
        "set tracing: true and point OpenTelemetry's exporter (OTEL_* variables) at the collector"
    ),
    "cache_enabled": _CACHE,
    "cache_size": _CACHE,
    "gzip_enabled": _ignored("responses are not compressed"),
}

_CORS = _ignored("set cors_settings (RUNTIME_CORE_CORS_SETTINGS or settings.json), which holds this key")

#: MLServer's ``CORSSettings``: it reads them from ``MLSERVER_<FIELD>`` variables too. Here
#: they are keys of ``cors_settings`` only.
CORS_FIELDS: Mapping[str, Key] = dict.fromkeys(
    (
        "allow_origins",
        "allow_origin_regex",
        "allow_credentials",
        "allow_methods",
        "allow_headers",
        "expose_headers",
        "max_age",
    ),
    _CORS,
)

_IN_FILE = "set it in the model's model-settings.json"

#: MLServer's ``ModelSettings`` and ``ModelParameters`` (``parameters.*``) as
#: ``MLSERVER_MODEL_<FIELD>`` variables: the settings of the one model of a folder without a
#: ``model-settings.json`` (KServe's layout). In a ``model-settings.json`` the keys are read as
#: :func:`drop_model_keys` says.
MODEL_FIELDS: Mapping[str, Key] = {
    "name": Key("model_name"),
    "implementation": Key("model_runtime"),
    "platform": _ignored(_IN_FILE),
    "versions": _ignored(_IN_FILE),
    "inputs": _ignored(_IN_FILE),
    "outputs": _ignored(_IN_FILE),
    "parallel_workers": Key("parallel_workers"),
    "warm_workers": _ignored("workers are started before the model is ready"),
    "max_batch_size": _ignored(_IN_FILE),
    "max_batch_time": _ignored(_IN_FILE),
    "parameters": _ignored(_IN_FILE),
    "cache_enabled": _CACHE,
    # ModelParameters
    "uri": Key("model_repository"),  # KServe's MLServer runtime: the folder its storage initializer fills
    "version": _ignored("the single-model layout serves its model without a version label"),
    "environment_path": _ignored("runtime-core does not switch Python environments"),
    "environment_tarball": _ignored("runtime-core does not unpack per-model environments"),
    "inference_pool_gid": _ignored("each model has its own worker group"),
    "autogenerate_inference_pool_gid": _ignored("each model has its own worker group"),
    "format": _ignored("the runtime reads the artifact's format from the file"),
    "content_type": _ignored(_IN_FILE),
    "extra": _ignored(_IN_FILE),
}

#: Variables that our settings read themselves, as aliases of their own (see
#: ``ServerSettings``): not translated here.
_ALIASED = frozenset({"MLSERVER_MODEL_NAME", "MLSERVER_MODEL_IMPLEMENTATION", "MLSERVER_MODEL_PARALLEL_WORKERS"})

_SERVER_PREFIX = "MLSERVER_"
_MODEL_PREFIX = "MLSERVER_MODEL_"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise SettingsError(f"{where}: must be true or false")


def _warn_ignored(origin: str, key: str, why: str) -> None:
    log.warning("%s: MLServer setting %r is ignored: %s", origin, key, why)


def translate_server_keys(raw: dict[str, Any], where: dict[str, str], ours: frozenset[str]) -> dict[str, Any]:
    """``raw`` (``settings.json``'s object, or the variables' values by MLServer key) with
    MLServer keys mapped to ``ours`` (our server settings' names); ``where`` names each key's
    origin (file or variable) for messages. A key of ours wins over an MLServer key for the same
    setting; MLServer keys without an equivalent are dropped with one warning line; unknown
    keys are kept (and fail validation, naming the key)."""
    out = {k: v for k, v in raw.items() if k in ours}
    for key, value in raw.items():
        if key in ours:
            continue
        origin = where.get(key, "settings")
        known = SERVER_FIELDS.get(key)
        if key == "debug":
            if _bool(value, f"{origin}: 'debug'") and "log_level" not in raw:
                out["log_level"] = "debug"
        elif key == "use_structured_logging":
            if _bool(value, f"{origin}: 'use_structured_logging'") and "log_format" not in raw:
                out["log_format"] = "json"
        elif known is not None and known.target is not None:
            out.setdefault(known.target, value)
        elif known is not None:
            _warn_ignored(origin, key, known.why)
        else:
            out[key] = value
    return out


def target_of(key: str) -> str:
    """The setting of ours that the MLServer server key ``key`` sets (``key`` if none)."""
    known = SERVER_FIELDS.get(key)
    return known.target if known is not None and known.target is not None else key


def _json_value(key: str, value: str, variable: str) -> Any:
    """Variables hold text; MLServer (pydantic-settings) reads a structured field's as JSON."""
    if key != "cors_settings":
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"environment variable {variable}: not valid JSON: {exc.msg}") from None


def environment(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``MLSERVER_*`` variables of ``environ`` that map to a server setting of ours, as
    MLServer server keys, and the variable of each key. Every other ``MLSERVER_*`` variable
    gets one warning line naming it: an MLServer field without an equivalent here, or no
    MLServer field at all. Names are matched without regard to case, as MLServer does."""
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for name, value in sorted(environ.items()):
        variable = name.upper()
        if not variable.startswith(_SERVER_PREFIX) or variable in _ALIASED:
            continue
        origin = f"environment variable {variable}"
        server_key = variable.removeprefix(_SERVER_PREFIX).lower()
        model_key = variable.removeprefix(_MODEL_PREFIX).lower() if variable.startswith(_MODEL_PREFIX) else None
        if server_key in SERVER_FIELDS:  # MLServer's Settings first: MLSERVER_MODEL_REPOSITORY_ROOT is one
            values[server_key] = _json_value(server_key, value, variable)
            where[server_key] = origin
        elif model_key is not None and model_key in MODEL_FIELDS:
            known = MODEL_FIELDS[model_key]
            if known.target is None:
                _warn_ignored(origin, model_key, known.why)
            else:  # uri, the one left to translate: as model_repository_root, which wins over it
                values.setdefault("model_repository_root", value)
                where.setdefault("model_repository_root", origin)
        elif server_key in CORS_FIELDS:
            _warn_ignored(origin, server_key, CORS_FIELDS[server_key].why)
        else:
            log.warning("%s is not a setting of MLServer %s: ignored", origin, MLSERVER_VERSION)
    return values, where


# --------------------------------------------------------------------------- model-settings.json

#: MLServer model keys without an equivalent: accepted and ignored, with one warning line
#: per file and key (for the life of the process: repository scans repeat).
_MODEL_IGNORED = {
    "warm_workers": "workers are started before the model is ready",
    "cache_enabled": "responses are not cached",
}
_PARAMETERS_IGNORED = {
    "environment_path": "runtime-core does not switch Python environments",
    "environment_tarball": "runtime-core does not unpack per-model environments",
    "inference_pool_gid": "each model has its own worker group",
    "autogenerate_inference_pool_gid": "each model has its own worker group",
    "format": "the runtime reads the artifact's format from the file",
}
_warned: set[tuple[str, str]] = set()


def drop_model_keys(raw: dict[str, Any], path: Path) -> None:
    """Remove MLServer-only keys from a model's settings, warning once for each."""
    found = [(raw, key, key, why) for key, why in _MODEL_IGNORED.items() if key in raw]
    parameters = raw.get("parameters")
    if isinstance(parameters, dict):
        found += [
            (parameters, key, f"parameters.{key}", why) for key, why in _PARAMETERS_IGNORED.items() if key in parameters
        ]
    for holder, key, where, why in found:
        del holder[key]
        if (str(path), where) not in _warned:
            _warned.add((str(path), where))
            log.warning("%s: MLServer setting %r is ignored: %s", path, where, why)

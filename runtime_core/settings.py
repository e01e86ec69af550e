"""Server and model settings (pydantic / pydantic-settings): every settings name, in one place.

Server settings come from, lowest precedence first: defaults, ``settings.json``
at the root of the model repository, ``RUNTIME_CORE_*`` environment variables,
then command-line flags. Model settings come from one ``model-settings.json``
per model folder. Nothing here reads the environment or the working directory
at import time: :func:`load_server_settings` and :func:`load_model_settings` do
it when the command line asks.

This module only re-exports, for the server's modules and for runtimes and tests written
against it (issue 22 split it by job):

- :mod:`runtime_core.server_settings`: ``ServerSettings`` and ``CorsSettings``;
- :mod:`runtime_core.server_sources`: :func:`load_server_settings`, from flags, the
  environment and ``settings.json``;
- :mod:`runtime_core.model_settings`: ``ModelSettings`` and its parts, one
  ``model-settings.json`` read and every one found;
- :mod:`runtime_core.model_names`: model names, version keys and version order;
- :mod:`runtime_core.settings_files`: reading a settings file and wording its errors.
"""

from __future__ import annotations

from runtime_core.model_names import MODEL_NAME_RE, is_version_folder, model_key, version_order
from runtime_core.model_settings import (
    MODEL_SETTINGS_FILE,
    ModelParameters,
    ModelSettings,
    RayActorSettings,
    TensorSettings,
    find_model_settings,
    load_model_settings,
)
from runtime_core.server_settings import ENV_PREFIX, LAZY_LOAD_AUTO_ABOVE, CorsSettings, ServerSettings
from runtime_core.server_sources import SERVER_SETTINGS_FILE, load_server_settings

__all__ = [
    "ENV_PREFIX",
    "LAZY_LOAD_AUTO_ABOVE",
    "MODEL_NAME_RE",
    "MODEL_SETTINGS_FILE",
    "SERVER_SETTINGS_FILE",
    "CorsSettings",
    "ModelParameters",
    "ModelSettings",
    "RayActorSettings",
    "ServerSettings",
    "TensorSettings",
    "find_model_settings",
    "is_version_folder",
    "load_model_settings",
    "load_server_settings",
    "model_key",
    "version_order",
]

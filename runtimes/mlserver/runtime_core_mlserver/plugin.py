"""The entry-point module of the ``mlserver`` runtime (group ``runtime_core``)."""

from __future__ import annotations

import re

from runtime_core import Runtime, hookimpl
from runtime_core_mlserver.runtime import MLServerRuntime

# An import path as MLServer's ``implementation`` takes it: dotted Python identifiers, the
# last one the class (``models.SumModel``, ``mlserver_lightgbm.LightGBMModel``).
_IMPORT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


@hookimpl
def rc_register_runtimes() -> list[type[Runtime]]:
    return [MLServerRuntime]


@hookimpl
def rc_runtime_for_implementation(implementation: str) -> str | None:
    # Names and aliases of other runtimes (mlserver_sklearn.SKLearnModel, ...) were looked up
    # before this hook runs, so they keep their own runtimes. Whether the class exists is
    # found when the model loads, in its worker, and reported as that model's load error.
    return MLServerRuntime.name if _IMPORT_PATH.fullmatch(implementation) else None

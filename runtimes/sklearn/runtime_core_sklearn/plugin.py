"""The entry-point module of the ``sklearn`` runtime (group ``runtime_core``)."""

from __future__ import annotations

from runtime_core import Runtime, hookimpl
from runtime_core_sklearn.runtime import SKLearnRuntime


@hookimpl
def rc_register_runtimes() -> list[type[Runtime]]:
    return [SKLearnRuntime]

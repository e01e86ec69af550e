"""The entry-point module of the ``xgboost`` runtime (group ``runtime_core``)."""

from __future__ import annotations

from runtime_core import Runtime, hookimpl
from runtime_core_xgboost.runtime import XGBoostRuntime


@hookimpl
def rc_register_runtimes() -> list[type[Runtime]]:
    return [XGBoostRuntime]

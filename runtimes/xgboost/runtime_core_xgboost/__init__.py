"""XGBoost runtime plugin for runtime-core.

Importing this package does not import xgboost (only numpy and runtime-core):
the server builds its registry by importing every plugin in the main process,
and only the processes that load an XGBoost model should load libxgboost.
"""

from __future__ import annotations

from runtime_core_xgboost.runtime import XGBoostRuntime

__all__ = ["XGBoostRuntime"]

__version__ = "0.1.0"

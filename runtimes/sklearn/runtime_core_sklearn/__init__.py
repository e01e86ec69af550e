"""scikit-learn runtime plugin for runtime-core.

Importing this package imports neither scikit-learn nor joblib (only numpy and
runtime-core): the server builds its registry by importing every plugin in the
main process, and only the processes that load an sklearn model should pay for
the framework import.
"""

from __future__ import annotations

from runtime_core_sklearn.runtime import SKLearnRuntime

__all__ = ["SKLearnRuntime"]

__version__ = "0.1.0"

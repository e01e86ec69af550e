"""Serve MLServer's ``MLModel`` runtimes on runtime-core (see this distribution's README)."""

from __future__ import annotations

from runtime_core_mlserver.runtime import MLServerRuntime

__all__ = ["MLServerRuntime"]

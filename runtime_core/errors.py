"""The exception hierarchy of runtime-core.

Every error the server can answer with is a subclass of :class:`RuntimeCoreError`.
Errors carry structured fields (``model``, ``reason``) and a stable ``code`` that
crosses the process boundary as a number; the HTTP status for each class lives
only in :mod:`runtime_core.rest.middlewares`.

Messages are written for the client: they never contain a traceback, a file
path on the server or a Python class name.
"""

from __future__ import annotations


class RuntimeCoreError(Exception):
    """Root of all runtime-core errors."""

    code: int = 1

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.model = model

    def __str__(self) -> str:
        return self.message


class InvalidRequest(RuntimeCoreError):
    """The request is malformed: bad JSON, bad tensor, unknown output, wrong shape."""

    code = 2


class ModelNotFound(RuntimeCoreError):
    """No model of that name (or version) is in the repository."""

    code = 3


class ModelNotReady(RuntimeCoreError):
    """The model exists but is not READY (loading, unloading, failed or gone)."""

    code = 4


class InferenceFailed(RuntimeCoreError):
    """The runtime raised while predicting: a server-side failure."""

    code = 5


class WorkerDied(RuntimeCoreError):
    """The worker process serving the request died before it answered."""

    code = 6


class QueueFull(RuntimeCoreError):
    """The model's queue is full; the client should retry later."""

    code = 7

    def __init__(self, message: str, *, model: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, model=model)
        self.retry_after = retry_after


class DeadlineExceeded(RuntimeCoreError):
    """The request's deadline passed before a worker could run it."""

    code = 8


class PayloadTooLarge(RuntimeCoreError):
    """The request body is larger than the configured limit."""

    code = 9


class ShuttingDown(RuntimeCoreError):
    """The server is draining and accepts no new requests."""

    code = 10


class Unauthorized(RuntimeCoreError):
    """A guarded endpoint was called without the right bearer token."""

    code = 11


class Forbidden(RuntimeCoreError):
    """The endpoint is disabled by settings."""

    code = 12


class SettingsError(RuntimeCoreError):
    """A settings file or variable is invalid. ``path`` names the file, if any."""

    code = 13

    def __init__(self, message: str, *, model: str | None = None, path: str | None = None) -> None:
        super().__init__(message, model=model)
        self.path = path


class RuntimeNotFound(SettingsError):
    """A model names a runtime that no installed plugin provides."""

    code = 14


class PluginError(RuntimeCoreError):
    """Plugins conflict (two claim one name) or a plugin is broken."""

    code = 15


class ModelLoadError(RuntimeCoreError):
    """The runtime failed to load the model."""

    code = 16


_BY_CODE: dict[int, type[RuntimeCoreError]] = {}


def _index(cls: type[RuntimeCoreError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _index(sub)


_index(RuntimeCoreError)


def error_from_code(code: int, message: str, *, model: str | None = None) -> RuntimeCoreError:
    """Rebuild an error that crossed the process boundary as ``(code, message)``."""
    cls = _BY_CODE.get(code, InferenceFailed)
    return cls(message, model=model)

"""Maps errors to gRPC status codes.

This is the only place that knows gRPC codes for
:class:`~runtime_core.errors.RuntimeCoreError` subclasses (as
:mod:`runtime_core.rest.middlewares` is for HTTP statuses). Messages are the
errors' own, written for the client: no traceback, path or class name.
"""

from __future__ import annotations

import grpc

from runtime_core import errors

STATUS: dict[type[errors.RuntimeCoreError], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.SettingsError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.RuntimeNotFound: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    errors.Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.InferenceFailed: grpc.StatusCode.INTERNAL,
    errors.ModelLoadError: grpc.StatusCode.INTERNAL,
    errors.PluginError: grpc.StatusCode.INTERNAL,
    errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    errors.WorkerDied: grpc.StatusCode.UNAVAILABLE,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(error: errors.RuntimeCoreError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL

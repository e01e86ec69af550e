"""An ``MLModel``'s own REST endpoints (``@custom_handler(rest_path=..., rest_method=...)``).

MLServer mounts each such method on its FastAPI app, which binds the HTTP request to the
method's parameters. Here the server's REST front end forwards a call of the same method
and path to the model's worker (:mod:`runtime_core.rest.custom`), and this module binds it
the way FastAPI does for the cases custom handlers use:

- a parameter annotated with a scalar type (``str``, ``int``, ``float``, ``bool``, or
  ``Optional`` of one), or not annotated, is a query parameter;
- any other annotated parameter (``list``, ``dict``, a pydantic model, ...) is the body:
  the whole JSON body when it is the only one, else the body's member of its name;
- the return value is written as FastAPI writes it (``jsonable_encoder``, then JSON).

Paths with ``{parameters}`` and parameters of FastAPI's own types (``Request``, ``Depends``)
are refused when the model loads, naming the method, rather than failing per call.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi.encoders import jsonable_encoder
from mlserver import MLModel
from mlserver.handlers import get_custom_handlers
from pydantic import TypeAdapter, ValidationError

from runtime_core import InvalidRequest
from runtime_core_mlserver.wire import validation_message

__all__ = ["Endpoint", "endpoints_of"]

_SCALARS = (str, int, float, bool)


def _is_scalar(annotation: Any) -> bool:
    if annotation in _SCALARS or annotation is inspect.Parameter.empty or annotation is Any:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(a is type(None) or a in _SCALARS for a in typing.get_args(annotation))
    return False


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    adapter: TypeAdapter[Any]
    in_body: bool
    required: bool
    default: Any


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One custom handler of a loaded model, ready to be called with a forwarded request."""

    method: str
    path: str
    function: Callable[..., Awaitable[Any] | Any]
    params: tuple[_Param, ...]

    async def call(self, query: dict[str, str], body: str) -> bytes:
        kwargs = self._bind(query, body)
        result = self.function(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        return orjson.dumps(jsonable_encoder(result))

    def _bind(self, query: dict[str, str], body: str) -> dict[str, Any]:
        in_body = [p for p in self.params if p.in_body]
        document: Any = None
        if in_body:
            if not body.strip():
                document = None
            else:
                try:
                    document = orjson.loads(body)
                except orjson.JSONDecodeError:
                    raise InvalidRequest(f"{self.method} {self.path}: the request body is not valid JSON") from None
        kwargs: dict[str, Any] = {}
        for param in self.params:
            if param.in_body:
                if len(in_body) == 1:
                    value, present = document, document is not None
                else:
                    present = isinstance(document, dict) and param.name in document
                    value = document[param.name] if present else None
            else:
                present = param.name in query
                value = query.get(param.name)
            if not present:
                if param.required:
                    where = "the request body" if param.in_body else f"query parameter {param.name!r}"
                    raise InvalidRequest(f"{self.method} {self.path}: {where} is required")
                kwargs[param.name] = param.default
                continue
            try:
                kwargs[param.name] = param.adapter.validate_python(value, strict=False)
            except ValidationError as exc:
                raise InvalidRequest(validation_message(exc, f"{self.method} {self.path}: {param.name}")) from None
        return kwargs


def endpoints_of(model: MLModel, label: str) -> list[Endpoint]:
    """The model's custom handlers, bound; ``label`` names the model in load errors."""
    found: list[Endpoint] = []
    for handler, method in get_custom_handlers(model):
        name = getattr(method, "__name__", "handler")
        if "{" in handler.rest_path:
            raise ValueError(
                f"{label}: custom handler {name}() has path parameters in {handler.rest_path!r},"
                " which the mlserver runtime does not support; take them as query parameters"
            )
        try:
            hints = typing.get_type_hints(method)
        except Exception as exc:
            raise ValueError(f"{label}: custom handler {name}(): cannot read its annotations: {exc}") from None
        params: list[_Param] = []
        for param in inspect.signature(method).parameters.values():
            annotation = hints.get(param.name, param.annotation)
            module = getattr(annotation, "__module__", "") or ""
            if module.startswith(("fastapi", "starlette")):
                raise ValueError(
                    f"{label}: custom handler {name}() takes {param.name!r} of a FastAPI type,"
                    " which the mlserver runtime does not pass; take the JSON body or query parameters"
                )
            required = param.default is inspect.Parameter.empty
            adapter: TypeAdapter[Any] = TypeAdapter(Any if annotation is inspect.Parameter.empty else annotation)
            default = None if required else param.default
            params.append(_Param(param.name, adapter, not _is_scalar(annotation), required, default))
        found.append(Endpoint(handler.rest_method.upper(), handler.rest_path, method, tuple(params)))
    return found

"""Content types: MLServer's ``parameters.content_type`` (``np``, ``pd``, ``str``, ``base64``).

A content type says how a tensor's elements are to be read (``str``: UTF-8 text,
``base64``: base64 text of raw bytes) or how the whole request is meant (``pd``: one
column per input). The codecs (:mod:`runtime_core.codecs`) check and apply them, but
only for tensors and requests whose ``parameters`` are not empty, so a request without
parameters pays nothing here. ``base64`` inputs are decoded to raw bytes and
``str``/``base64`` outputs encoded; ``pd`` is left to the runtime, which builds a
DataFrame with :meth:`~runtime_core.types.InferenceRequest.as_dataframe` (pandas is
imported only then). See docs/protocol.md, "Content types".

This module works on numpy arrays and plain values; it imports nothing from the
package but errors and wording, so :mod:`runtime_core.types` can build on it.
"""

from __future__ import annotations

import binascii
from typing import Any

import numpy as np

from runtime_core.errors import InvalidRequest
from runtime_core.sanitize import quoted

__all__ = [
    "CONTENT_TYPES",
    "OUTPUT_CONTENT_TYPES",
    "TEXT_CONTENT_TYPES",
    "as_bytes",
    "check_content_type",
    "decode_base64",
    "decode_content",
    "encode_base64",
    "encode_content",
    "import_pandas",
    "stack_columns",
    "strings",
]

#: Content types (``parameters.content_type``, MLServer's names) of requests and inputs.
CONTENT_TYPES = ("np", "pd", "str", "base64")
#: Requested outputs can ask these; ``str`` and ``base64`` apply to BYTES tensors only.
OUTPUT_CONTENT_TYPES = ("np", "str", "base64")
#: The content types that describe the elements of a BYTES tensor.
TEXT_CONTENT_TYPES = ("str", "base64")


def import_pandas() -> Any:
    """The pandas module, or :class:`InvalidRequest` (400) when it is not installed."""
    try:
        import pandas
    except ImportError:
        raise InvalidRequest("content type 'pd' needs pandas, which is not installed on the server") from None
    return pandas


def strings(array: np.ndarray[Any, Any], where: str) -> np.ndarray[Any, Any]:
    """BYTES elements decoded from UTF-8 (an object array of ``str``, same shape), or
    :class:`InvalidRequest` naming ``where``."""
    out = np.empty(array.size, dtype=object)
    try:
        out[:] = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    except UnicodeDecodeError:
        raise InvalidRequest(f"{where}: BYTES data is not valid UTF-8") from None
    return out.reshape(array.shape)


def as_bytes(x: Any) -> bytes:
    """A BYTES element as ``bytes`` (``str`` as UTF-8)."""
    return x if isinstance(x, bytes) else str(x).encode("utf-8")


def decode_base64(array: np.ndarray[Any, Any], where: str = "input") -> np.ndarray[Any, Any]:
    """Each element (base64 text, as ``bytes`` or ``str``) decoded to raw ``bytes``; same shape.

    Standard alphabet, padded, nothing else (no whitespace): anything else is
    :class:`InvalidRequest` naming ``where`` and the element's index."""
    flat = array.reshape(-1)
    out = np.empty(flat.size, dtype=object)
    for i, x in enumerate(flat):
        try:
            out[i] = binascii.a2b_base64(as_bytes(x), strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"{where}: element {i} is not valid base64 ({exc})") from None
    return out.reshape(array.shape)


def encode_base64(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Each element's bytes (``str`` as UTF-8) as base64 text (``str``); same shape."""
    flat = array.reshape(-1)
    out = np.empty(flat.size, dtype=object)
    out[:] = [binascii.b2a_base64(as_bytes(x), newline=False).decode("ascii") for x in flat]
    return out.reshape(array.shape)


def check_content_type(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    """``value`` when it is one of ``allowed``, else :class:`InvalidRequest` saying why."""
    if value not in allowed:
        if not isinstance(value, str):
            raise InvalidRequest(f"{where}: 'parameters.content_type' must be a string")
        if value in CONTENT_TYPES:
            raise InvalidRequest(
                f"{where}: content type {quoted(value)} does not apply here; use one of {', '.join(allowed)}"
            )
        raise InvalidRequest(f"{where}: unknown content type {quoted(value)}; expected one of {', '.join(allowed)}")
    return str(value)


def decode_content(
    data: np.ndarray[Any, Any], datatype: str, params: dict[str, Any], default: str | None, binary: bool, where: str
) -> np.ndarray[Any, Any]:
    """Apply an input's content type (its own, else the request's ``str``/``base64`` for BYTES).

    ``binary``: the elements came as raw bytes, so ``str`` must be checked to be UTF-8 (JSON
    strings are valid UTF-8 already)."""
    content_type = params.get("content_type")
    if content_type is None:
        if datatype != "BYTES" or default not in TEXT_CONTENT_TYPES:
            return data
        content_type = default
    else:
        check_content_type(content_type, where, CONTENT_TYPES)
        if content_type in TEXT_CONTENT_TYPES and datatype != "BYTES":
            raise InvalidRequest(f"{where}: content type {quoted(content_type)} needs datatype BYTES, not {datatype}")
    if content_type == "base64":
        return decode_base64(data, where)
    if content_type == "str" and binary:
        strings(data, where)
    return data


def encode_content(
    name: str, datatype: str, data: np.ndarray[Any, Any], asked: dict[str, Any], default: Any, params: dict[str, Any]
) -> np.ndarray[Any, Any]:
    """Output ``name``'s data for the wire under its content type: the requested output's
    (``asked``), else the request's ``str``/``base64`` (``default``), else the tensor's own
    (in ``params``). Echoes the client's choice in ``params``."""
    content_type = asked.get("content_type")
    if content_type is not None:
        if content_type in TEXT_CONTENT_TYPES and datatype != "BYTES":
            raise InvalidRequest(
                f"output {quoted(name)} is {datatype}; content type {quoted(content_type)} applies to BYTES outputs"
            )
        params["content_type"] = content_type
    elif default in TEXT_CONTENT_TYPES and datatype == "BYTES":
        content_type = params["content_type"] = default
    else:
        content_type = params.get("content_type")
    if content_type == "base64" and datatype == "BYTES":
        return encode_base64(data)
    return data


def stack_columns(columns: list[tuple[str, np.ndarray[Any, Any]]]) -> np.ndarray[Any, Any]:
    """Join named inputs side by side for a model that takes one matrix (MLServer's way with
    several inputs): ``[n]`` is one column, ``[n, k]`` is k columns. Raises
    :class:`InvalidRequest` for other ranks and for inputs with different row counts."""
    arrays = []
    for name, array in columns:
        if array.ndim == 1:
            array = array.reshape(-1, 1)
        elif array.ndim != 2:
            raise InvalidRequest(
                f"input {quoted(name)} has shape {list(array.shape)}; when a request has several inputs,"
                " each must be [n] or [n, k] and they are joined column-wise"
            )
        arrays.append(array)
    if len({a.shape[0] for a in arrays}) > 1:
        counts = ", ".join(f"{quoted(name)}: {a.shape[0]}" for (name, _), a in zip(columns, arrays, strict=True))
        raise InvalidRequest(f"the inputs have different numbers of rows ({counts})")
    return np.concatenate(arrays, axis=1)

"""Where the V2 types and content-type helpers used to live; kept for third-party plugins.

docs/protocol.md named this module as the home of the runtime authors' helpers, so plugins
outside this repository may import from it. New code imports from :mod:`runtime_core`
(the public types), :mod:`runtime_core.types`, :mod:`runtime_core.content` and
:mod:`runtime_core.codecs.json`.
"""

from __future__ import annotations

from runtime_core.codecs.json import decode_request, encode_response
from runtime_core.codecs.validation import checked_output
from runtime_core.content import CONTENT_TYPES, decode_base64, encode_base64, import_pandas, stack_columns
from runtime_core.types import (
    DATATYPES,
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    Tensor,
    TensorSpec,
    datatype_of,
)

__all__ = [
    "CONTENT_TYPES",
    "DATATYPES",
    "InferenceRequest",
    "InferenceResponse",
    "RequestedOutput",
    "Tensor",
    "TensorSpec",
    "checked_output",
    "datatype_of",
    "decode_base64",
    "decode_request",
    "encode_base64",
    "encode_response",
    "import_pandas",
    "stack_columns",
]

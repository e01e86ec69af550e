"""sum-model example: row sums, and a custom REST endpoint that sums a JSON list.

Laid out as ``models.py`` (``models.SumModel``), in the shape of the ``SumModel`` that
MLServer's documentation uses for ``custom_handler``; the code is ours. The endpoint's
argument is marked as the request body with FastAPI's ``Body``, as MLServer's own test
models do: with a bare ``list`` annotation MLServer 1.7.1 answers 422 to a JSON list.
"""

from typing import Annotated

from fastapi import Body
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.handlers.custom import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse


class SumModel(MLModel):
    @custom_handler(rest_path="/my-custom-endpoint")
    async def my_payload(self, payload: Annotated[list, Body()]) -> int:
        return sum(payload)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        values = self.decode(payload.inputs[0], default_codec=NumpyCodec)
        totals = values.sum(axis=1, keepdims=True)
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name="total", payload=totals)],
        )

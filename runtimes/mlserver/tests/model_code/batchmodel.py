"""A row-wise MLModel that counts its predict() calls, to see MLServer's batching merge requests."""

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse


class CountingSumModel(MLModel):
    async def load(self) -> bool:
        self.calls = 0
        self.rows: list[int] = []
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        self.calls += 1
        x = np.asarray(NumpyCodec.decode_input(payload.inputs[0]), dtype=np.float64)
        self.rows.append(len(x))
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("total", x.sum(axis=1, keepdims=True))]
        )

    @custom_handler(rest_path="/batch-model/calls", rest_method="GET")
    async def counted(self) -> dict:
        return {"calls": self.calls, "rows": self.rows}

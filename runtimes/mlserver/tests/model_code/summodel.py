"""A sum MLModel with an endpoint of its own and a look at the request's headers."""

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse


class SumModel(MLModel):
    async def load(self) -> bool:
        self.calls = 0
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        self.calls += 1
        x = NumpyCodec.decode_input(payload.inputs[0])
        total = np.asarray(x, dtype=np.float64).reshape(len(x), -1).sum(axis=1, keepdims=True)
        outputs = [NumpyCodec.encode_output("total", total)]
        headers = payload.parameters.headers if payload.parameters else None
        if headers and "x-echo" in headers:
            outputs.append(StringCodec.encode_output("echo", [headers["x-echo"]]))
        return InferenceResponse(model_name=self.name, outputs=outputs)

    @custom_handler(rest_path="/sum-model/stats", rest_method="GET")
    async def stats(self, scale: int = 1) -> dict:
        return {"calls": self.calls * scale}

    @custom_handler(rest_path="/sum-model/add")
    async def add(self, numbers: list[float]) -> dict:
        return {"sum": sum(numbers), "calls": self.calls}

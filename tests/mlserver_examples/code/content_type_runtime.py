"""content-type example: echoes each input back, after decoding it by its content type.

Laid out as ``runtime.py`` (``runtime.EchoRuntime``), in the shape of MLServer's documented
``content-type`` example; the code is ours. Each output repeats its input as sent, plus a
second output per input naming the Python type the input was decoded to, so that a test
sees which codec MLServer chose.
"""

from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class EchoRuntime(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        outputs = []
        for request_input in payload.inputs:
            decoded = self.decode(request_input)
            outputs.append(
                ResponseOutput(
                    name=request_input.name,
                    datatype=request_input.datatype,
                    shape=request_input.shape,
                    data=request_input.data,
                )
            )
            outputs.append(StringCodec.encode_output(f"{request_input.name}-type", [type(decoded).__name__]))
        return InferenceResponse(model_name=self.name, outputs=outputs)

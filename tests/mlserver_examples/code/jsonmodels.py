"""custom-json example: a model that takes JSON text in BYTES inputs and answers JSON.

Written for runtime-core's comparison tests in the shape of MLServer's documented
``custom-json`` example (a ``JsonHelloWorldModel`` in ``jsonmodels.py``); the code is ours.
"""

import json

from mlserver import MLModel, types
from mlserver.codecs import StringCodec


class JsonHelloWorldModel(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: types.InferenceRequest) -> types.InferenceResponse:
        received = {}
        for request_input in payload.inputs:
            text = "".join(self.decode(request_input, default_codec=StringCodec))
            received[request_input.name] = json.loads(text)
        answer = json.dumps({"request": received, "server_response": "Hello from the server."}).encode("utf-8")
        return types.InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.version,
            outputs=[
                types.ResponseOutput(
                    name="echo_response",
                    shape=[len(answer)],
                    datatype="BYTES",
                    data=[answer],
                    parameters=types.Parameters(content_type="str"),
                )
            ],
        )

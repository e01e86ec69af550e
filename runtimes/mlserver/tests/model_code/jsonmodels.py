"""A JSON hello-world MLModel, as an MLServer user writes one beside model-settings.json."""

import json

from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, Parameters


class JsonHelloWorldModel(MLModel):
    async def load(self) -> bool:
        self.greeting = (self.settings.parameters.extra or {}).get("greeting", "hello")
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        docs = [json.loads(text) for text in texts]
        replies = [json.dumps({"reply": f"{self.greeting} {doc['name']}"}) for doc in docs]
        output = StringCodec.encode_output("reply", replies)
        output.parameters = Parameters(content_type="str")
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            parameters=Parameters(content_type="str", served_by="json-hello"),
            outputs=[output],
        )

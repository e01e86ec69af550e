"""MLModels that fail: at load, or by streaming only."""

from mlserver import MLModel


class FailsToLoad(MLModel):
    async def load(self) -> bool:
        raise RuntimeError("the weights file is missing")

    async def predict(self, payload):
        raise AssertionError("never loaded, never asked")


class StreamsOnly(MLModel):
    async def predict_stream(self, payloads):
        async for payload in payloads:
            yield payload

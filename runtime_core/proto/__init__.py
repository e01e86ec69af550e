"""The V2 gRPC messages, generated from the ``.proto`` files beside this module.

Only ``google.protobuf`` is imported here (never grpcio): workers use these
messages to decode ``ModelInfer`` requests and encode their replies. Regenerate
with ``python -m runtime_core.proto.generate``.
"""

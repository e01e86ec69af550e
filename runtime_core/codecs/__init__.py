"""One codec per wire format, each turning request bytes into :mod:`runtime_core.types` and
a response back into bytes, in the process that runs the model:

* :mod:`runtime_core.codecs.json`: REST's JSON body and Triton's binary tensor extension;
* :mod:`runtime_core.codecs.grpc`: the gRPC service's ``ModelInferRequest``/``ModelInferResponse``
  (imported only when a gRPC request arrives: it needs protobuf).

Both check each input, requested output and produced output with
:mod:`runtime_core.codecs.validation`, so a request means the same, and fails with the same
words, whichever wire it came on.
"""

"""A loaded model's configuration in Triton's shape: ``GET /v2/models/{m}/config`` and ModelConfig.

Triton's clients and tools (tritonclient's ``get_model_config``, model analyzers, dashboards)
read a model's configuration rather than its metadata. runtime-core has no ``config.pbtxt``:
the answer is drawn from what the server knows about the model, with Triton's field names
and enums (the JSON keys are the protobuf field names, as Triton's HTTP endpoint writes them):

=========================== =================================================================
``name``                     the model's name
``platform``, ``backend``    the metadata's platform; the runtime that serves it
``max_batch_size``           the model's ``max_batch_size`` (0: no adaptive batching)
``input``, ``output``        the metadata's tensors: ``data_type`` as ``TYPE_FP32`` (BYTES is
                             ``TYPE_STRING``), ``dims`` without the leading batch dimension
                             when ``max_batch_size`` > 0, as Triton writes them
``instance_group``           one group, ``KIND_CPU``, ``count`` = the model's most workers
``dynamic_batching``         when ``max_batch_size`` > 0: ``max_queue_delay_microseconds`` is
                             ``max_batch_time``
=========================== =================================================================

Imports nothing from the front ends; :class:`~runtime_core.dataplane.DataPlane` serves it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime_core.repository import ModelRecord
    from runtime_core.runtime import ModelMetadata
    from runtime_core.types import TensorSpec

#: V2 datatype -> Triton's ``DataType`` enum name.
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
    "BF16": "TYPE_BF16",
}


def _dims(spec: TensorSpec, batched: bool) -> list[int]:
    # Triton's config leaves the batch dimension out of dims when the model batches; the
    # metadata (and ours) shows it as a leading -1.
    shape = list(spec.shape)
    return shape[1:] if batched and shape and shape[0] == -1 else shape


def triton_config(record: ModelRecord, metadata: ModelMetadata) -> dict[str, Any]:
    """The configuration of a loaded model version, as Triton's ``ModelConfig`` JSON."""
    settings = record.settings
    max_batch_size = settings.max_batch_size if settings is not None else 0
    batched = max_batch_size > 0
    workers = record.pool.health().workers if record.pool is not None else 1
    config: dict[str, Any] = {
        "name": record.name,
        "platform": metadata.platform or record.runtime,
        "backend": record.runtime,
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": spec.name,
                "data_type": TRITON_TYPES.get(spec.datatype, "TYPE_INVALID"),
                "format": "FORMAT_NONE",
                "dims": _dims(spec, batched),
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
            for spec in metadata.inputs
        ],
        "output": [
            {
                "name": spec.name,
                "data_type": TRITON_TYPES.get(spec.datatype, "TYPE_INVALID"),
                "dims": _dims(spec, batched),
                "label_filename": "",
                "is_shape_tensor": False,
            }
            for spec in metadata.outputs
        ],
        "instance_group": [{"name": record.name, "kind": "KIND_CPU", "count": max(workers, 1), "gpus": []}],
        "parameters": {},
    }
    if batched and settings is not None:
        config["dynamic_batching"] = {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": round(settings.max_batch_time * 1_000_000),
            "preserve_ordering": False,
        }
    return config

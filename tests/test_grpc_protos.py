"""The shipped gRPC messages: generated from our .proto, wire-compatible with Triton's, and
importable beside Triton's generated module (which registers the same ``inference.*`` names)."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton

import runtime_core.proto
from runtime_core.proto.generate import generate

PROTO_DIR = Path(runtime_core.proto.__file__).parent


def test_the_shipped_modules_are_what_the_protos_generate(tmp_path: Path) -> None:
    for fresh in generate(tmp_path):
        shipped = PROTO_DIR / fresh.name
        assert shipped.read_text() == fresh.read_text(), (
            f"{shipped.name} is stale: run `python -m runtime_core.proto.generate`"
        )
    assert sorted(p.name for p in PROTO_DIR.glob("*_pb2.py*")) == sorted(p.name for p in tmp_path.iterdir())


def ours(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "set.pb"
    code = protoc.main(["protoc", f"--proto_path={PROTO_DIR}", f"--descriptor_set_out={out}", "grpc_service.proto"])
    assert code == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return files[0]


def theirs() -> descriptor_pb2.FileDescriptorProto:
    """Triton's grpc_service.proto with the messages and enums of its model_config.proto (which
    ours declares in the one file, under the same package)."""
    proto, config = descriptor_pb2.FileDescriptorProto(), descriptor_pb2.FileDescriptorProto()
    triton.DESCRIPTOR.CopyToProto(proto)
    triton_config.DESCRIPTOR.CopyToProto(config)
    proto.message_type.extend(config.message_type)
    proto.enum_type.extend(config.enum_type)
    return proto


def enums(message: descriptor_pb2.DescriptorProto | descriptor_pb2.FileDescriptorProto) -> dict[str, int]:
    """Every enum value of a file's or message's enums, nested ones included."""
    found = {f"{e.name}.{v.name}": v.number for e in message.enum_type for v in e.value}
    is_file = isinstance(message, descriptor_pb2.FileDescriptorProto)
    nested_types = message.message_type if is_file else message.nested_type
    for nested in nested_types:
        found.update({f"{nested.name}.{k}": v for k, v in enums(nested).items()})
    return found


def fields(message: descriptor_pb2.DescriptorProto, prefix: str = "") -> dict[str, tuple[object, ...]]:
    """Every field of a message and its nested messages: what decides the wire format."""
    found = {
        f"{prefix}{message.name}.{f.name}": (f.number, f.type, f.label, f.type_name, f.HasField("oneof_index"))
        for f in message.field
    }
    for nested in message.nested_type:
        found.update(fields(nested, f"{prefix}{message.name}."))
    return found


def test_every_message_and_rpc_matches_tritons_grpc_service(tmp_path: Path) -> None:
    mine, reference = ours(tmp_path), theirs()
    assert mine.package == reference.package == "inference"
    by_name = {m.name: m for m in reference.message_type}
    assert mine.message_type, "no messages"
    for message in mine.message_type:
        assert message.name in by_name, message.name
        own, reference_fields = fields(message), fields(by_name[message.name])
        # Every field we declare has Triton's number and type; a field we leave out (ModelStatistics's
        # memory_usage) is one we never send.
        assert {k: reference_fields.get(k) for k in own} == own, message.name
    # Enum values travel as numbers: every one we name has Triton's number (TYPE_FP32 is 11).
    own_enums, reference_enums = enums(mine), enums(reference)
    assert own_enums and {k: reference_enums.get(k) for k in own_enums} == own_enums
    (service,) = mine.service
    (reference_service,) = reference.service
    assert service.name == reference_service.name == "GRPCInferenceService"
    methods = {m.name: (m.input_type, m.output_type) for m in reference_service.method}
    for method in service.method:
        assert methods[method.name] == (method.input_type, method.output_type), method.name


def test_our_messages_live_beside_tritons_and_read_each_others_bytes() -> None:
    from runtime_core.proto import grpc_service_pb2 as mine

    request = triton.ModelInferRequest(model_name="m", id="7", raw_input_contents=[b"\x00\x00\x80?"])
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    request.parameters["timeout"].int64_param = 5
    decoded = mine.ModelInferRequest.FromString(request.SerializeToString())
    assert (decoded.model_name, decoded.id, list(decoded.inputs[0].shape)) == ("m", "7", [1])
    assert decoded.parameters["timeout"].int64_param == 5
    reply = mine.ModelInferResponse(model_name="m", raw_output_contents=[b"\x01"])
    reply.outputs.add(name="y", datatype="BOOL", shape=[1])
    back = triton.ModelInferResponse.FromString(reply.SerializeToString())
    assert (back.outputs[0].name, list(back.raw_output_contents)) == ("y", [b"\x01"])

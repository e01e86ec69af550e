"""The V2 tensor codec (runtime_core.codecs.json): JSON and binary, decode and encode.

Unit tests, no server: what a runtime may rely on after ``decode_request`` and
what a client gets from ``encode_response``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime_core.codecs.json import decode_request, encode_response
from runtime_core.errors import InferenceFailed, InvalidRequest
from runtime_core.types import DATATYPES, InferenceRequest, InferenceResponse, Tensor, datatype_of

NUMERIC = [name for name in DATATYPES if name != "BYTES"]
INTS = ["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
FLOATS = ["FP16", "FP32", "FP64"]
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- helpers


def body_of(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def json_input(datatype: str, shape: list[int], data: Any, name: str = "x", **extra: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data, **extra}


def binary_input(datatype: str, shape: list[int], size: int, name: str = "x") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def binary_body(inputs: list[dict[str, Any]], tail: bytes, **extra: Any) -> tuple[bytes, int]:
    header = body_of(*inputs, **extra)
    return header + tail, len(header)


def decode_one(datatype: str, shape: list[int], data: Any) -> np.ndarray[Any, Any]:
    return decode_request(body_of(json_input(datatype, shape, data))).inputs[0].data


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def invalid(body: bytes | dict[str, Any], json_length: int | None = None) -> str:
    """Decode ``body``; it must fail with InvalidRequest. Returns the message."""
    if isinstance(body, dict):
        body = orjson.dumps(body)
    with pytest.raises(InvalidRequest) as info:
        decode_request(body, json_length)
    return str(info.value)


def encode(
    outputs: list[Tensor], request: InferenceRequest | None = None, **kwargs: Any
) -> tuple[dict[str, Any], bytes, int | None]:
    request = request or InferenceRequest(inputs=[])
    body, json_length = encode_response(
        InferenceResponse(outputs),
        model_name=kwargs.get("model_name", "m"),
        model_version=kwargs.get("model_version"),
        request=request,
    )
    header = body if json_length is None else body[:json_length]
    tail = b"" if json_length is None else body[json_length:]
    return orjson.loads(header), tail, json_length


def same(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    """Exact equality, bit for bit for floats (so NaN and -0.0 count)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        bits = np.dtype(f"u{a.dtype.itemsize}")
        return bool(np.array_equal(a.view(bits), b.view(bits)))
    return bool(np.array_equal(a, b))


# --------------------------------------------------------------------------- JSON decoding


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("BOOL", [True, False, True], np.array([True, False, True])),
        ("UINT8", [0, 255, 7], np.array([0, 255, 7], dtype=np.uint8)),
        ("UINT16", [0, 65535, 7], np.array([0, 65535, 7], dtype=np.uint16)),
        ("UINT32", [0, 2**32 - 1, 7], np.array([0, 2**32 - 1, 7], dtype=np.uint32)),
        ("UINT64", [0, 2**64 - 1, 7], np.array([0, 2**64 - 1, 7], dtype=np.uint64)),
        ("INT8", [-128, 127, 0], np.array([-128, 127, 0], dtype=np.int8)),
        ("INT16", [-(2**15), 2**15 - 1, 0], np.array([-(2**15), 2**15 - 1, 0], dtype=np.int16)),
        ("INT32", [-(2**31), 2**31 - 1, 0], np.array([-(2**31), 2**31 - 1, 0], dtype=np.int32)),
        ("INT64", [-(2**63), 2**63 - 1, 0], np.array([-(2**63), 2**63 - 1, 0], dtype=np.int64)),
        ("FP16", [0.5, -2.0, 65504.0], np.array([0.5, -2.0, 65504.0], dtype=np.float16)),
        ("FP32", [0.1, -2.5, 3], np.array([0.1, -2.5, 3], dtype=np.float32)),
        ("FP64", [0.1, -2.5, 1e300], np.array([0.1, -2.5, 1e300], dtype=np.float64)),
        ("BYTES", ["a", "", "héllo"], np.array([b"a", b"", "héllo".encode()], dtype=object)),
    ],
)
def test_every_datatype_decodes_from_json_to_its_numpy_dtype(
    datatype: str, data: list[Any], expected: np.ndarray[Any, Any]
) -> None:
    array = decode_one(datatype, [3], data)
    assert array.dtype == DATATYPES[datatype]
    assert array.shape == (3,)
    assert array.tolist() == expected.tolist()
    if datatype == "BYTES":
        assert all(isinstance(x, bytes) for x in array)


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_flat_and_nested_data_give_the_same_tensor(datatype: str) -> None:
    values: list[Any]
    if datatype == "BYTES":
        values = ["a", "b", "c", "d", "e", "f"]
    elif datatype == "BOOL":
        values = [True, False, True, True, False, False]
    else:
        values = [1, 2, 3, 4, 5, 6]
    nested = [values[:3], values[3:]]
    flat = decode_one(datatype, [2, 3], values)
    deep = decode_one(datatype, [2, 3], nested)
    assert flat.shape == deep.shape == (2, 3)
    assert flat.tolist() == deep.tolist()
    # Row-major: element [1, 0] is the fourth value.
    assert deep[1, 0] == flat.reshape(-1)[3]


def test_scalar_and_empty_shapes() -> None:
    assert decode_one("FP32", [], 2.5).shape == ()
    assert decode_one("FP32", [], [2.5]).item() == 2.5
    assert decode_one("INT32", [0, 3], []).shape == (0, 3)
    assert decode_one("BYTES", [0], []).shape == (0,)


def test_request_fields_are_decoded() -> None:
    request = decode_request(
        body_of(
            json_input("FP32", [1], [1], parameters={"content_type": "np"}),
            json_input("INT8", [1], [2], name="z"),
            id="req-1",
            parameters={"binary_data_output": False, "custom": 3},
            outputs=[{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
        )
    )
    assert request.id == "req-1"
    assert request.parameters == {"binary_data_output": False, "custom": 3}
    assert [t.name for t in request.inputs] == ["x", "z"]
    assert request.inputs[0].parameters == {"content_type": "np"}
    assert request.input("z").data.tolist() == [2]
    assert request.output_names == ["y", "z"]
    assert request.outputs[0].parameters == {"binary_data": True}
    with pytest.raises(InvalidRequest):
        request.input("nope")


@pytest.mark.parametrize(
    ("datatype", "shape", "data"),
    [
        ("FP32", [3], [1, 2]),  # too few
        ("FP32", [2], [1, 2, 3]),  # too many
        ("FP32", [2, 2], [[1, 2, 3], [4, 5, 6]]),  # nested, wrong count
        ("BYTES", [3], ["a", "b"]),
        ("BYTES", [1], ["a", "b"]),
        ("BOOL", [0], [True]),
    ],
)
def test_shape_mismatch_is_invalid(datatype: str, shape: list[int], data: Any) -> None:
    message = invalid(body_of(json_input(datatype, shape, data)))
    assert "shape" in message and "'x'" in message


@pytest.mark.parametrize("datatype", ["FLOAT", "fp32", "BF16", "", None, 3, ["FP32"], "STRING"])
def test_bad_datatype_is_invalid(datatype: Any) -> None:
    message = invalid(body_of(json_input(datatype, [1], [1])))
    assert "datatype" in message


@pytest.mark.parametrize("shape", [None, 3, [-1], [1.0], [True], ["2"], [[1]], {"a": 1}, [0] * 65, [2**40] * 3])
def test_bad_shape_is_invalid(shape: Any) -> None:
    assert "shape" in invalid(body_of(json_input("FP32", shape, [])))


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("UINT8", 256),
        ("UINT8", -1),
        ("UINT16", 2**16),
        ("UINT32", 2**32),
        ("UINT64", -1),
        ("INT8", 128),
        ("INT8", -129),
        ("INT16", 2**15),
        ("INT32", -(2**31) - 1),
        ("INT64", 2**63),
        ("FP16", 70000.0),
        ("FP32", 1e39),
        ("FP32", -1e300),
    ],
)
def test_out_of_range_values_are_invalid(datatype: str, value: Any) -> None:
    message = invalid(body_of(json_input(datatype, [2], [0, value])))
    assert datatype in message


def test_integers_beyond_64_bits_are_invalid() -> None:
    invalid(b'{"inputs":[{"name":"x","datatype":"UINT64","shape":[1],"data":[18446744073709551616]}]}')


@pytest.mark.parametrize("datatype", INTS)
@pytest.mark.parametrize("value", [1.5, 2.0, -0.0])
def test_floats_into_integer_types_are_invalid(datatype: str, value: float) -> None:
    assert "integers" in invalid(body_of(json_input(datatype, [2], [1, value])))


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("data", [["1"], ["a", "b"], [1, "2"], "3", [[1], ["x"]]])
def test_strings_into_numeric_types_are_invalid(datatype: str, data: Any) -> None:
    invalid(body_of(json_input(datatype, [len(data) if isinstance(data, list) else 1], data)))


@pytest.mark.parametrize("datatype", ["BOOL", "INT32", "FP64"])
def test_numbers_are_not_booleans(datatype: str) -> None:
    if datatype == "BOOL":
        invalid(body_of(json_input("BOOL", [2], [1, 0])))
        invalid(body_of(json_input("BOOL", [1], [0.0])))
    else:  # but booleans are accepted as numbers (JSON true == 1)
        assert decode_one(datatype, [2], [True, False]).tolist() == [1, 0]


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
@pytest.mark.parametrize("data", [None, [None], [1, None], [[None]], [{"a": 1}], {"a": 1}])
def test_null_and_objects_as_data_are_invalid(datatype: str, data: Any) -> None:
    count = len(data) if isinstance(data, list) else 1
    invalid(body_of(json_input(datatype, [count], data)))


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
@pytest.mark.parametrize("data", [[[1, 2], [3]], [[1, 2], 3], [[[1]], [2]], [1, [2, 3]]])
def test_ragged_nesting_is_invalid(datatype: str, data: Any) -> None:
    if datatype == "BYTES":
        data = json.loads(json.dumps(data).replace("1", '"1"').replace("2", '"2"').replace("3", '"3"'))
    invalid(body_of(json_input(datatype, [3], data)))


def test_bytes_must_be_strings() -> None:
    assert "strings" in invalid(body_of(json_input("BYTES", [2], ["a", 1])))
    invalid(body_of(json_input("BYTES", [1], [True])))


def test_duplicate_input_names_are_invalid() -> None:
    message = invalid(body_of(json_input("FP32", [1], [1]), json_input("FP32", [1], [2])))
    assert "twice" in message


@pytest.mark.parametrize("name", [None, "", 3, ["x"]])
def test_input_name_must_be_a_non_empty_string(name: Any) -> None:
    assert "name" in invalid(body_of(json_input("FP32", [1], [1], name=name)))


def test_input_without_data_is_invalid() -> None:
    assert "data" in invalid(body_of({"name": "x", "datatype": "FP32", "shape": [1]}))


@pytest.mark.parametrize("body", [b"[]", b"3", b'"inputs"', b"null", b"true", b'[{"inputs": []}]'])
def test_non_object_body_is_invalid(body: bytes) -> None:
    assert "object" in invalid(body)


@pytest.mark.parametrize(
    "body", [b"", b"{", b"{'inputs': []}", b'{"inputs": [],}', b"\xff\xfe", b'{"inputs": [NaN]}', b"{} {}"]
)
def test_invalid_json_is_invalid(body: bytes) -> None:
    assert "JSON" in invalid(body)


@pytest.mark.parametrize("inputs", [None, {}, "x", 3, {"name": "x"}])
def test_inputs_must_be_a_list(inputs: Any) -> None:
    body = {} if inputs is None else {"inputs": inputs}
    assert "inputs" in invalid(body)


@pytest.mark.parametrize("item", [3, "x", None, []])
def test_inputs_must_be_objects(item: Any) -> None:
    invalid({"inputs": [item]})


@pytest.mark.parametrize("request_id", [3, 1.5, True, ["a"], {"a": 1}])
def test_id_must_be_a_string(request_id: Any) -> None:
    assert "id" in invalid(body_of(id=request_id))


def test_missing_or_null_id_is_fine() -> None:
    assert decode_request(body_of()).id is None
    assert decode_request(body_of(id=None)).id is None


@pytest.mark.parametrize("outputs", [{}, "y", 3, [3], ["y"], [{}], [{"name": 3}], [{"name": "y", "parameters": 3}]])
def test_malformed_outputs_are_invalid(outputs: Any) -> None:
    invalid(body_of(outputs=outputs))


@pytest.mark.parametrize("where", ["request", "input"])
@pytest.mark.parametrize("parameters", [3, "x", [1], True])
def test_parameters_must_be_an_object(where: str, parameters: Any) -> None:
    if where == "request":
        invalid(body_of(parameters=parameters))
    else:
        invalid(body_of(json_input("FP32", [1], [1], parameters=parameters)))


# --------------------------------------------------------------------------- binary decoding


BINARY_CASES = {
    "BOOL": np.array([True, False, True]),
    "UINT8": np.array([0, 255, 3], dtype="<u1"),
    "UINT16": np.array([0, 65535, 3], dtype="<u2"),
    "UINT32": np.array([0, 2**32 - 1, 3], dtype="<u4"),
    "UINT64": np.array([0, 2**64 - 1, 3], dtype="<u8"),
    "INT8": np.array([-128, 127, 3], dtype="<i1"),
    "INT16": np.array([-(2**15), 2**15 - 1, 3], dtype="<i2"),
    "INT32": np.array([-(2**31), 2**31 - 1, 3], dtype="<i4"),
    "INT64": np.array([-(2**63), 2**63 - 1, 3], dtype="<i8"),
    "FP16": np.array([0.5, np.inf, -2], dtype="<f2"),
    "FP32": np.array([0.1, np.nan, -2], dtype="<f4"),
    "FP64": np.array([0.1, -np.inf, 1e300], dtype="<f8"),
}


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numeric_binary_inputs_are_views_on_the_body(datatype: str) -> None:
    expected = BINARY_CASES[datatype]
    raw = expected.tobytes()
    body, length = binary_body([binary_input(datatype, [3], len(raw))], raw)
    array = decode_request(body, length).inputs[0].data
    assert array.dtype == DATATYPES[datatype]
    assert same(array, expected)
    # Not copied: the array's memory is the request body's.
    assert np.shares_memory(array, np.frombuffer(body, dtype=np.uint8))


def test_binary_views_on_a_memoryview_body_share_memory() -> None:
    raw = np.arange(6, dtype="<i4").tobytes()
    body, length = binary_body([binary_input("INT32", [2, 3], len(raw))], raw)
    buffer = bytearray(body)
    array = decode_request(memoryview(buffer), length).inputs[0].data
    assert array.tolist() == [[0, 1, 2], [3, 4, 5]]
    buffer[length] = 9  # writing the body shows through the tensor
    assert array[0, 0] == 9


def test_binary_bytes_input() -> None:
    items = [b"", b"abc", b"\x00\xff", "é".encode()]
    tail = bytes_elements(*items)
    body, length = binary_body([binary_input("BYTES", [2, 2], len(tail))], tail)
    array = decode_request(body, length).inputs[0].data
    assert array.shape == (2, 2)
    assert array.reshape(-1).tolist() == items
    assert all(type(x) is bytes for x in array.reshape(-1))


def test_binary_and_json_inputs_mix_in_order() -> None:
    a = np.array([1.5, 2.5], dtype="<f4")
    b = bytes_elements(b"hi")
    inputs = [
        binary_input("FP32", [2], 8, name="a"),
        json_input("INT8", [1], [4], name="j"),
        binary_input("BYTES", [1], len(b), name="b"),
    ]
    body, length = binary_body(inputs, a.tobytes() + b)
    request = decode_request(body, length)
    assert request.input("a").data.tolist() == [1.5, 2.5]
    assert request.input("j").data.tolist() == [4]
    assert request.input("b").data.tolist() == [b"hi"]


def test_json_length_equal_to_body_is_plain_json() -> None:
    body = body_of(json_input("FP32", [1], [1]))
    assert decode_request(body, len(body)).inputs[0].data.tolist() == [1.0]


@pytest.mark.parametrize("extra", [1, 100])
def test_json_length_past_the_body_is_invalid(extra: int) -> None:
    body, length = binary_body([binary_input("FP32", [1], 4)], b"\0" * 4)
    invalid(body, len(body) + extra)
    assert length < len(body)


def test_negative_json_length_is_invalid() -> None:
    invalid(body_of(), -1)


def test_json_length_cutting_the_header_is_invalid() -> None:
    body, length = binary_body([binary_input("FP32", [1], 4)], b"\0" * 4)
    assert "JSON" in invalid(body, length - 1)
    invalid(body, 0)


@pytest.mark.parametrize(
    ("shape", "size", "tail"),
    [
        ([2], 4, b"\0" * 4),  # size smaller than the shape needs
        ([1], 8, b"\0" * 8),  # larger
        ([3], 7, b"\0" * 7),  # not a multiple
        ([1], 4, b"\0" * 3),  # runs past the body
        ([1], 100, b"\0" * 4),
    ],
)
def test_binary_data_size_mismatch_is_invalid(shape: list[int], size: int, tail: bytes) -> None:
    body, length = binary_body([binary_input("FP32", shape, size)], tail)
    invalid(body, length)


@pytest.mark.parametrize("size", [-1, 1.5, "4", True, None, [4]])
def test_binary_data_size_must_be_an_integer(size: Any) -> None:
    item = {"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": size}}
    body, length = binary_body([item], b"\0" * 4)
    if size is None:  # no binary_data_size: a JSON input without data
        assert "data" in invalid(body, length)
    else:
        invalid(body, length)


def test_binary_input_without_binary_part_is_invalid() -> None:
    assert "past the end" in invalid(body_of(binary_input("FP32", [1], 4)))


def test_extra_trailing_bytes_are_invalid() -> None:
    body, length = binary_body([binary_input("FP32", [1], 4)], b"\0" * 5)
    assert "longer" in invalid(body, length)
    body, length = binary_body([json_input("FP32", [1], [1])], b"junk")
    invalid(body, length)


def test_binary_bool_bytes_must_be_zero_or_one() -> None:
    body, length = binary_body([binary_input("BOOL", [2], 2)], b"\x01\x02")
    assert "BOOL" in invalid(body, length)


@pytest.mark.parametrize(
    ("shape", "tail"),
    [
        ([2], bytes_elements(b"a")),  # fewer elements than the shape
        ([1], b"\x05\x00\x00\x00ab"),  # length runs past binary_data_size
        ([1], b"\x01\x00"),  # truncated length prefix
        ([1], bytes_elements(b"a") + b"x"),  # leftover bytes after the elements
        ([1], bytes_elements(b"a", b"b")),  # more elements than the shape
        ([1], b""),
        ([2**40], b""),  # a huge shape with no data: rejected, not allocated
        ([2**30, 2**30], bytes_elements(b"a")),
    ],
)
def test_bytes_length_prefix_errors_are_invalid(shape: list[int], tail: bytes) -> None:
    body, length = binary_body([binary_input("BYTES", shape, len(tail))], tail)
    invalid(body, length)


def test_bytes_length_prefix_past_the_end_of_the_body_is_invalid() -> None:
    tail = b"\xff\xff\xff\xffab"
    body, length = binary_body([binary_input("BYTES", [1], len(tail))], tail)
    assert "past" in invalid(body, length)


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("datatype", NUMERIC)
def test_json_encoding_of_every_numeric_datatype(datatype: str) -> None:
    array = BINARY_CASES[datatype]
    if datatype in FLOATS:
        array = np.array([0.5, -2.0, 1.25], dtype=DATATYPES[datatype])
    doc, tail, length = encode([Tensor("y", array.reshape(3, 1))])
    assert length is None and tail == b""
    (out,) = doc["outputs"]
    assert out == {"name": "y", "datatype": datatype, "shape": [3, 1], "data": array.tolist()}


def test_json_encoding_of_bytes_and_strings() -> None:
    doc, _, _ = encode(
        [
            Tensor("b", np.array([[b"ab"], ["é".encode()]], dtype=object)),
            Tensor("s", np.array(["x", "yz"])),
        ]
    )
    b, s = doc["outputs"]
    assert b == {"name": "b", "datatype": "BYTES", "shape": [2, 1], "data": ["ab", "é"]}
    assert s == {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["x", "yz"]}


def test_json_encoding_is_row_major_and_handles_views() -> None:
    base = np.arange(12, dtype=">i4").reshape(3, 4)  # big-endian and non-contiguous
    doc, _, _ = encode([Tensor("y", base[:, ::2].T)])
    out = doc["outputs"][0]
    assert out["datatype"] == "INT32"
    assert out["shape"] == [2, 3]
    assert out["data"] == [0, 4, 8, 2, 6, 10]


def test_response_fields() -> None:
    request = decode_request(body_of(id="abc"))
    body, length = encode_response(
        InferenceResponse([Tensor("y", np.array([1], dtype=np.int8))], parameters={"k": "v"}),
        model_name="m",
        model_version="3",
        request=request,
    )
    assert length is None
    doc = orjson.loads(body)
    assert doc["model_name"] == "m"
    assert doc["model_version"] == "3"
    assert doc["id"] == "abc"
    assert doc["parameters"] == {"k": "v"}
    doc, _, _ = encode([Tensor("y", np.array([1]))])
    assert "model_version" not in doc and "id" not in doc and "parameters" not in doc


def test_binary_data_per_output() -> None:
    request = decode_request(body_of(outputs=[{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}]))
    a = np.array([[1.5, 2.5]], dtype=np.float32)
    b = np.array([1, 2], dtype=np.int64)
    doc, tail, length = encode([Tensor("a", a), Tensor("b", b)], request)
    assert length is not None
    out_a, out_b = doc["outputs"]
    assert out_a == {"name": "a", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
    assert out_b["data"] == [1, 2] and "parameters" not in out_b
    assert tail == a.astype("<f4").tobytes()


def test_binary_data_output_for_all_outputs() -> None:
    request = decode_request(body_of(parameters={"binary_data_output": True}))
    a = np.array([True, False])
    s = np.array([b"xy", b""], dtype=object)
    f = np.array([1.0], dtype=">f8")  # big-endian in memory, little-endian on the wire
    doc, tail, _ = encode([Tensor("a", a), Tensor("s", s), Tensor("f", f)], request)
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    assert all("data" not in o for o in doc["outputs"])
    assert sizes == [2, 4 + 2 + 4, 8]
    assert tail == b"\x01\x00" + bytes_elements(b"xy", b"") + np.array([1.0], dtype="<f8").tobytes()


def test_binary_data_false_overrides_binary_data_output() -> None:
    request = decode_request(
        body_of(parameters={"binary_data_output": True}, outputs=[{"name": "a", "parameters": {"binary_data": False}}])
    )
    doc, tail, length = encode([Tensor("a", np.array([1], dtype=np.uint8))], request)
    assert length is None and tail == b""
    assert doc["outputs"][0]["data"] == [1]


def test_output_parameters_are_kept() -> None:
    request = decode_request(body_of(parameters={"binary_data_output": True}))
    doc, _, _ = encode([Tensor("a", np.array([1], dtype=np.uint8), parameters={"content_type": "np"})], request)
    assert doc["outputs"][0]["parameters"] == {"content_type": "np", "binary_data_size": 1}


def test_datatype_of() -> None:
    assert datatype_of(np.array([1], dtype=np.int16)) == "INT16"
    assert datatype_of(np.array([1], dtype=">u4")) == "UINT32"
    assert datatype_of(np.array(["a"])) == "BYTES"
    assert datatype_of(np.array([b"a"])) == "BYTES"
    assert datatype_of(np.array([object()], dtype=object)) == "BYTES"
    with pytest.raises(InvalidRequest):
        datatype_of(np.array([1j]))


# --------------------------------------------------------------------------- properties


def _request_from_response(body: bytes, json_length: int | None) -> tuple[bytes, int | None]:
    """A response body turned into a request body: its outputs become inputs."""
    header = body if json_length is None else body[:json_length]
    doc = orjson.loads(header)
    new_header = orjson.dumps({"inputs": doc["outputs"]})
    if json_length is None:
        return new_header, None
    return new_header + body[json_length:], len(new_header)


shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def tensors(draw: st.DrawFn, *, for_json: bool) -> Tensor:
    datatype = draw(st.sampled_from([*NUMERIC, "BYTES"]))
    shape = draw(shapes)
    if datatype == "BYTES":
        count = int(np.prod(shape))
        items: st.SearchStrategy[bytes]
        if for_json:  # JSON carries text: any valid UTF-8
            items = st.text(max_size=8).map(lambda s: s.encode("utf-8"))
        else:
            items = st.binary(max_size=8)
        values = draw(st.lists(items, min_size=count, max_size=count))
        array = np.empty(count, dtype=object)
        array[:] = values
        return Tensor("t", array.reshape(shape), "BYTES")
    dtype = DATATYPES[datatype]
    elements = None
    if dtype.kind == "f":
        elements = hnp.from_dtype(dtype, allow_nan=not for_json, allow_infinity=not for_json)
    array = draw(hnp.arrays(dtype, shape, elements=elements))
    return Tensor("t", array, datatype)


def _round_trip(tensor: Tensor, binary: bool) -> Tensor:
    parameters = {"binary_data_output": True} if binary else {}
    request = InferenceRequest(inputs=[], parameters=parameters)
    body, length = encode_response(InferenceResponse([tensor]), model_name="m", model_version=None, request=request)
    assert (length is not None) == binary
    body, length = _request_from_response(body, length)
    (back,) = decode_request(body, length).inputs
    return back


@PROPERTY
@given(tensors(for_json=True))
def test_any_tensor_round_trips_exactly_through_json(tensor: Tensor) -> None:
    back = _round_trip(tensor, binary=False)
    assert back.datatype == tensor.datatype
    assert same(back.data, tensor.data)


@PROPERTY
@given(tensors(for_json=False))
def test_any_tensor_round_trips_exactly_through_binary(tensor: Tensor) -> None:
    back = _round_trip(tensor, binary=True)
    assert back.datatype == tensor.datatype
    assert same(back.data, tensor.data)


@PROPERTY
@given(tensors(for_json=True))
def test_any_tensor_as_a_json_request_decodes_exactly(tensor: Tensor) -> None:
    # Built the way a client would: nested lists from tolist(), BYTES as str.
    data = tensor.data.tolist()
    if tensor.datatype == "BYTES":
        data = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(tensor.data).tolist()
    (back,) = decode_request(body_of(json_input(tensor.datatype, list(tensor.data.shape), data))).inputs
    assert same(back.data, tensor.data)


def _check_decode(body: bytes, json_length: int | None) -> None:
    try:
        request = decode_request(body, json_length)
    except InvalidRequest as exc:
        assert isinstance(exc.message, str) and exc.message
        return
    for tensor in request.inputs:  # whatever decodes is a well-formed tensor
        assert tensor.datatype in DATATYPES
        assert tensor.data.dtype == DATATYPES[tensor.datatype]


@PROPERTY
@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(min_value=-5, max_value=250)))
def test_junk_bytes_raise_only_invalid_request(body: bytes, json_length: int | None) -> None:
    _check_decode(body, json_length)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12,
)
small_ints = st.integers(min_value=-2, max_value=2**40) | st.sampled_from([0, 1, 2, 3, 2**62, 2**63, 2**64 - 1])
junk_inputs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["x", "y", ""]) | json_values,
        "datatype": st.sampled_from([*DATATYPES, "FP8"]) | json_values,
        "shape": st.lists(small_ints, max_size=3) | st.lists(st.sampled_from([0, 1, 2]), max_size=70) | json_values,
        "data": json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": small_ints | json_values}) | json_values,
    },
)
junk_requests = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(junk_inputs, max_size=3) | json_values,
        "outputs": st.lists(st.fixed_dictionaries({}, optional={"name": json_values}), max_size=2) | json_values,
        "id": json_values,
        "parameters": json_values,
    },
)


@PROPERTY
@given(junk_requests, st.binary(max_size=64), st.booleans())
def test_junk_json_requests_raise_only_invalid_request(doc: Any, tail: bytes, binary: bool) -> None:
    header = orjson.dumps(doc)
    if binary:
        _check_decode(header + tail, len(header))
    else:
        _check_decode(header, None)


# --------------------------------------------------------------------------- output datatypes


@pytest.mark.parametrize(
    ("data", "datatype", "problem"),
    [
        (np.array([1.5, 2.5]), "INT8", "holds 1.5, which INT8 cannot represent"),
        (np.array([1000]), "INT8", "holds 1000, which INT8 cannot represent"),
        (np.array([-1]), "UINT32", "holds -1, which UINT32 cannot represent"),
        (np.array([np.nan]), "INT64", "holds nan, which INT64 cannot represent"),
        (np.array([2]), "BOOL", "holds 2, which BOOL cannot represent"),
        (np.array([1e300]), "FP32", "holds values too large for FP32"),
        (np.array([1, 2]), "BYTES", "holds int64 numbers"),
        (np.array([b"a"], dtype=object), "FP32", "holds object values"),
    ],
)
@pytest.mark.parametrize("binary", [False, True])
def test_outputs_that_break_their_datatype_fail_naming_model_and_output(
    data: np.ndarray[Any, Any], datatype: str, problem: str, binary: bool
) -> None:
    request = InferenceRequest(inputs=[], parameters={"binary_data_output": binary})
    with pytest.raises(InferenceFailed) as info:
        encode([Tensor("y", data, datatype)], request, model_name="churn")
    assert info.value.message == f"model 'churn': output 'y' is declared {datatype} but {problem}"


def test_unknown_output_datatype_fails() -> None:
    with pytest.raises(InferenceFailed, match="output 'y' has the unknown datatype 'FP8'"):
        encode([Tensor("y", np.array([1.0]), "FP8")])


@pytest.mark.parametrize(
    ("data", "datatype", "expected"),
    [
        (np.array([1.0, -2.0]), "INT8", [1, -2]),
        (np.array([3, 4], dtype=np.int64), "UINT8", [3, 4]),
        (np.array([True, False]), "INT32", [1, 0]),
        (np.array([0, 1]), "BOOL", [False, True]),
        (np.array([0.5, 0.25]), "FP32", [0.5, 0.25]),
        (np.array([7], dtype=np.int64), "FP64", [7.0]),
    ],
)
def test_outputs_convert_to_their_datatype_when_every_value_survives(
    data: np.ndarray[Any, Any], datatype: str, expected: list[Any]
) -> None:
    doc, _, _ = encode([Tensor("y", data, datatype)])
    assert doc["outputs"][0]["data"] == expected
    assert doc["outputs"][0]["datatype"] == datatype
    doc, tail, _ = encode([Tensor("y", data, datatype)], InferenceRequest([], parameters={"binary_data_output": True}))
    assert np.frombuffer(tail, DATATYPES[datatype]).tolist() == expected


@pytest.mark.parametrize("datatype", FLOATS)
def test_nan_and_infinity_are_the_same_values_in_json_and_binary(datatype: str) -> None:
    values = np.array([np.nan, np.inf, -np.inf, 1.5, -0.0], dtype=DATATYPES[datatype])
    body, json_length = encode_response(
        InferenceResponse([Tensor("y", values)]), model_name="m", model_version=None, request=InferenceRequest([])
    )
    assert json_length is None
    assert b'"data":[NaN,Infinity,-Infinity,1.5,-0.0]' in body
    from_json = np.array(json.loads(body)["outputs"][0]["data"], dtype=DATATYPES[datatype])
    _, tail, _ = encode([Tensor("y", values)], InferenceRequest([], parameters={"binary_data_output": True}))
    from_binary = np.frombuffer(tail, DATATYPES[datatype])
    assert same(from_json, values) and same(from_binary, values)


@pytest.mark.parametrize(("data", "datatype"), [(np.array([1.5]), "INT8"), (np.array([1.0]), "FP8")])
def test_grpc_outputs_follow_the_same_datatype_rule(data: np.ndarray[Any, Any], datatype: str) -> None:
    from runtime_core.codecs.grpc import encode_grpc_response

    with pytest.raises(InferenceFailed, match="model 'churn': output 'y'"):
        encode_grpc_response(
            InferenceResponse([Tensor("y", data, datatype)]),
            model_name="churn",
            model_version=None,
            request=InferenceRequest([]),
        )


def test_grpc_outputs_convert_when_every_value_survives() -> None:
    from runtime_core.codecs.grpc import encode_grpc_response
    from runtime_core.proto.grpc_service_pb2 import ModelInferResponse

    body = encode_grpc_response(
        InferenceResponse([Tensor("y", np.array([1.0, -2.0]), "INT8")]),
        model_name="m",
        model_version=None,
        request=InferenceRequest([]),
    )
    message = ModelInferResponse.FromString(body)
    assert message.outputs[0].datatype == "INT8"
    assert np.frombuffer(message.raw_output_contents[0], np.int8).tolist() == [1, -2]

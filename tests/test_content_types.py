"""Content types (``parameters.content_type``: ``np``, ``pd``, ``str``, ``base64``).

Unit tests of the codec helpers in :mod:`runtime_core.content`, then end to end on a
real server: an sklearn Pipeline with a ColumnTransformer (a numeric and a text column)
served from ``pd`` requests, BYTES round-trips through the built-in ``echo`` runtime,
the 400s, and batching that never merges requests of different content types.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from support import metric, output, toy_model

from runtime_core.codecs.json import decode_request, encode_response
from runtime_core.content import decode_base64, encode_base64
from runtime_core.errors import InvalidRequest
from runtime_core.testing import ServerProcess, wait_until, write_model
from runtime_core.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

BINARY = [b"\x00\xff\x10PNG", b"", "héllo wörld".encode()]


def b64(items: list[bytes]) -> list[str]:
    return [base64.b64encode(x).decode("ascii") for x in items]


def body_of(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def bytes_input(data: list[Any], name: str = "x", **parameters: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"name": name, "datatype": "BYTES", "shape": [len(data)], "data": data}
    if parameters:
        item["parameters"] = parameters
    return item


def encode(outputs: list[Tensor], request: InferenceRequest) -> tuple[dict[str, Any], bytes]:
    body, length = encode_response(InferenceResponse(outputs), model_name="m", model_version=None, request=request)
    if length is None:
        return orjson.loads(body), b""
    return orjson.loads(body[:length]), body[length:]


def objects(*items: Any) -> np.ndarray[Any, Any]:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


# --------------------------------------------------------------------------- codec helpers


def test_decode_base64_gives_raw_bytes_and_encode_base64_inverts_it() -> None:
    decoded = decode_base64(objects(*[s.encode() for s in b64(BINARY)]))
    assert decoded.tolist() == BINARY
    assert decode_base64(objects(*b64(BINARY))).tolist() == BINARY  # str elements too
    assert encode_base64(decoded).tolist() == b64(BINARY)
    assert encode_base64(objects("hé")).tolist() == [base64.b64encode("hé".encode()).decode()]
    grid = decode_base64(objects(*b64([b"a", b"b", b"c", b"d"])).reshape(2, 2))
    assert grid.shape == (2, 2) and grid[1, 0] == b"c"


@pytest.mark.parametrize("text", ["aGk", "aG k=", "aGk=\n", "a", "aGk==", "aGk=aGk=", "aGk-"])
def test_decode_base64_is_strict(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"input 'img': element 1 is not valid base64"):
        decode_base64(objects("aGk=", text), "input 'img'")


def test_base64_inputs_are_decoded_from_json_and_binary() -> None:
    request = decode_request(body_of(bytes_input(b64(BINARY), content_type="base64")))
    assert request.inputs[0].data.tolist() == BINARY
    assert request.inputs[0].content_type == "base64"

    elements = b"".join(len(s).to_bytes(4, "little") + s.encode() for s in b64(BINARY))
    item = {
        "name": "x",
        "datatype": "BYTES",
        "shape": [3],
        "parameters": {"binary_data_size": len(elements), "content_type": "base64"},
    }
    header = body_of(item)
    assert decode_request(header + elements, len(header)).inputs[0].data.tolist() == BINARY


def test_request_level_text_content_types_apply_to_bytes_inputs_without_their_own() -> None:
    request = decode_request(
        body_of(
            bytes_input(b64([b"\x01"]), name="a"),
            bytes_input(["plain"], name="b", content_type="str"),
            {"name": "n", "datatype": "FP32", "shape": [1], "data": [1.5]},
            parameters={"content_type": "base64"},
        )
    )
    assert request.input("a").data.tolist() == [b"\x01"]
    assert request.input("b").data.tolist() == [b"plain"]
    assert request.input("n").data.tolist() == [1.5]
    assert [request.input_content_type(t) for t in request.inputs] == ["base64", "str", None]
    # np and pd at request level describe the request, not the BYTES elements
    plain = decode_request(body_of(bytes_input(["aGk="]), parameters={"content_type": "pd"}))
    assert plain.inputs[0].data.tolist() == [b"aGk="]
    assert plain.input_content_type(plain.inputs[0]) is None and plain.wants_dataframe()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": [bytes_input(["aGk=", "%%"], content_type="base64")]}, "input 'x': element 1 is not valid base64"),
        ({"inputs": [bytes_input(["a"], content_type="json")]}, "input 'x': unknown content type 'json'"),
        ({"inputs": [bytes_input(["a"], content_type=3)]}, "'parameters.content_type' must be a string"),
        (
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1], "data": [1], "parameters": {"content_type": "str"}}
                ]
            },
            "input 'x': content type 'str' needs datatype BYTES, not FP32",
        ),
        (
            {"inputs": [bytes_input(["a"])], "parameters": {"content_type": "np2"}},
            "request: unknown content type 'np2'",
        ),
        (
            {"inputs": [bytes_input(["a"])], "outputs": [{"name": "x", "parameters": {"content_type": "pd"}}]},
            "output 'x': content type 'pd' does not apply here; use one of np, str, base64",
        ),
        (
            {"inputs": [bytes_input(["a"])], "outputs": [{"name": "x", "parameters": {"content_type": "hex"}}]},
            "output 'x': unknown content type 'hex'",
        ),
    ],
)
def test_bad_content_types_are_invalid_requests(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(")):
        decode_request(orjson.dumps(doc))


def test_str_inputs_in_binary_must_be_utf8() -> None:
    element = b"\xff\xfe"
    tail = len(element).to_bytes(4, "little") + element
    item = {"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(tail)}}
    header = body_of(item)
    assert decode_request(header + tail, len(header)).inputs[0].data.tolist() == [element]  # np: any bytes
    item["parameters"]["content_type"] = "str"
    header = body_of(item)
    with pytest.raises(InvalidRequest, match="not valid UTF-8"):
        decode_request(header + tail, len(header))


def test_as_strings() -> None:
    tensor = Tensor("t", objects("é".encode(), b"b", b"c", b"d").reshape(2, 2), "BYTES")
    strings = tensor.as_strings()
    assert strings.shape == (2, 2) and strings.tolist() == [["é", "b"], ["c", "d"]]
    with pytest.raises(InvalidRequest, match="input 't': BYTES data is not valid UTF-8"):
        Tensor("t", objects(b"\xff"), "BYTES").as_strings()
    with pytest.raises(InvalidRequest, match="input 'n' is FP64; text must be sent as BYTES"):
        Tensor("n", np.array([1.0])).as_strings()


def test_as_dataframe_makes_one_column_per_input() -> None:
    request = InferenceRequest(
        inputs=[
            Tensor("size", np.array([1.0, 2.0])),
            Tensor("count", np.array([[3], [4]], dtype=np.int32)),
            Tensor("color", objects(b"red", "blü".encode()), "BYTES"),
            Tensor("blob", objects(b"\xff", b"\x00"), "BYTES", {"content_type": "base64"}),
        ],
        parameters={"content_type": "pd"},
    )
    frame = request.as_dataframe()
    assert list(frame.columns) == ["size", "count", "color", "blob"]
    assert frame["size"].tolist() == [1.0, 2.0] and frame["size"].dtype == np.float64
    assert frame["count"].tolist() == [3, 4] and frame["count"].dtype == np.int32
    assert frame["color"].tolist() == ["red", "blü"]
    assert pd.api.types.is_string_dtype(frame["color"].dtype)
    assert frame["blob"].tolist() == [b"\xff", b"\x00"]  # base64 inputs stay raw bytes


def test_as_dataframe_rejects_what_is_not_a_column() -> None:
    with pytest.raises(InvalidRequest, match=r"input 'm' has shape \[2, 2\]; with content type 'pd' each input"):
        InferenceRequest(inputs=[Tensor("m", np.zeros((2, 2)))]).as_dataframe()
    with pytest.raises(InvalidRequest, match=r"different numbers of rows \('a': 2, 'b': 3\)"):
        InferenceRequest(inputs=[Tensor("a", np.zeros(2)), Tensor("b", np.zeros(3))]).as_dataframe()
    with pytest.raises(InvalidRequest, match="not valid UTF-8"):
        InferenceRequest(inputs=[Tensor("t", objects(b"\xff"), "BYTES")]).as_dataframe()


def test_as_dataframe_without_pandas_is_a_clear_invalid_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(InvalidRequest, match="content type 'pd' needs pandas, which is not installed on the server"):
        InferenceRequest(inputs=[Tensor("a", np.zeros(2))]).as_dataframe()


def test_text_output_content_types() -> None:
    data = objects(*BINARY)
    request = InferenceRequest(
        inputs=[],
        outputs=[
            RequestedOutput("b64", {"content_type": "base64"}),
            RequestedOutput("text", {"content_type": "str"}),
            RequestedOutput("plain"),
            RequestedOutput("n", {"content_type": "np"}),
        ],
    )
    doc, _ = encode(
        [
            Tensor("b64", data, "BYTES"),
            Tensor("text", objects("héllo".encode()), "BYTES"),
            Tensor("plain", objects(b"x"), "BYTES"),
            Tensor("n", np.array([1.5])),
        ],
        request,
    )
    b64_out, text, plain, n = doc["outputs"]
    assert b64_out == {
        "name": "b64",
        "datatype": "BYTES",
        "shape": [3],
        "data": b64(BINARY),
        "parameters": {"content_type": "base64"},
    }
    assert text["data"] == ["héllo"] and text["parameters"] == {"content_type": "str"}
    assert plain == {"name": "plain", "datatype": "BYTES", "shape": [1], "data": ["x"]}
    assert n["data"] == [1.5] and n["parameters"] == {"content_type": "np"}


def test_request_level_base64_applies_to_bytes_outputs_only() -> None:
    request = InferenceRequest(inputs=[], parameters={"content_type": "base64"})
    doc, _ = encode([Tensor("b", objects(b"\xff"), "BYTES"), Tensor("n", np.array([1], dtype=np.int8))], request)
    assert doc["outputs"][0]["data"] == b64([b"\xff"])
    assert doc["outputs"][0]["parameters"] == {"content_type": "base64"}
    assert doc["outputs"][1] == {"name": "n", "datatype": "INT8", "shape": [1], "data": [1]}
    # the output's own choice wins over the request's
    asked = InferenceRequest(
        inputs=[], outputs=[RequestedOutput("b", {"content_type": "np"})], parameters={"content_type": "base64"}
    )
    doc, _ = encode([Tensor("b", objects(b"ab"), "BYTES")], asked)
    assert doc["outputs"][0]["data"] == ["ab"]


def test_a_runtime_may_mark_its_own_output_base64() -> None:
    doc, _ = encode([Tensor("b", objects(b"\x00"), "BYTES", {"content_type": "base64"})], InferenceRequest(inputs=[]))
    assert doc["outputs"][0]["data"] == ["AA=="] and doc["outputs"][0]["parameters"] == {"content_type": "base64"}


def test_base64_in_binary_outputs_frames_the_base64_text() -> None:
    asked = RequestedOutput("b", {"content_type": "base64", "binary_data": True})
    request = InferenceRequest(inputs=[], outputs=[asked])
    doc, tail = encode([Tensor("b", objects(b"\xff\x00"), "BYTES")], request)
    assert doc["outputs"][0]["parameters"] == {"content_type": "base64", "binary_data_size": 8}
    assert tail == b"\x04\x00\x00\x00/wA="


def test_text_content_type_on_a_numeric_output_is_invalid() -> None:
    request = InferenceRequest(inputs=[], outputs=[RequestedOutput("n", {"content_type": "base64"})])
    with pytest.raises(InvalidRequest, match="output 'n' is FP64; content type 'base64' applies to BYTES outputs"):
        encode([Tensor("n", np.array([1.0]))], request)


def test_response_from_dataframe_has_one_output_per_column() -> None:
    frame = pd.DataFrame(
        {
            "score": np.array([0.5, 1.5], dtype=np.float32),
            "label": ["cat", "dög"],
            "ok": [True, False],
            "when": pd.to_datetime(["2024-01-02T03:04:05", "2024-02-03T00:00:00"]),
            3: np.array([7, 8], dtype=np.int64),
        }
    )
    response = InferenceResponse.from_dataframe(frame)
    assert response.parameters == {"content_type": "pd"}
    assert [(t.name, t.datatype, t.shape) for t in response.outputs] == [
        ("score", "FP32", [2]),
        ("label", "BYTES", [2]),
        ("ok", "BOOL", [2]),
        ("when", "BYTES", [2]),
        ("3", "INT64", [2]),
    ]
    assert response.outputs[1].data.tolist() == [b"cat", "dög".encode()]
    assert response.outputs[3].data.tolist()[0].startswith(b"2024-01-02T03:04:05")
    doc, _ = encode(response.outputs, InferenceRequest(inputs=[]))
    assert doc["outputs"][1]["data"] == ["cat", "dög"]
    with pytest.raises(TypeError, match="column 'z' of dtype complex128 has no V2 datatype"):
        InferenceResponse.from_dataframe(pd.DataFrame({"z": [1j]}))


@pytest.mark.e2e
def test_no_pandas_import_at_import_time() -> None:
    code = (
        "import sys, runtime_core, runtime_core.protocol, runtime_core.codecs.json, runtime_core.inference,"
        " runtime_core.cli,"
        " runtime_core_sklearn.runtime; print('pandas' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A Pipeline over a numeric and a text column, with text class labels; and an echo model."""
    root = tmp_path_factory.mktemp("content-types")
    rng = np.random.default_rng(0)
    size = rng.normal(size=200)
    color = rng.choice(["red", "green", "blue"], size=200)
    labels = np.where(size + 1.5 * (color == "red") > 0.4, "big", "small")
    frame = pd.DataFrame({"size": size, "color": color})
    pipe = Pipeline(
        [
            ("prep", ColumnTransformer([("num", StandardScaler(), ["size"]), ("cat", OneHotEncoder(), ["color"])])),
            ("clf", LogisticRegression()),
        ]
    ).fit(frame, labels)
    write_model(root / "mixed", runtime="sklearn", parallel_workers=1, max_batch_size=8, max_batch_time=0.3)
    joblib.dump(pipe, root / "mixed" / "model.joblib")
    write_model(
        root / "mixed-pd",
        runtime="sklearn",
        parallel_workers=0,
        parameters={"uri": "../mixed/model.joblib", "content_type": "pd"},
    )
    write_model(root / "echo", runtime="echo", parallel_workers=1)
    return {"root": root, "pipe": pipe, "frame": frame}


@pytest.fixture(scope="module")
def server(trained: dict[str, Any]) -> Iterator[ServerProcess]:
    proc = ServerProcess(trained["root"])
    yield proc
    proc.stop()


def pipeline_body(
    rows: pd.DataFrame, request_ct: str | None = None, per_input: dict[str, Any] | None = None, column: bool = False
) -> dict[str, Any]:
    shape = [len(rows), 1] if column else [len(rows)]
    inputs = [
        {"name": "size", "datatype": "FP64", "shape": shape, "data": rows["size"].tolist()},
        {"name": "color", "datatype": "BYTES", "shape": shape, "data": rows["color"].tolist()},
    ]
    for item in inputs:
        if per_input and item["name"] in per_input:
            item["parameters"] = {"content_type": per_input[item["name"]]}
    body: dict[str, Any] = {"inputs": inputs, "outputs": [{"name": "predict"}, {"name": "predict_proba"}]}
    if request_ct:
        body["parameters"] = {"content_type": request_ct}
    return body


def check_pipeline_answer(doc: dict[str, Any], rows: pd.DataFrame, pipe: Pipeline) -> None:
    predict, proba = doc["outputs"]
    assert predict["datatype"] == "BYTES" and predict["shape"] == [len(rows)]
    assert predict["data"] == pipe.predict(rows).tolist()
    assert proba["shape"] == [len(rows), 2]
    np.testing.assert_allclose(np.reshape(proba["data"], (len(rows), 2)), pipe.predict_proba(rows), rtol=1e-12)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("request_ct", "per_input", "column"),
    [
        ("pd", None, False),  # request-level, MLServer's PandasCodec
        ("pd", {"color": "str"}, True),  # [n, 1] columns, a str column
        (None, {"size": "pd", "color": "pd"}, False),  # per input
        (None, {"size": "np", "color": "pd"}, False),  # one input asking pd is enough
    ],
)
def test_column_transformer_pipeline_from_a_pd_request(
    server: ServerProcess,
    trained: dict[str, Any],
    request_ct: str | None,
    per_input: dict[str, Any] | None,
    column: bool,
) -> None:
    rows = trained["frame"].iloc[[0, 3, 17, 42, 99]]
    assert len(set(rows["color"])) == 3
    status, doc = server.post_json("/v2/models/mixed/infer", pipeline_body(rows, request_ct, per_input, column))
    assert status == 200, doc
    check_pipeline_answer(doc, rows, trained["pipe"])


@pytest.mark.e2e
def test_model_level_pd_default(server: ServerProcess, trained: dict[str, Any]) -> None:
    rows = trained["frame"].iloc[:4]
    status, doc = server.post_json("/v2/models/mixed-pd/infer", pipeline_body(rows))
    assert status == 200, doc
    check_pipeline_answer(doc, rows, trained["pipe"])


@pytest.mark.e2e
def test_pd_errors_are_400(server: ServerProcess, trained: dict[str, Any]) -> None:
    rows = trained["frame"].iloc[:2]
    body = pipeline_body(rows, "pd")
    body["inputs"][0] = {"name": "size", "datatype": "FP64", "shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.0]}
    status, doc = server.post_json("/v2/models/mixed/infer", body)
    assert status == 400 and "input 'size' has shape [2, 2]" in doc["error"]
    body = pipeline_body(rows, "pd")
    body["inputs"][1]["data"] = ["purple", "red"]  # a category the encoder never saw: sklearn's message
    status, doc = server.post_json("/v2/models/mixed/infer", body)
    assert status == 400 and "purple" in doc["error"]


@pytest.mark.e2e
def test_pd_without_pandas_is_400(trained: dict[str, Any], tmp_path: Path) -> None:
    hidden = tmp_path / "hide-pandas"
    (hidden / "pandas").mkdir(parents=True)
    (hidden / "pandas" / "__init__.py").write_text("raise ImportError('pandas is hidden for this test')\n")
    path = os.environ.get("PYTHONPATH")
    env = {"PYTHONPATH": str(hidden) + (os.pathsep + path if path else "")}
    proc = ServerProcess(trained["root"], env=env, wait=False)
    try:
        proc.wait_ready()
        status, doc = proc.post_json("/v2/models/mixed/infer", pipeline_body(trained["frame"].iloc[:2], "pd"))
        assert status == 400, doc
        assert doc["error"] == (
            "content type 'pd' needs pandas, which is not installed on the server"
            " (install runtime-core-sklearn[pandas])"
        )
        status, doc = proc.post_json("/v2/models/echo/infer", {"inputs": [bytes_input(["a"])]})
        assert status == 200
    finally:
        proc.stop()


def echo(server: ServerProcess, body: dict[str, Any]) -> tuple[int, Any]:
    return server.post_json("/v2/models/echo/infer", body)


@pytest.mark.e2e
def test_str_round_trip(server: ServerProcess) -> None:
    texts = ["héllo", "", "ünïcödé ✓"]
    status, doc = echo(
        server,
        {
            "inputs": [bytes_input(texts, content_type="str")],
            "outputs": [{"name": "x", "parameters": {"content_type": "str"}}],
        },
    )
    assert status == 200, doc
    assert doc["outputs"] == [
        {"name": "x", "datatype": "BYTES", "shape": [3], "data": texts, "parameters": {"content_type": "str"}}
    ]


@pytest.mark.e2e
def test_base64_round_trip(server: ServerProcess) -> None:
    body = {
        "inputs": [bytes_input(b64(BINARY), content_type="base64")],
        "outputs": [{"name": "x", "parameters": {"content_type": "base64"}}],
    }
    status, doc = echo(server, body)
    assert status == 200, doc
    assert doc["outputs"][0]["data"] == b64(BINARY)
    assert doc["outputs"][0]["parameters"] == {"content_type": "base64"}
    # the same bytes asked back as text: the UTF-8 ones read as the text they hold
    text = ["héllo wörld", "plain"]
    body = {
        "inputs": [bytes_input(b64([s.encode() for s in text]), content_type="base64")],
        "outputs": [{"name": "x", "parameters": {"content_type": "str"}}],
    }
    status, doc = echo(server, body)
    assert status == 200 and doc["outputs"][0]["data"] == text
    # request-level base64: decoded on the way in, encoded on the way out
    status, doc = echo(server, {"inputs": [bytes_input(b64(BINARY))], "parameters": {"content_type": "base64"}})
    assert status == 200 and doc["outputs"][0]["data"] == b64(BINARY)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"inputs": [bytes_input(["aGk=", "not base64!"], content_type="base64")]},
            "input 'x': element 1 is not valid base64",
        ),
        (
            {"inputs": [bytes_input(["a"], content_type="yaml")]},
            "input 'x': unknown content type 'yaml'; expected one of np, pd, str, base64",
        ),
        (
            {"inputs": [bytes_input(["a"])], "parameters": {"content_type": "tensor"}},
            "request: unknown content type 'tensor'",
        ),
        (
            {"inputs": [bytes_input(["a"])], "outputs": [{"name": "x", "parameters": {"content_type": "b64"}}]},
            "output 'x': unknown content type 'b64'",
        ),
        (
            {
                "inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}],
                "outputs": [{"name": "x", "parameters": {"content_type": "str"}}],
            },
            "output 'x' is INT8; content type 'str' applies to BYTES outputs",
        ),
    ],
)
def test_bad_content_types_are_400(server: ServerProcess, body: dict[str, Any], message: str) -> None:
    status, doc = echo(server, body)
    assert status == 400
    assert message in doc["error"]


def batch_body(i: int, kind: str | None) -> dict[str, Any]:
    raw = [f"row {i}".encode(), bytes([i, 255])] if kind == "base64" else [f"row {i}".encode(), b"two"]
    data = b64(raw) if kind == "base64" else [x.decode() for x in raw]
    return {
        "inputs": [
            {
                "name": "x",
                "datatype": "BYTES",
                "shape": [2, 1],
                "data": data,
                "parameters": {"content_type": kind} if kind else {},
            }
        ],
        "outputs": [{"name": "y", "parameters": {"content_type": "base64"}}, {"name": "call"}],
    }


@pytest.mark.e2e
def test_batching_never_merges_requests_of_different_content_types(tmp_path: Path, serve: Any) -> None:
    """Requests waiting while the model's one worker is busy leave together; in the worker only
    those of one content type share a ``predict`` call. A gated request (a row of 100) holds
    the worker busy until the test creates the gate file, so what is held does not depend on
    timing."""
    gate = tmp_path / "gate"
    toy_model(
        tmp_path / "repo",
        "batch",
        runtime="toy-batching",
        parallel_workers=1,
        min_workers=1,
        max_batch_size=32,
        max_batch_time=60.0,
        parameters={"extra": {"gate": str(gate)}},
    )
    server = serve(tmp_path / "repo")
    gated = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1], "data": [100.0]}]}

    def run(kinds: list[str | None]) -> dict[int, set[str | None]]:
        for started in tmp_path.glob("gate*"):
            started.unlink()
        bodies = [batch_body(i, kind) for i, kind in enumerate(kinds)]
        with concurrent.futures.ThreadPoolExecutor(len(bodies) + 1) as ex:
            blocked = ex.submit(server.post_json, "/v2/models/batch/infer", gated)
            wait_until(lambda: any(tmp_path.glob("gate.*")), message="the gated request to start")
            held = [ex.submit(server.post_json, "/v2/models/batch/infer", b) for b in bodies]
            # Held in the pool, or (measured as cheap: batching then holds nothing) waiting in the
            # model's queue: either way all are in the server before the worker frees up.
            wait_until(
                lambda: (
                    metric(server, "inflight_requests", "batch") + metric(server, "queue_depth", "batch")
                    == len(bodies) + 1
                ),
                message="all waiting",
            )
            gate.touch()
            assert blocked.result()[0] == 200
            results = [f.result() for f in held]
        calls: dict[int, set[str | None]] = {}
        for kind, body, (status, doc) in zip(kinds, bodies, results, strict=True):
            assert status == 200, doc
            sent = body["inputs"][0]["data"]
            assert output(doc, "y") == (sent if kind == "base64" else b64([s.encode() for s in sent]))
            calls.setdefault(output(doc, "call")[0], set()).add(kind)
        return calls

    alike = run(["base64"] * 8)
    assert len(alike) == 1  # requests of one content type are merged (and split back correctly)
    mixed = run(["base64", "str", None] * 6)
    assert all(len(kinds) == 1 for kinds in mixed.values()), mixed  # never two content types in one call


@pytest.mark.e2e
def test_concurrent_pd_requests_to_a_batching_sklearn_model(server: ServerProcess, trained: dict[str, Any]) -> None:
    frame = trained["frame"]
    variants: list[tuple[str | None, dict[str, Any] | None]] = [("pd", None), (None, {"color": "pd"})]
    jobs = [(frame.iloc[3 * i : 3 * i + 3], *variants[(i // 4) % 2]) for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
        results = list(
            ex.map(lambda job: server.post_json("/v2/models/mixed/infer", pipeline_body(job[0], job[1], job[2])), jobs)
        )
    for (rows, _, _), (status, doc) in zip(jobs, results, strict=True):
        assert status == 200, doc
        check_pipeline_answer(doc, rows, trained["pipe"])

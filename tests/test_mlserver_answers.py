"""MLServer's example folders, served unchanged by runtime-core, answer as MLServer 1.7.1 did.

``mlserver_examples/make_examples.py`` lays the folders out (the same script laid them out
for the recording); ``mlserver_examples/recorded.json`` holds the requests and MLServer's
answers, recorded by ``mlserver_examples/record_mlserver.py``. Each recorded request is
sent to a real runtime-core server and the answer is compared field by field: status,
model name and version, id (echoed, or generated: then only that one exists and is a
string), parameters, output names, datatypes, shapes, content types and data (floats
within a tolerance).

Folders that name ``"runtime": "sklearn"`` / ``"runtime": "xgboost"`` keep runtime-core's
own answers: :func:`test_runtime_key_keeps_native_answers`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mlserver_examples.make_examples import digits_test_rows, make_example, mushroom_test_rows

from runtime_core.testing import ServerProcess

RECORDING: dict[str, Any] = json.loads((Path(__file__).parent / "mlserver_examples" / "recorded.json").read_text())

#: Examples the sklearn and xgboost runtimes serve.
SERVED = ["sklearn", "xgboost", "mms", "extras"]

#: Examples that only ``runtimes/mlserver`` can serve (distribution runtime-core-mlserver,
#: which runs MLServer's own MLModel classes, custom endpoints included; ``lightgbm`` also
#: needs mlserver-lightgbm installed). Recorded already; compared once switched on below.
NEEDS_MLSERVER_RUNTIME = ["lightgbm", "custom-json", "content-type", "sum-model"]

#: Compared by :func:`test_mlserver_runtime_answers_as_mlserver` (runtimes/mlserver is part
#: of the test environment).
MLSERVER_RUNTIME_EXAMPLES: list[str] = NEEDS_MLSERVER_RUNTIME

#: Float data: MLServer's answers were recorded with the same libraries; the tolerance only
#: absorbs float32/float64 text round trips.
RTOL = 1e-5
ATOL = 1e-7


def _cases(example: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = RECORDING["examples"][example]
    return cases


def _data(value: Any) -> list[Any]:
    """``data`` as a flat list (MLServer may send one string unwrapped, or nested rows)."""
    if not isinstance(value, list):
        return [value]
    flat: list[Any] = []
    for item in value:
        flat.extend(_data(item) if isinstance(item, list) else [item])
    return flat


def _same_value(expected: Any, got: Any) -> bool:
    if isinstance(expected, float) or isinstance(got, float):
        if expected is None or got is None:
            return expected is got
        return math.isclose(float(expected), float(got), rel_tol=RTOL, abs_tol=ATOL)
    return bool(expected == got)


def _output_differences(where: str, expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    problems = []
    if set(got) != set(expected):
        problems.append(f"{where}: keys {sorted(got)}, MLServer {sorted(expected)}")
    for key in ("name", "datatype", "shape", "parameters"):
        if got.get(key) != expected.get(key):
            problems.append(f"{where}: {key} {got.get(key)!r}, MLServer {expected.get(key)!r}")
    want, have = _data(expected.get("data")), _data(got.get("data"))
    if len(want) != len(have) or not all(_same_value(w, h) for w, h in zip(want, have, strict=True)):
        problems.append(f"{where}: data {have[:8]!r}..., MLServer {want[:8]!r}...")
    return problems


def differences(case: dict[str, Any], status: int, body: Any) -> list[str]:
    """Every way runtime-core's answer (``status``, ``body``) differs from MLServer's in ``case``."""
    where = case["name"]
    if status != case["status"]:
        return [f"{where}: status {status}, MLServer {case['status']} ({body!r})"]
    expected = case["response"]
    if not case["path"].endswith("/infer"):  # a custom endpoint answers whatever its code returns
        return [] if body == expected else [f"{where}: body {body!r}, MLServer {expected!r}"]
    if status != 200:
        ok = isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)
        return [] if ok else [f"{where}: error body {body!r}, MLServer {expected!r}"]
    problems = []
    if set(body) != set(expected):
        problems.append(f"{where}: keys {sorted(body)}, MLServer {sorted(expected)}")
    for key in ("model_name", "model_version", "parameters"):
        if body.get(key) != expected.get(key):
            problems.append(f"{where}: {key} {body.get(key)!r}, MLServer {expected.get(key)!r}")
    sent_id = case["request"].get("id") if isinstance(case["request"], dict) else None
    if sent_id is not None:
        if body.get("id") != sent_id:
            problems.append(f"{where}: id {body.get('id')!r}, sent {sent_id!r}")
    elif not isinstance(body.get("id"), str) or not _is_uuid(body["id"]):
        problems.append(f"{where}: generated id {body.get('id')!r} is not a UUID string, as MLServer's")
    outputs, want = body.get("outputs", []), expected["outputs"]
    if [o.get("name") for o in outputs] != [o["name"] for o in want]:
        problems.append(f"{where}: outputs {[o.get('name') for o in outputs]}, MLServer {[o['name'] for o in want]}")
    else:
        for mine, theirs in zip(outputs, want, strict=True):
            problems += _output_differences(f"{where}/{theirs['name']}", theirs, mine)
    return problems


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


@pytest.fixture(scope="module")
def examples_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlserver-examples")


@contextmanager
def _served(example: str, root: Path) -> Iterator[ServerProcess]:
    """A runtime-core server on the example's folder, laid out in ``root``."""
    server = ServerProcess(make_example(example, root), workers=1)
    try:
        yield server
    finally:
        server.stop()


def _replay(server: ServerProcess, example: str) -> tuple[list[str], list[tuple[dict[str, Any], Any]]]:
    problems: list[str] = []
    answers = []
    for case in _cases(example):
        status, body = server.post_json(case["path"], case["request"])
        problems += differences(case, status, body)
        answers.append((case, body))
    return problems, answers


@pytest.mark.e2e
@pytest.mark.parametrize("example", SERVED)
def test_answers_as_mlserver(example: str, examples_root: Path) -> None:
    """The folder, laid out as MLServer's example and served by runtime-core, answers every
    recorded request as MLServer did."""
    with _served(example, examples_root) as server:
        problems, _ = _replay(server, example)
        assert not problems, "\n".join(problems)


@pytest.mark.e2e
@pytest.mark.parametrize("example", MLSERVER_RUNTIME_EXAMPLES)
def test_mlserver_runtime_answers_as_mlserver(example: str, examples_root: Path) -> None:
    """Examples with MLServer's own model classes (custom code, lightgbm), served by
    runtime-core through runtime-core-mlserver: the same comparison."""
    with _served(example, examples_root) as server:
        problems, _ = _replay(server, example)
        assert not problems, "\n".join(problems)


def test_every_recorded_example_is_compared_or_waits_for_the_mlserver_runtime() -> None:
    """No recorded example is forgotten: each is compared now or waits in NEEDS_MLSERVER_RUNTIME."""
    assert sorted(RECORDING["examples"]) == sorted(SERVED + NEEDS_MLSERVER_RUNTIME)
    assert set(MLSERVER_RUNTIME_EXAMPLES) <= set(NEEDS_MLSERVER_RUNTIME)
    assert RECORDING["mlserver"] == "1.7.1"


def _mlserver_python() -> str:
    """A Python that can import mlserver: this one, else the one beside ``MLSERVER_BIN``."""
    # Looked up, not imported: importing mlserver registers its gRPC messages, whose names
    # clash with tritonclient's in this process's protobuf pool. The decode runs apart.
    if importlib.util.find_spec("mlserver") is not None:
        return sys.executable
    binary = os.environ.get("MLSERVER_BIN")
    if binary and (Path(binary).parent / "python").exists():
        return str(Path(binary).parent / "python")
    pytest.skip("needs mlserver importable here, or MLSERVER_BIN naming an mlserver beside its python")


_DECODE = """
import json, sys
from mlserver import codecs
from mlserver.types import InferenceResponse
decoded = []
for codec, answer in json.load(sys.stdin):
    array = getattr(codecs, codec).decode_response(InferenceResponse.model_validate(answer))
    decoded.append({"shape": list(array.shape), "data": array.tolist()})
json.dump(decoded, sys.stdout)
"""


@pytest.mark.e2e
def test_mlserver_client_codec_decodes_answers(examples_root: Path) -> None:
    """MLServer's client codec (``NumpyRequestCodec.decode_response``) decodes runtime-core's
    answers to what it decoded from MLServer's: ``[[8]]``, not ``[8]``."""
    python = _mlserver_python()
    answers = []
    for example in ("sklearn", "xgboost"):
        with _served(example, examples_root) as server:
            problems, replies = _replay(server, example)
            assert not problems, "\n".join(problems)
            answers += [(case, body) for case, body in replies if "decode" in case]
    assert answers, "the recording has no codec cases"
    sent = json.dumps([[case["decode"]["codec"], body] for case, body in answers])
    done = subprocess.run([python, "-c", _DECODE], input=sent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for (case, _), decoded in zip(answers, json.loads(done.stdout), strict=True):
        assert decoded["shape"] == case["decode"]["shape"], case["name"]
        want, have = _data(case["decode"]["data"]), _data(decoded["data"])
        assert all(_same_value(w, h) for w, h in zip(want, have, strict=True)), case["name"]
    assert answers[0][0]["decode"]["data"] == [[8], [8], [4]]  # the digits' three first test rows


def _rewrite(folder: Path, runtime: str) -> None:
    """The folder's settings with runtime-core's own key instead of MLServer's implementation."""
    path = folder / "model-settings.json"
    settings = json.loads(path.read_text())
    del settings["implementation"]
    path.write_text(json.dumps({**settings, "runtime": runtime}))


@pytest.mark.e2e
def test_runtime_key_keeps_native_answers(tmp_path: Path) -> None:
    """The same artifacts under ``"runtime": "sklearn"`` / ``"xgboost"`` answer as runtime-core
    always has: one value per row as ``[n]``, no content type, no generated id, and the
    xgboost classifier's label rather than the booster's probability."""
    sklearn_folder = make_example("sklearn", tmp_path / "repo")
    xgboost_folder = make_example("xgboost", tmp_path / "repo")
    _rewrite(sklearn_folder, "sklearn")
    _rewrite(xgboost_folder, "xgboost")
    for folder in (sklearn_folder, xgboost_folder):
        (folder / "settings.json").unlink()  # one server for both: the repository's root has none
    server = ServerProcess(tmp_path / "repo", workers=1)
    try:
        rows = digits_test_rows(3)
        status, body = server.post_json(
            "/v2/models/mnist-svm/versions/v0.1.0/infer",
            {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}]},
        )
        assert status == 200, body
        assert body == {
            "model_name": "mnist-svm",
            "model_version": "v0.1.0",
            "outputs": [{"name": "predict", "datatype": "INT64", "shape": [3], "data": [8, 8, 4]}],
        }
        mushrooms = mushroom_test_rows(3)
        status, body = server.post_json(
            "/v2/models/mushroom-xgboost/versions/v0.1.0/infer",
            {"inputs": [{"name": "x", "shape": [3, 126], "datatype": "FP32", "data": mushrooms.tolist()}]},
        )
        assert status == 200, body
        recorded = next(case for case in _cases("xgboost") if case["name"] == "numpy-codec")  # the same 3 rows
        probabilities = _data(recorded["response"]["outputs"][0]["data"])
        assert body["outputs"] == [
            {"name": "predict", "datatype": "INT64", "shape": [3], "data": [int(p > 0.5) for p in probabilities]}
        ]
        assert "id" not in body and "parameters" not in body
    finally:
        server.stop()


@pytest.mark.e2e
def test_generated_ids_are_per_request_in_merged_batches_and_over_grpc(tmp_path: Path) -> None:
    """Each request without an id gets its own UUID, also when adaptive batching merges it
    with others into one ``predict`` call (whether or not the requests met in a batch, the
    ids must differ), and over gRPC as over REST."""
    import tritonclient.grpc as grpcclient

    folder = make_example("sklearn", tmp_path)
    path = folder / "model-settings.json"
    settings = json.loads(path.read_text())
    path.write_text(json.dumps({**settings, "max_batch_size": 8, "max_batch_time": 0.05}))  # MLServer's keys too
    rows = digits_test_rows(1)
    body = {"inputs": [{"name": "predict", "shape": [1, 64], "datatype": "FP32", "data": rows.tolist()}]}
    server = ServerProcess(folder, workers=1)
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: server.post_json("/v2/models/mnist-svm/infer", body), range(16)))
        assert all(status == 200 for status, _ in answers), answers
        assert all(doc["outputs"][0]["shape"] == [1, 1] and doc["outputs"][0]["data"] == [8] for _, doc in answers)
        ids = [doc["id"] for _, doc in answers]
        assert len(set(ids)) == len(ids) and all(_is_uuid(i) for i in ids), ids

        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            tensor = grpcclient.InferInput("predict", [1, 64], "FP32")
            tensor.set_data_from_numpy(rows.astype("float32"))
            result = client.infer("mnist-svm", [tensor], model_version="v0.1.0")
            assert _is_uuid(result.get_response().id)
            assert result.as_numpy("predict").tolist() == [[8]]
            echoed = client.infer("mnist-svm", [tensor], model_version="v0.1.0", request_id="grpc-1")
            assert echoed.get_response().id == "grpc-1"
        finally:
            client.close()
    finally:
        server.stop()

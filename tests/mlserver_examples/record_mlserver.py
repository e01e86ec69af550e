"""Record MLServer's answers on the example folders of ``make_examples.py`` (issue 21).

Run it with a Python that has ``mlserver`` installed (with mlserver-sklearn,
mlserver-xgboost and mlserver-lightgbm), pointing at its ``mlserver`` command::

    MLSERVER_BIN=/path/to/venv/bin/mlserver /path/to/venv/bin/python tests/mlserver_examples/record_mlserver.py

For each example it lays the folder out in a temporary directory, starts
``mlserver start <folder>`` on free ports of 127.0.0.1 (``parallel_workers`` 0, which
changes no answer and starts faster), sends the requests of :func:`cases` and writes
every request and answer to ``recorded.json`` beside this file. Requests are built the
ways MLServer's users build them: by hand as in the examples' READMEs, and with
MLServer's client codecs (``NumpyRequestCodec``, ``PandasCodec``), with and without an
``id`` and requested ``outputs``. ``tests/test_mlserver_answers.py`` replays the
recorded requests against runtime-core and compares the answers field by field.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from mlserver_examples.make_examples import (  # noqa: E402 (after the path is set)
    digits_test_rows,
    iris_rows,
    make_example,
    mushroom_test_rows,
)

RECORDING = HERE / "recorded.json"


@dataclass
class Case:
    """One request to one example and, once sent, MLServer's answer."""

    name: str
    path: str
    body: Any
    decode: str | None = None
    """MLServer client codec to decode the answer with (``NumpyRequestCodec``): recorded too."""
    answer: dict[str, Any] = field(default_factory=dict)


def _readme_request(name: str, rows: Any) -> dict[str, Any]:
    """A request as the examples' READMEs write it: one FP32 input, nested rows."""
    return {"inputs": [{"name": name, "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}]}


def _asking(body: dict[str, Any], *outputs: str) -> dict[str, Any]:
    """``body`` with requested ``outputs``."""
    return {**body, "outputs": [{"name": name} for name in outputs]}


def _dumped(request: Any) -> Any:
    """A request object of MLServer's types as a client sends it (``payload.json()``)."""
    return json.loads(request.model_dump_json())


def _numpy_request(rows: Any, **extra: Any) -> Any:
    from mlserver.codecs import NumpyRequestCodec

    body = _dumped(NumpyRequestCodec.encode_request(rows))
    body.update(extra)
    return body


def _pandas_request(rows: Any, columns: list[str], **extra: Any) -> Any:
    import pandas as pd
    from mlserver.codecs import PandasCodec

    body = _dumped(PandasCodec.encode_request(pd.DataFrame(rows, columns=columns)))
    body.update(extra)
    return body


IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def cases() -> dict[str, list[Case]]:
    """Example name -> the requests sent to it."""
    digit = digits_test_rows(1)
    digits3 = digits_test_rows(3)
    mushroom = mushroom_test_rows(1)
    mushrooms3 = mushroom_test_rows(3)
    iris3 = iris_rows(3)
    svm = "/v2/models/mnist-svm/versions/v0.1.0/infer"
    xgb = "/v2/models/mushroom-xgboost/versions/v0.1.0/infer"
    return {
        "sklearn": [
            Case("readme", svm, _readme_request("predict", digit)),
            Case("unversioned", "/v2/models/mnist-svm/infer", _readme_request("predict", digit)),
            Case("with-id", svm, {"id": "sklearn-1", **_readme_request("predict", digit)}),
            Case("three-rows", svm, _readme_request("predict", digits3)),
            Case("outputs-predict", svm, {**_readme_request("predict", digit), "outputs": [{"name": "predict"}]}),
            Case("outputs-proba-unsupported", svm, _asking(_readme_request("x", digit), "predict_proba")),
            Case("outputs-unknown", svm, {**_readme_request("x", digit), "outputs": [{"name": "scores"}]}),
            Case("numpy-codec", svm, _numpy_request(digits3), decode="NumpyRequestCodec"),
            Case("numpy-codec-id", svm, _numpy_request(digit, id="sklearn-np-1"), decode="NumpyRequestCodec"),
            Case(
                "numpy-codec-outputs",
                svm,
                _numpy_request(digit, outputs=[{"name": "predict"}]),
                decode="NumpyRequestCodec",
            ),
            Case("pandas-codec", svm, _pandas_request(digits3, [f"pixel{i}" for i in range(64)])),
        ],
        "xgboost": [
            Case("readme", xgb, _readme_request("predict", mushroom)),
            Case("unversioned", "/v2/models/mushroom-xgboost/infer", _readme_request("predict", mushroom)),
            Case("with-id", xgb, {"id": "xgb-1", **_readme_request("predict", mushroom)}),
            Case("three-rows", xgb, _readme_request("predict", mushrooms3)),
            Case("outputs-predict", xgb, {**_readme_request("predict", mushroom), "outputs": [{"name": "predict"}]}),
            Case("outputs-proba-regressor", xgb, _asking(_readme_request("x", mushroom), "predict_proba")),
            Case("outputs-unknown", xgb, {**_readme_request("x", mushroom), "outputs": [{"name": "margin"}]}),
            Case("numpy-codec", xgb, _numpy_request(mushrooms3), decode="NumpyRequestCodec"),
            Case("numpy-codec-id", xgb, _numpy_request(mushroom, id="xgb-np-1"), decode="NumpyRequestCodec"),
        ],
        "mms": [
            Case("mnist-svm", svm, _readme_request("predict", digit)),
            Case("mushroom-xgboost", xgb, _readme_request("predict", mushroom)),
            Case("mnist-svm-codec", svm, _numpy_request(digits3), decode="NumpyRequestCodec"),
        ],
        "extras": [
            Case("logreg-default", "/v2/models/iris-logreg/infer", _readme_request("x", iris3)),
            Case(
                "logreg-proba",
                "/v2/models/iris-logreg/infer",
                {**_readme_request("x", iris3), "outputs": [{"name": "predict_proba"}]},
            ),
            Case(
                "logreg-both",
                "/v2/models/iris-logreg/infer",
                {**_readme_request("x", iris3), "outputs": [{"name": "predict_proba"}, {"name": "predict"}]},
            ),
            Case(
                "logreg-pandas",
                "/v2/models/iris-logreg/infer",
                _pandas_request(iris3, IRIS_COLUMNS, id="logreg-pd"),
            ),
            Case(
                "logreg-numpy-proba",
                "/v2/models/iris-logreg/infer",
                _numpy_request(iris3, outputs=[{"name": "predict_proba"}]),
                decode="NumpyRequestCodec",
            ),
            Case("predict-fn-default", "/v2/models/iris-proba/infer", _readme_request("x", iris3)),
            Case(
                "predict-fn-outputs-predict",
                "/v2/models/iris-proba/infer",
                {**_readme_request("x", iris3), "outputs": [{"name": "predict"}]},
            ),
            Case("ridge", "/v2/models/iris-ridge/infer", _readme_request("x", iris3[:, :3])),
            Case(
                "ridge-proba",
                "/v2/models/iris-ridge/infer",
                {**_readme_request("x", iris3[:, :3]), "outputs": [{"name": "predict_proba"}]},
            ),
            Case("xgb-classifier", "/v2/models/iris-xgb-classifier/infer", _readme_request("x", iris3)),
            Case(
                "xgb-classifier-proba",
                "/v2/models/iris-xgb-classifier/infer",
                {**_readme_request("x", iris3), "outputs": [{"name": "predict_proba"}]},
            ),
            Case("xgb-softprob", "/v2/models/iris-xgb-softprob/infer", _readme_request("x", iris3)),
            Case(
                "xgb-softprob-codec",
                "/v2/models/iris-xgb-softprob/infer",
                _numpy_request(iris3),
                decode="NumpyRequestCodec",
            ),
        ],
        "lightgbm": [
            Case("readme", "/v2/models/iris-lgb/versions/v0.1.0/infer", _readme_request("predict-prob", iris_rows(1))),
            Case("numpy-codec", "/v2/models/iris-lgb/infer", _numpy_request(iris3), decode="NumpyRequestCodec"),
        ],
        "custom-json": _custom_json_cases(),
        "content-type": _content_type_cases(),
        "sum-model": [
            Case(
                "infer",
                "/v2/models/sum-model/infer",
                {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [1, 2, 3, 4]}]},
            ),
            Case("custom-endpoint", "/my-custom-endpoint", [1, 2, 3, 4]),
        ],
    }


def _custom_json_cases() -> list[Case]:
    from mlserver.types import InferenceRequest, Parameters, RequestInput

    text = json.dumps({"name": "Foo Bar", "message": "Hello from Client (REST)!"})
    readme = {"inputs": [{"name": "echo_request", "shape": [len(text)], "datatype": "BYTES", "data": [text]}]}
    typed = InferenceRequest(
        id="json-1",
        inputs=[
            RequestInput(
                name="echo_request",
                shape=[1],
                datatype="BYTES",
                data=[text],
                parameters=Parameters(content_type="str"),
            )
        ],
    )
    return [
        Case("readme", "/v2/models/json-hello-world/infer", readme),
        Case("typed", "/v2/models/json-hello-world/infer", _dumped(typed)),
    ]


def _content_type_cases() -> list[Case]:
    import numpy as np
    from mlserver.codecs import NumpyCodec, StringCodec
    from mlserver.types import InferenceRequest

    path = "/v2/models/content-type-example/infer"
    by_parameters = {
        "inputs": [
            {
                "name": "parameters-np",
                "datatype": "INT32",
                "shape": [2, 2],
                "data": [1, 2, 3, 4],
                "parameters": {"content_type": "np"},
            },
            {
                "name": "parameters-str",
                "datatype": "BYTES",
                "shape": [1],
                "data": "hello world 😁",
                "parameters": {"content_type": "str"},
            },
        ]
    }
    codecs = InferenceRequest(
        inputs=[
            NumpyCodec.encode_input("parameters-np", np.array([[1, 2], [3, 4]])),
            StringCodec.encode_input("parameters-str", ["hello world 😁"], use_bytes=False),
        ]
    )
    request_codec = {
        "inputs": [
            {
                "name": "parameters-np",
                "datatype": "INT32",
                "shape": [2, 2],
                "data": [1, 2, 3, 4],
                "parameters": {"content_type": "np"},
            },
            {
                "name": "parameters-str",
                "datatype": "BYTES",
                "shape": [2, 11],
                "data": ["hello world 😁", "bye bye 😁"],
                "parameters": {"content_type": "str"},
            },
        ],
        "parameters": {"content_type": "pd"},
    }
    return [
        Case("input-parameters", path, by_parameters),
        Case("input-codecs", path, _dumped(codecs)),
        Case("request-pd", path, request_codec),
    ]


# --------------------------------------------------------------------------- serving


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode("utf-8", "replace")


class MLServer:
    """``mlserver start <folder>`` on free ports, stopped on exit."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.http = _free_port()
        env = dict(os.environ)
        env.update(
            MLSERVER_HOST="127.0.0.1",
            MLSERVER_HTTP_PORT=str(self.http),
            MLSERVER_GRPC_PORT=str(_free_port()),
            MLSERVER_METRICS_PORT=str(_free_port()),
            MLSERVER_PARALLEL_WORKERS="0",
        )
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [binary, "start", str(folder)], cwd=folder, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.log.seek(0)
        raise RuntimeError(f"MLServer did not get ready:\n{self.log.read()[-4000:]}")

    def __enter__(self) -> MLServer:
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _decoded(codec: str, answer: Any) -> Any:
    from mlserver import codecs
    from mlserver.types import InferenceResponse

    decoded = getattr(codecs, codec).decode_response(InferenceResponse.model_validate(answer))
    return {"shape": list(decoded.shape), "data": decoded.tolist()}


def record(binary: str, names: list[str]) -> dict[str, Any]:
    from importlib.metadata import version

    recording: dict[str, Any] = {
        "mlserver": version("mlserver"),
        "versions": {p: version(p) for p in ("scikit-learn", "xgboost", "lightgbm", "numpy", "pandas")},
        "examples": {},
    }
    all_cases = cases()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            folder = make_example(name, Path(tmp))
            answers = []
            with MLServer(binary, folder) as server:
                for case in all_cases[name]:
                    status, body = _post(server.url + case.path, case.body)
                    entry: dict[str, Any] = {
                        "name": case.name,
                        "path": case.path,
                        "request": case.body,
                        "status": status,
                        "response": body,
                    }
                    if case.decode and status == 200:
                        entry["decode"] = {"codec": case.decode, **_decoded(case.decode, body)}
                    answers.append(entry)
                    print(f"{name}/{case.name}: {status}", file=sys.stderr)
            recording["examples"][name] = answers
    return recording


def _format(recording: dict[str, Any]) -> str:
    """The recording as JSON with one line per case: diffs of a new recording show which
    answers changed."""
    head = {key: value for key, value in recording.items() if key != "examples"}
    lines = [json.dumps(head, ensure_ascii=False)[:-1] + ', "examples": {']
    examples = list(recording["examples"].items())
    for i, (name, answers) in enumerate(examples):
        lines.append(f" {json.dumps(name)}: [")
        lines += [
            "  " + json.dumps(answer, ensure_ascii=False) + ("," if j < len(answers) - 1 else "")
            for j, answer in enumerate(answers)
        ]
        lines.append(" ]" + ("," if i < len(examples) - 1 else ""))
    lines.append("}}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mlserver", default=os.environ.get("MLSERVER_BIN", "mlserver"), help="the mlserver command")
    parser.add_argument("--output", type=Path, default=RECORDING)
    parser.add_argument("examples", nargs="*", help="examples to record (default: all)")
    args = parser.parse_args()
    names = args.examples or list(cases())
    recording = record(args.mlserver, names)
    args.output.write_text(_format(recording))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()

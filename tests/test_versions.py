"""Several versions of one model side by side, as MLServer and Triton lay them out.

One repository, models trained here so that each version answers differently:

- MLServer's layout, as its sklearn and xgboost examples document their
  ``model-settings.json``: two folders with one ``name`` and different
  ``parameters.version`` (``iris-skl`` v0.1.0 and v0.2.0; ``mushroom-xgb`` v0.9.0 and
  v0.10.0, where v0.10.0 is the higher one: versions compare number by number);
- Triton's layout: one settings file and numeric version folders (``triton-skl`` 1, 2
  and 10, numeric order), and one with a ``default_version`` (``pinned``) whose version
  folder ``2`` holds its own settings file.

Each is checked through REST and Triton's HTTP and gRPC clients: per-version routes and
answers, the unversioned route, metadata, the repository index and load/unload by name,
per-version statistics and metrics, and unknown versions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import xgboost
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from support import named_processes
from tritonclient.utils import InferenceServerException

from runtime_core.plugins import load_registry
from runtime_core.repository import ModelRepository
from runtime_core.scheduler import FairScheduler
from runtime_core.settings import ServerSettings, version_order
from runtime_core.testing import ServerProcess, wait_until, write_model

N_FEATURES = 4


def _data() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    x, y = make_classification(
        n_samples=150, n_features=N_FEATURES, n_informative=3, n_redundant=0, n_classes=3, random_state=1
    )
    return x.astype(np.float32), y


def _mlserver_folder(root: Path, folder: str, doc: dict[str, Any], artifact: Path) -> None:
    (root / folder).mkdir()
    (root / folder / "model-settings.json").write_text(json.dumps(doc, indent=2))
    shutil.copy(artifact, root / folder / Path(doc["parameters"]["uri"]).name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("versions")
    work = tmp_path_factory.mktemp("artifacts")
    x, y = _data()
    models: dict[str, Any] = {}
    # Each version learns other labels, so that the versions' answers differ.
    for shift, name in enumerate(("skl-a", "skl-b", "skl-c")):
        models[name] = LogisticRegression(max_iter=500).fit(x, (y + shift) % 3)
        joblib.dump(models[name], work / f"{name}.joblib")
    for shift, name in enumerate(("xgb-a", "xgb-b")):
        models[name] = xgboost.XGBClassifier(n_estimators=4, max_depth=3, n_jobs=1, random_state=0).fit(
            x, (y + shift) % 3
        )
        models[name].save_model(work / f"{name}.json")

    # MLServer's layout: two folders, one name, two versions.
    skl = {"name": "iris-skl", "implementation": "mlserver_sklearn.SKLearnModel"}
    _mlserver_folder(root, "iris-v1", {**skl, "parameters": {"uri": "./model.joblib", "version": "v0.1.0"}},
                     work / "skl-a.joblib")  # fmt: skip
    _mlserver_folder(root, "iris-v2", {**skl, "parameters": {"uri": "./model.joblib", "version": "v0.2.0"}},
                     work / "skl-b.joblib")  # fmt: skip
    xgb = {"name": "mushroom-xgb", "implementation": "mlserver_xgboost.XGBoostModel"}
    _mlserver_folder(root, "mushroom-old", {**xgb, "parameters": {"uri": "./model.json", "version": "v0.9.0"}},
                     work / "xgb-a.json")  # fmt: skip
    _mlserver_folder(root, "mushroom-new", {**xgb, "parameters": {"uri": "./model.json", "version": "v0.10.0"}},
                     work / "xgb-b.json")  # fmt: skip

    # Triton's layout: settings in the model folder, artifacts in numeric version folders.
    write_model(root / "triton-skl", runtime="sklearn")
    for version, artifact in (("1", "skl-a"), ("2", "skl-b"), ("10", "skl-c")):
        (root / "triton-skl" / version).mkdir()
        shutil.copy(work / f"{artifact}.joblib", root / "triton-skl" / version / "model.joblib")
    # default_version, and a version folder with its own settings (in place of the model folder's).
    write_model(root / "pinned", runtime="sklearn", default_version="1")
    for version, artifact in (("1", "skl-a"), ("2", "skl-b")):
        (root / "pinned" / version).mkdir()
        shutil.copy(work / f"{artifact}.joblib", root / "pinned" / version / "model.joblib")
    write_model(root / "pinned" / "2", runtime="sklearn", parameters={"uri": "model.joblib"})
    # A model without versions keeps working as before.
    write_model(root / "plain", runtime="sklearn")
    shutil.copy(work / "skl-a.joblib", root / "plain" / "model.joblib")
    return {"root": root, "x": x[:9], "models": models}


# Which trained model each (name, version) serves.
SERVES = {
    ("iris-skl", "v0.1.0"): "skl-a",
    ("iris-skl", "v0.2.0"): "skl-b",
    ("mushroom-xgb", "v0.9.0"): "xgb-a",
    ("mushroom-xgb", "v0.10.0"): "xgb-b",
    ("triton-skl", "1"): "skl-a",
    ("triton-skl", "2"): "skl-b",
    ("triton-skl", "10"): "skl-c",
    ("pinned", "1"): "skl-a",
    ("pinned", "2"): "skl-b",
}
#: The version the unversioned routes serve.
DEFAULTS = {"iris-skl": "v0.2.0", "mushroom-xgb": "v0.10.0", "triton-skl": "10", "pinned": "1"}


@pytest.fixture(scope="module")
def server(trained: dict[str, Any]) -> Iterator[ServerProcess]:
    proc = ServerProcess(trained["root"], workers=1)
    yield proc
    proc.stop()


def _body(x: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        "outputs": [{"name": "predict_proba"}],
    }


def _proba(doc: dict[str, Any]) -> np.ndarray[Any, Any]:
    out = doc["outputs"][0]
    return np.asarray(out["data"]).reshape(out["shape"])


def test_versions_order_numbers_as_numbers() -> None:
    assert sorted(["10", "2", "1"], key=version_order) == ["1", "2", "10"]
    assert sorted(["v0.10.0", "v0.9.0", "v0.2.0"], key=version_order) == ["v0.2.0", "v0.9.0", "v0.10.0"]


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "version"), sorted(SERVES))
def test_each_version_answers_with_its_own_model(
    server: ServerProcess, trained: dict[str, Any], name: str, version: str
) -> None:
    x = trained["x"]
    status, doc = server.post_json(f"/v2/models/{name}/versions/{version}/infer", _body(x))
    assert status == 200, doc
    assert (doc["model_name"], doc["model_version"]) == (name, version)
    mine = trained["models"][SERVES[name, version]]
    np.testing.assert_allclose(_proba(doc), mine.predict_proba(x), rtol=1e-5, atol=1e-6)
    others = [v for (n, v) in SERVES if n == name and v != version]
    for other in others:  # the versions really differ
        assert not np.allclose(_proba(doc), trained["models"][SERVES[name, other]].predict_proba(x), atol=1e-3)


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_unversioned_routes_go_to_the_default_version(server: ServerProcess, name: str) -> None:
    status, doc = server.post_json(f"/v2/models/{name}/infer", _body(np.zeros((1, N_FEATURES), np.float32)))
    assert status == 200, doc
    assert doc["model_version"] == DEFAULTS[name]
    status, meta = server.get(f"/v2/models/{name}")
    assert status == 200
    expected = sorted((v for (n, v) in SERVES if n == name), key=version_order)
    assert meta["versions"] == expected


@pytest.mark.e2e
def test_unversioned_model_keeps_working(server: ServerProcess, trained: dict[str, Any]) -> None:
    status, doc = server.post_json("/v2/models/plain/infer", _body(trained["x"]))
    assert status == 200 and "model_version" not in doc
    status, meta = server.get("/v2/models/plain")
    assert status == 200 and "versions" not in meta
    status, doc = server.get("/v2/models/plain/versions/1")
    assert status == 404


@pytest.mark.e2e
@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/ready"), ("POST", "/infer"), ("GET", "/stats")])
def test_unknown_version_is_404_naming_model_and_version(server: ServerProcess, method: str, suffix: str) -> None:
    body = json.dumps(_body(np.zeros((1, N_FEATURES), np.float32))).encode() if method == "POST" else None
    status, raw, _ = server.request(method, f"/v2/models/triton-skl/versions/3{suffix}", body)
    assert status == 404
    message = json.loads(raw)["error"]
    assert "triton-skl" in message and "'3'" in message


@pytest.mark.e2e
def test_index_lists_every_version(server: ServerProcess) -> None:
    status, index = server.post_json("/v2/repository/index", {})
    assert status == 200
    rows = {(row["name"], row.get("version")): row for row in index}
    for key in SERVES:
        assert rows[key]["state"] == "READY"
        assert rows[key]["residency"]
    assert ("plain", None) in rows
    assert [row["version"] for row in index if row["name"] == "triton-skl"] == ["1", "2", "10"]


@pytest.mark.e2e
def test_statistics_and_metrics_per_version(server: ServerProcess) -> None:
    x = np.zeros((1, N_FEATURES), np.float32)
    for _ in range(3):
        assert server.post_json("/v2/models/iris-skl/versions/v0.1.0/infer", _body(x))[0] == 200
    status, doc = server.get("/v2/models/iris-skl/versions/v0.1.0/stats")
    assert status == 200
    (row,) = doc["model_stats"]
    assert row["version"] == "v0.1.0" and row["inference_count"] >= 3
    status, doc = server.get("/v2/models/stats")
    rows = {(r["name"], r["version"]): r for r in doc["model_stats"]}
    assert ("iris-skl", "v0.1.0") in rows and ("iris-skl", "v0.2.0") in rows
    assert rows["iris-skl", "v0.1.0"]["inference_count"] > rows["iris-skl", "v0.2.0"]["inference_count"] - 3
    _, raw, _ = server.request("GET", "/metrics")
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(raw.decode())
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[name, frozenset(labels.items())]

    assert value("runtime_core_requests_total", model="iris-skl", version="v0.1.0", outcome="success") >= 3
    assert value("runtime_core_model_state", model="iris-skl", version="v0.2.0", state="READY") == 1
    assert value("runtime_core_workers_ready", model="iris-skl", version="v0.2.0") >= 0
    status, page = server.get("/status.json")
    assert status == 200
    assert {(m["name"], m["version"]) for m in page["models"] if m["name"] == "iris-skl"} == {
        ("iris-skl", "v0.1.0"),
        ("iris-skl", "v0.2.0"),
    }


@pytest.mark.e2e
def test_tritonclient_http_and_grpc_choose_the_version(server: ServerProcess, trained: dict[str, Any]) -> None:
    x = trained["x"]
    http = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30.0)
    grpc = grpcclient.InferenceServerClient(url=server.grpc_url)
    try:
        for version in ("1", "2", "10"):
            mine = trained["models"][SERVES["triton-skl", version]].predict_proba(x)
            inputs = [httpclient.InferInput("x", list(x.shape), "FP32")]
            inputs[0].set_data_from_numpy(x, binary_data=True)
            outputs = [httpclient.InferRequestedOutput("predict_proba", binary_data=True)]
            result = http.infer("triton-skl", inputs, model_version=version, outputs=outputs)
            np.testing.assert_allclose(result.as_numpy("predict_proba"), mine, rtol=1e-5, atol=1e-6)
            assert result.get_response()["model_version"] == version
            assert http.is_model_ready("triton-skl", version)
            assert http.get_model_metadata("triton-skl", version)["versions"] == ["1", "2", "10"]

            ginputs = [grpcclient.InferInput("x", list(x.shape), "FP32")]
            ginputs[0].set_data_from_numpy(x)
            goutputs = [grpcclient.InferRequestedOutput("predict_proba")]
            gresult = grpc.infer("triton-skl", ginputs, model_version=version, outputs=goutputs)
            np.testing.assert_allclose(gresult.as_numpy("predict_proba"), mine, rtol=1e-5, atol=1e-6)
            assert gresult.get_response().model_version == version
            assert grpc.is_model_ready("triton-skl", version)
            assert list(grpc.get_model_metadata("triton-skl", version).versions) == ["1", "2", "10"]
            stats = grpc.get_inference_statistics("triton-skl", version, as_json=True)["model_stats"]
            assert [(s["name"], s["version"]) for s in stats] == [("triton-skl", version)]
            assert int(stats[0]["inference_count"]) >= 1
        gindex = grpc.get_model_repository_index(as_json=True)["models"]
        assert [m["version"] for m in gindex if m["name"] == "triton-skl"] == ["1", "2", "10"]
        for client, error in ((http, InferenceServerException), (grpc, InferenceServerException)):
            with pytest.raises(error, match="triton-skl"):
                client.get_model_metadata("triton-skl", "3")
            inputs = [(httpclient if client is http else grpcclient).InferInput("x", list(x.shape), "FP32")]
            inputs[0].set_data_from_numpy(x)
            with pytest.raises(error, match="'3'"):
                client.infer("triton-skl", inputs, model_version="3")
        with pytest.raises(InferenceServerException) as caught:
            grpc.get_model_metadata("triton-skl", "3")
        assert caught.value.status() == "StatusCode.NOT_FOUND"
    finally:
        http.close()
        grpc.close()


@pytest.mark.e2e
def test_unload_and_load_by_name_cover_every_version(server: ServerProcess) -> None:
    def states(name: str) -> dict[str, str]:
        _, index = server.post_json("/v2/repository/index", {})
        return {row["version"]: row["state"] for row in index if row["name"] == name}

    grpc = grpcclient.InferenceServerClient(url=server.grpc_url)
    try:
        status, doc = server.post_json("/v2/repository/models/mushroom-xgb/unload")
        assert status == 200, doc
        assert states("mushroom-xgb") == {"v0.9.0": "UNAVAILABLE", "v0.10.0": "UNAVAILABLE"}
        status, _ = server.get("/v2/models/mushroom-xgb/versions/v0.9.0/ready")
        assert status == 400
        assert states("iris-skl") == {"v0.1.0": "READY", "v0.2.0": "READY"}  # other models untouched
        status, doc = server.post_json("/v2/repository/models/mushroom-xgb/load")
        assert status == 200, doc
        assert states("mushroom-xgb") == {"v0.9.0": "READY", "v0.10.0": "READY"}

        grpc.unload_model("triton-skl")
        assert set(states("triton-skl").values()) == {"UNAVAILABLE"}
        assert not grpc.is_model_ready("triton-skl", "2")
        grpc.load_model("triton-skl")
        assert states("triton-skl") == {"1": "READY", "2": "READY", "10": "READY"}
        assert grpc.is_model_ready("triton-skl", "2")
    finally:
        grpc.close()


@pytest.mark.e2e
def test_a_new_version_folder_loads_with_the_model(server: ServerProcess, trained: dict[str, Any]) -> None:
    """Loading a model by name picks up a version folder added since, and drops a removed one."""
    folder = trained["root"] / "triton-skl"
    shutil.copytree(folder / "2", folder / "3")
    try:
        assert server.post_json("/v2/repository/models/triton-skl/load")[0] == 200
        status, doc = server.post_json("/v2/models/triton-skl/versions/3/infer", _body(trained["x"]))
        assert status == 200 and doc["model_version"] == "3"
    finally:
        shutil.rmtree(folder / "3")
    assert server.post_json("/v2/repository/models/triton-skl/load")[0] == 200
    status, _ = server.get("/v2/models/triton-skl/versions/3/ready")
    assert status == 400  # known, unloaded: its folder is gone
    wait_until(lambda: server.get("/v2/models/triton-skl")[1]["versions"] == ["1", "2", "10"])


@pytest.mark.e2e
def test_a_crash_of_one_versions_worker_leaves_the_other_serving(tmp_path: Path) -> None:
    """Each version has its own workers: kill -9 of version 1's leaves version 2's alone."""
    for version in ("1", "2"):
        write_model(tmp_path / "m" / version, runtime="echo")
    server = ServerProcess(tmp_path, workers=1, env={"RUNTIME_CORE_MIN_WORKERS": "1"})
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    try:

        def workers() -> dict[str, psutil.Process]:
            return {name: proc for name, proc in named_processes(server.pid) if name.startswith("rc-w")}

        found = wait_until(lambda: (w := workers()) and {"rc-w0:m/1", "rc-w0:m/2"} <= set(w) and w, message="workers")
        survivor = found["rc-w0:m/2"].pid
        os.kill(found["rc-w0:m/1"].pid, signal.SIGKILL)
        for _ in range(20):
            status, doc = server.post_json("/v2/models/m/versions/2/infer", body)
            assert status == 200 and doc["model_version"] == "2", doc
        assert workers()["rc-w0:m/2"].pid == survivor
        wait_until(lambda: server.post_json("/v2/models/m/versions/1/infer", body)[0] == 200, message="version 1")

        def restarts() -> dict[str, int]:
            return {m["version"]: m["restarts"] for m in server.get("/status.json")[1]["models"]}

        wait_until(lambda: restarts()["1"] >= 1, message="version 1's restart counted")
        assert restarts()["2"] == 0
    finally:
        server.stop()


@pytest.mark.e2e
def test_watch_picks_up_a_new_version_folder_and_drops_a_removed_one(tmp_path: Path) -> None:
    write_model(tmp_path / "m", runtime="echo")
    (tmp_path / "m" / "1").mkdir()
    server = ServerProcess(tmp_path, args=["--watch"], env={"RUNTIME_CORE_WATCH_INTERVAL": "0.2"})
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}

    def served() -> str:
        status, doc = server.post_json("/v2/models/m/infer", body)
        return str(doc["model_version"]) if status == 200 else f"status {status}"

    try:
        assert served() == "1"
        (tmp_path / "m" / "2").mkdir()
        wait_until(lambda: served() == "2", message="the new, higher version to take the unversioned route")
        assert server.post_json("/v2/models/m/versions/1/infer", body)[0] == 200
        (tmp_path / "m" / "2").rmdir()
        wait_until(lambda: served() == "1", message="the unversioned route back on version 1")
        assert server.get("/v2/models/m/versions/2/ready")[0] == 400
    finally:
        server.stop()


# --------------------------------------------------------------------------- scanning, in process


def _scan(root: Path) -> tuple[dict[str, Any], list[str]]:
    repository = ModelRepository(root, ServerSettings(), load_registry(), FairScheduler(cpu_priority=False))
    found, errors = repository.scan()
    return found, [e.message for e in errors]


def test_a_duplicate_version_is_an_error_naming_both_files(tmp_path: Path) -> None:
    for folder, version in (("a", "2"), ("b", "2"), ("c", "3")):
        write_model(tmp_path / folder, name="m", runtime="sklearn", parameters={"version": version})
    found, errors = _scan(tmp_path)
    assert sorted(found) == ["m/2", "m/3"]
    (message,) = errors
    assert "version '2'" in message
    assert str(tmp_path / "a" / "model-settings.json") in message
    assert str(tmp_path / "b" / "model-settings.json") in message


def test_layout_errors(tmp_path: Path) -> None:
    # a version beside no version
    write_model(tmp_path / "a", name="mixed", runtime="sklearn")
    write_model(tmp_path / "b", name="mixed", runtime="sklearn", parameters={"version": "1"})
    # a default that is not a version
    write_model(tmp_path / "c", runtime="sklearn", default_version="9")
    (tmp_path / "c" / "1").mkdir()
    # parameters.version and version folders at once
    write_model(tmp_path / "d", runtime="sklearn", parameters={"version": "1"})
    (tmp_path / "d" / "1").mkdir()
    # only folders named by digits are versions
    write_model(tmp_path / "e", runtime="sklearn")
    (tmp_path / "e" / "v1").mkdir()
    (tmp_path / "e" / "1a").mkdir()
    found, errors = _scan(tmp_path)
    assert sorted(found) == ["e", "mixed/1"]
    text = "\n".join(errors)
    assert "give every folder of one model a version" in text
    assert "default_version '9'" in text and "is not one of its versions (1)" in text
    assert "parameters.version is set but the folder holds version folders (1)" in text

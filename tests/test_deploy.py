"""The container image and the KServe manifests (deploy/kserve/).

No Docker daemon or cluster runs here, so the tests check what can be checked: the
manifests against the KServe SDK's models (strictly, in a subprocess in KServe's own
environment: see kserve_check.py and ``kserve_python`` in conftest.py),
the serving runtime's contract with KServe, and that the Dockerfile's command, environment
and health check, with the environment the serving runtime adds, start a server on a folder
laid out as KServe's storage initializer leaves ``/mnt/models``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import yaml
from kserve_check import admission_errors
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from runtime_core.testing import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kserve"
RUNTIME = DEPLOY / "cluster-serving-runtime.yaml"
KSERVE_DEFAULTS = Path(__file__).with_name("kserve_default_runtimes.yaml")


def _dockerfile() -> dict[str, Any]:
    """The instructions of the Dockerfile that the image's start depends on."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found: dict[str, Any] = {"ENV": {}, "EXPOSE": []}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word in ("ENTRYPOINT", "CMD"):
            found[word] = json.loads(rest)  # exec form only: no shell between KServe and the server
        elif word == "ENV":
            found["ENV"].update(pair.split("=", 1) for pair in shlex.split(rest))
        elif word == "EXPOSE":
            found["EXPOSE"] += [int(p) for p in rest.split()]
        elif word in ("USER", "FROM"):
            found[word] = rest
        elif word == "HEALTHCHECK":
            found[word] = rest.split(" CMD ", 1)[1]
    return found


def _runtime_env(name: str) -> dict[str, str]:
    """The serving runtime's environment, with KServe's templates filled for ``name``."""
    doc = yaml.safe_load(RUNTIME.read_text())
    env = {e["name"]: e["value"] for e in doc["spec"]["containers"][0]["env"]}
    # An InferenceService without a modelClass label: KServe leaves the template empty.
    return {k: v.replace("{{.Name}}", name).replace("{{.Labels.modelClass}}", "") for k, v in env.items()}


@pytest.mark.e2e
def test_manifests_match_the_kserve_sdk_models(kserve_python: Path) -> None:
    files = sorted(str(p) for p in DEPLOY.glob("*.yaml"))
    assert len(files) >= 3
    result = subprocess.run(
        [str(kserve_python), str(Path(__file__).with_name("kserve_check.py")), *files],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == {f: [] for f in files}


@pytest.mark.e2e
def test_the_checker_catches_mistakes(tmp_path: Path, kserve_python: Path) -> None:
    """A misspelt key, a wrong type and a missing required field are each reported."""
    text = RUNTIME.read_text()
    bad = text.replace("autoSelect: true", "autoselect: true", 1).replace("periodSeconds: 10", 'periodSeconds: "10"')
    bad = bad.replace("- name: kserve-container", "- image2: nothing")
    (tmp_path / "bad.yaml").write_text(bad)
    result = subprocess.run(
        [str(kserve_python), str(Path(__file__).with_name("kserve_check.py")), str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        check=True,
    )
    errors = "\n".join(json.loads(result.stdout)[str(tmp_path / "bad.yaml")])
    assert "supportedModelFormats[0].autoselect: unknown field" in errors
    assert "livenessProbe.periodSeconds: expected int" in errors
    assert "containers[0].image2: unknown field" in errors
    assert "name" in errors and "Field required" in errors


def test_serving_runtime_contract() -> None:
    doc = yaml.safe_load(RUNTIME.read_text())
    spec = doc["spec"]
    formats = {f["name"] for f in spec["supportedModelFormats"] if f.get("autoSelect")}
    assert formats == {"sklearn", "xgboost"}
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    [container] = spec["containers"]
    assert container["name"] == "kserve-container"
    assert "args" not in container and "command" not in container  # configured by env only
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    for path in DEPLOY.glob("inferenceservice-*.yaml"):
        isvc = yaml.safe_load(path.read_text())["spec"]["predictor"]["model"]
        assert isvc["runtime"] == doc["metadata"]["name"], path.name
        assert isvc["modelFormat"]["name"] in formats, path.name


def _kserve_defaults() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(KSERVE_DEFAULTS.read_text()) if doc]


def test_runtime_installs_next_to_kserves_default_runtimes() -> None:
    ours = yaml.safe_load(RUNTIME.read_text())
    defaults = _kserve_defaults()
    assert admission_errors(ours, defaults) == []
    # And each default runtime installed again (an upgrade of KServe) once ours is there.
    for runtime in defaults:
        assert admission_errors(runtime, [*defaults, ours]) == [], runtime["metadata"]["name"]


def test_the_priority_rule_refuses_what_kserves_webhook_refuses() -> None:
    ours = yaml.safe_load(RUNTIME.read_text())
    defaults = _kserve_defaults()

    def with_formats(priority: int | None = None, **changes: Any) -> dict[str, Any]:
        doc = copy.deepcopy(ours)
        for fmt in doc["spec"]["supportedModelFormats"]:
            if priority is not None:
                fmt["priority"] = priority
        doc["spec"].update(changes)
        return doc

    clash = "same priority assigned for the model format sklearn in the clusterservingruntimes"
    assert admission_errors(with_formats(1), defaults) == [f"{clash} kserve-sklearnserver and kserve-runtime-core"]
    assert admission_errors(with_formats(2), defaults) == [f"{clash} kserve-mlserver and kserve-runtime-core"]
    # No protocol in common, auto-selection off, or the runtime disabled: no clash.
    assert admission_errors(with_formats(1, protocolVersions=["grpc-v1"]), defaults) == []
    assert admission_errors(with_formats(1, disabled=True), defaults) == []
    off = with_formats(1)
    for fmt in off["spec"]["supportedModelFormats"]:
        fmt["autoSelect"] = False
    assert admission_errors(off, defaults) == []
    # One format name, two priorities within the runtime.
    mixed = with_formats(4)
    mixed["spec"]["supportedModelFormats"][-1]["priority"] = 5
    assert admission_errors(mixed, defaults) == [
        "different priorities assigned for the model format xgboost under the clusterservingruntime kserve-runtime-core"
    ]
    # KServe's defaults are admitted beside one another.
    for index, runtime in enumerate(defaults):
        assert admission_errors(runtime, defaults[:index]) == [], runtime["metadata"]["name"]


@pytest.fixture
def kserve_folder(tmp_path: Path) -> dict[str, Any]:
    """What the storage initializer leaves in /mnt/models: the model's file, nothing else."""
    x, y = make_classification(n_samples=60, n_features=3, n_informative=2, n_redundant=0, random_state=2)
    model = LogisticRegression().fit(x.astype(np.float32), y)
    folder = tmp_path / "mnt" / "models"
    folder.mkdir(parents=True)
    joblib.dump(model, folder / "model.joblib")
    return {"folder": folder, "model": model, "x": x[:5].astype(np.float32)}


@pytest.fixture
def container(kserve_folder: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The image's ENTRYPOINT + CMD with the image's ENV and the serving runtime's env, as a
    pod would run them; only the ports (free ones) and the models folder are this test's."""
    docker = _dockerfile()
    assert docker["ENTRYPOINT"] == ["runtime-core"]
    assert docker["CMD"] == ["start", "/mnt/models"]
    entry = Path(sys.executable).with_name(docker["ENTRYPOINT"][0])  # the installed console script
    argv = [str(entry), *(str(kserve_folder["folder"]) if a == "/mnt/models" else a for a in docker["CMD"])]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTIME_CORE_", "MLSERVER_"))}
    env.update(docker["ENV"])
    env.update(_runtime_env("sklearn-iris"))
    env.update({"RUNTIME_CORE_HTTP_PORT": str(port), "RUNTIME_CORE_GRPC_PORT": "0", "RUNTIME_CORE_HOST": "127.0.0.1"})
    env["RUNTIME_CORE_PARALLEL_WORKERS"] = "1"  # two cores shared by the whole suite
    # The image has python and runtime-core on PATH; here they are in this interpreter's venv.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    log = kserve_folder["folder"].parent / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield {"proc": proc, "port": port, "env": env, "docker": docker, "log": log, **kserve_folder}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except OSError:
        return 0


@pytest.mark.e2e
def test_image_command_serves_a_kserve_model_folder(container: dict[str, Any]) -> None:
    port, proc = container["port"], container["proc"]
    wait_until(
        lambda: proc.poll() is not None or _get(port, "/v2/health/ready") == 200,
        120,
        "the server ready",
    )
    assert proc.poll() is None, container["log"].read_text()
    assert _get(port, "/v2/health/live") == 200
    assert _get(port, "/v2/models/sklearn-iris/ready") == 200
    x = container["x"]
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/sklearn-iris/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        doc = json.loads(resp.read())
    assert doc["outputs"][0]["data"] == container["model"].predict(x).tolist()

    # The image's HEALTHCHECK, run as Docker would (a shell, the image's environment).
    health = subprocess.run(["/bin/sh", "-c", container["docker"]["HEALTHCHECK"]], env=container["env"], timeout=30)
    assert health.returncode == 0

    proc.send_signal(signal.SIGTERM)  # what Kubernetes sends on scale-down
    assert proc.wait(60) == 0
    health = subprocess.run(["/bin/sh", "-c", container["docker"]["HEALTHCHECK"]], env=container["env"], timeout=30)
    assert health.returncode != 0


def test_image_basics() -> None:
    docker = _dockerfile()
    assert docker["FROM"].startswith("python:3.11-slim")
    assert docker["USER"] not in ("root", "0")
    assert set(docker["EXPOSE"]) == {8080, 8081}
    assert docker["ENV"]["RUNTIME_CORE_HTTP_PORT"] == "8080"

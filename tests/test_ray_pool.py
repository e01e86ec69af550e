"""The Ray pool backend on a real two-node Ray cluster on this machine.

One ``ray.cluster_utils.Cluster`` per module: a head node and a second node, each with its
own logical CPUs and a custom resource named after it, so placement is observable. The
server is a real ``runtime-core`` process that joins the cluster through
``RUNTIME_CORE_RAY_ADDRESS``; this test process joins it too, to look at the actors
(``ray.util.list_named_actors``: the pool names its actors ``<model>/<id>``) and to kill them.
The cluster's nodes see the toy plugin (``PYTHONPATH``), so that actors can run its runtimes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import ray
import tritonclient.http as httpclient
from ray.cluster_utils import Cluster
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from support import infer_body, toy_model

from runtime_core.pools.ray import NAMESPACE
from runtime_core.pools.ray_actor import _PREAMBLE, _TOKEN_BYTES
from runtime_core.testing import ServerProcess, wait_until, write_model

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

N_FEATURES = 4


@pytest.fixture(scope="module")
def cluster(toy_site: Path) -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as env:
        # A token file in the home folder (any local ray.init() writes one) would make the
        # cluster ask every client for it; the servers here run without one.
        env.setenv("RAY_AUTH_MODE", "disabled")
        path = os.environ.get("PYTHONPATH")
        env.setenv("PYTHONPATH", str(toy_site) + (os.pathsep + path if path else ""))  # for the actors
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 2, "resources": {"head": 10}, "include_dashboard": False},
        )
        second = cluster.add_node(num_cpus=2, resources={"second": 10})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="runtime-core-tests", log_to_driver=False)
        try:
            yield {"cluster": cluster, "head": cluster.head_node.node_id, "second": second}
        finally:
            ray.shutdown()
            cluster.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    x, y = make_classification(n_samples=100, n_features=N_FEATURES, n_informative=3, n_redundant=0, random_state=3)
    x = x.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(x, y)
    root = tmp_path_factory.mktemp("ray-repo")
    write_model(root / "forest", runtime="sklearn", backend="ray", parallel_workers=2, ray={"num_cpus": 0.5})
    joblib.dump(forest, root / "forest" / "model.joblib")
    pinned = {"num_cpus": 0.25, "resources": {"second": 1}}
    # Weight 1/4 of forest's: its actor's model threads get nice 6 (about 1.25 per step).
    write_model(root / "pinned", runtime="sklearn", backend="ray", parallel_workers=1, ray=pinned, weight=0.25)
    joblib.dump(forest, root / "pinned" / "model.joblib")
    return {"root": root, "forest": forest, "x": x[:6]}


@pytest.fixture(scope="module")
def server(cluster: dict[str, Any], model: dict[str, Any]) -> Iterator[ServerProcess]:
    env = {"RUNTIME_CORE_RAY_ADDRESS": cluster["cluster"].address, "RUNTIME_CORE_GRPC_PORT": "0"}
    proc = ServerProcess(model["root"], env=env, wait=False)
    try:
        proc.wait_ready(180)
        yield proc
    finally:
        proc.stop()


def actors(model_name: str | None = None) -> list[str]:
    """Names of the live actors the server created (of one model, if given)."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == NAMESPACE]
    return sorted(n for n in names if model_name is None or n.startswith(model_name + "/"))


def where(name: str) -> dict[str, Any]:
    return dict(ray.get(ray.get_actor(name, namespace=NAMESPACE).where.remote(), timeout=30))


def infer(server: ServerProcess, name: str, x: np.ndarray[Any, Any]) -> tuple[int, Any]:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return server.post_json(f"/v2/models/{name}/infer", body)


def restarts(server: ServerProcess, name: str) -> float:
    _, text, _ = server.request("GET", "/metrics")
    for line in text.decode().splitlines():
        if line.startswith("runtime_core_worker_restarts_total{") and f'model="{name}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.skipif(os.geteuid() != 0, reason="a nice below Ray's 15 needs CAP_SYS_NICE")
def test_actors_run_at_their_models_cpu_priority(server: ServerProcess) -> None:
    """Ray starts its workers at nice 15; the pool gives each actor's model threads the nice a
    local worker of the model would have: 0 for the heaviest weight, 6 for a quarter of it.
    Ray's main thread, which shares the GIL with them, gets the same."""
    names = {name: model for model in ("forest", "pinned") for name in actors(model)}
    assert len(names) == 3, names
    wanted = {"forest": 0, "pinned": 6}

    def niced() -> bool:
        places = {name: where(name) for name in names}
        return all(p["nice"] == p["ray_main_nice"] == wanted[names[n]] for n, p in places.items())

    wait_until(niced, 60, "the actors' model threads at their models' nice values")


def test_actor_processes_are_prepared_as_local_workers(server: ServerProcess) -> None:
    """A Ray worker starts with warning filters for Ray's, urllib3's and requests' warning
    classes; scikit-learn's forests re-apply every filter around each tree of each predict, so
    the actor drops them and keeps Python's own (and what the model's imports added since).
    And, as a local worker's host does, it freezes its heap once the model is loaded, so that
    collections do not walk Ray's."""
    for name in actors("forest"):
        place = where(name)
        modules = place["warning_filters"]
        assert "builtins" in modules, modules
        assert not [m for m in modules if m.split(".")[0] in ("ray", "urllib3", "requests")], modules
        assert place["frozen_objects"] > 10_000, place


def test_workers_spread_over_two_nodes_and_custom_resources_pin(server: ServerProcess, cluster: dict[str, Any]) -> None:
    forest = actors("forest")
    assert len(forest) == 2
    assert {where(n)["node_id"] for n in forest} == {cluster["head"], cluster["second"].node_id}
    pinned_actors = actors("pinned")
    assert len(pinned_actors) == 1, server.output()
    pinned = pinned_actors[0]
    assert where(pinned)["node_id"] == cluster["second"].node_id
    # Unloading a model kills its actors.
    status, _ = server.post_json("/v2/repository/models/pinned/unload")
    assert status == 200
    wait_until(lambda: not actors("pinned"), 60, "the unloaded model's actor gone")
    assert len(actors("forest")) == 2


def test_rest_and_tritonclient_answers(server: ServerProcess, model: dict[str, Any]) -> None:
    x, expected = model["x"], model["forest"].predict(model["x"]).tolist()
    status, doc = infer(server, "forest", x)
    assert status == 200, doc
    assert doc["outputs"][0]["data"] == expected
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        tensor = httpclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = client.infer("forest", [tensor], outputs=[httpclient.InferRequestedOutput("predict")])
        assert result.as_numpy("predict").tolist() == expected
        assert client.is_model_ready("forest")
    finally:
        client.close()


def test_a_stranger_without_a_token_is_refused(server: ServerProcess, model: dict[str, Any]) -> None:
    """The pool's listener for its actors closes a connection that does not start with a
    waiting actor's token, without a byte sent back; the model keeps serving."""
    found = wait_until(
        lambda: re.search(r"model 'forest': listening for its Ray actors on (\S+) port (\d+)", server.output()),
        30,
        "the listener's address in the log",
    )
    address = (found.group(1), int(found.group(2)))
    wanted = len(_PREAMBLE) + _TOKEN_BYTES
    for first in (b"GET / HTTP/1.0\r\n\r\n".ljust(wanted, b" "), _PREAMBLE + bytes(_TOKEN_BYTES)):
        with socket.create_connection(address, timeout=30) as stranger:
            stranger.sendall(first + b"more bytes that would be frames")
            try:
                reply = stranger.recv(1024)
            except ConnectionResetError:  # closed with the extra bytes unread
                reply = b""
            assert reply == b""  # closed, nothing said
    wait_until(lambda: server.output().count("sent no actor's token") >= 2, 30, "both refusals logged")
    x, expected = model["x"], model["forest"].predict(model["x"]).tolist()
    for _ in range(4):
        status, doc = infer(server, "forest", x)
        assert status == 200 and doc["outputs"][0]["data"] == expected, doc
    assert len(actors("forest")) == 2 and restarts(server, "forest") == 0


def test_requests_waiting_for_an_actor_run_as_one_predict(server: ServerProcess, model: dict[str, Any]) -> None:
    """Under concurrent load, what waits for an actor goes in one call and one ``predict``:
    the statistics extension shows executions that served several requests."""

    def batched() -> bool:
        status, doc = server.get("/v2/models/forest/stats")
        assert status == 200, doc
        batches = doc["model_stats"][0]["batch_stats"]
        rows = len(model["x"])  # each request's rows: a larger batch size is a call that served several
        return any(b["batch_size"] > rows and b["compute_infer"]["count"] > 0 for b in batches)

    load = Load(server, model["x"], clients=8)
    try:
        wait_until(batched, 60, "a predict call that served several requests")
    finally:
        statuses = load.finish()
    assert set(statuses) == {200}, (statuses, load.bodies[:3])


class Load:
    """Clients sending requests in a loop until stopped; counts answers by status."""

    def __init__(self, server: ServerProcess, x: np.ndarray[Any, Any], clients: int = 4) -> None:
        self.server, self.x = server, x
        self.statuses: Counter[int] = Counter()
        self.bodies: list[Any] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            status, doc = infer(self.server, "forest", self.x)
            self.statuses[status] += 1
            if status != 200:
                self.bodies.append(doc)

    def finish(self) -> Counter[int]:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        return self.statuses


def test_node_removal(server: ServerProcess, cluster: dict[str, Any], model: dict[str, Any]) -> None:
    """Runs before the SIGKILL test: the actors are still spread, one on each node."""
    on_second = [n for n in actors("forest") if where(n)["node_id"] == cluster["second"].node_id]
    assert on_second
    load = Load(server, model["x"], clients=2)
    try:
        wait_until(lambda: load.statuses[200] >= 10, 60, "requests flowing")
        cluster["cluster"].remove_node(cluster["second"])
        wait_until(
            lambda: (names := actors("forest")) and len(names) == 2 and not set(names) & set(on_second),
            180,
            "actors replaced after the node left",
        )
        wait_until(
            lambda: all(where(n)["node_id"] == cluster["head"] for n in actors("forest")), 60, "both on the head"
        )
        served = load.statuses[200]
        wait_until(lambda: load.statuses[200] >= served + 10, 60, "requests flowing on the head node")
    finally:
        statuses = load.finish()
    assert set(statuses) <= {200, 503}, (statuses, load.bodies[:3])
    status, ready = server.get("/v2/models/forest/ready")
    assert status == 200 and ready["ready"] is True


def test_sigkill_of_an_actor_under_load(server: ServerProcess, model: dict[str, Any]) -> None:
    before = actors("forest")
    victim = before[0]
    pid = where(victim)["pid"]
    load = Load(server, model["x"])
    try:
        wait_until(lambda: load.statuses[200] >= 20, 60, "requests flowing")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: restarts(server, "forest") >= 1, 60, "the death noticed")
        wait_until(lambda: victim not in actors("forest") and len(actors("forest")) == 2, 120, "a replacement actor")
        served = load.statuses[200]
        wait_until(lambda: load.statuses[200] >= served + 20, 60, "requests flowing after the replacement")
    finally:
        statuses = load.finish()
    # Requests on the killed actor were retried on the other one, or failed cleanly (503).
    assert set(statuses) <= {200, 503}, (statuses, load.bodies[:3])
    assert all("error" in body for body in load.bodies)
    status, doc = infer(server, "forest", model["x"])
    assert status == 200 and doc["outputs"][0]["data"] == model["forest"].predict(model["x"]).tolist()


def test_shutdown_leaves_no_actor(server: ServerProcess) -> None:
    assert actors()
    code = server.stop()
    assert code == 0, server.output()[-4000:]
    wait_until(lambda: not actors(), 60, "no actor of the server left in the cluster")


def test_actors_that_cannot_be_placed_fail_the_load_cleanly(
    cluster: dict[str, Any], model: dict[str, Any], tmp_path: Path, serve: Any
) -> None:
    """A custom resource no node has: the load fails after startup_timeout, naming what is
    missing, and the pending actors are killed."""
    root = tmp_path / "repo"
    write_model(root / "nowhere", runtime="sklearn", backend="ray", parallel_workers=1, ray={"resources": {"tpu": 1}})
    joblib.dump(model["forest"], root / "nowhere" / "model.joblib")
    env = {
        "RUNTIME_CORE_RAY_ADDRESS": cluster["cluster"].address,
        "RUNTIME_CORE_GRPC_PORT": "0",
        "RUNTIME_CORE_STARTUP_TIMEOUT": "3",
    }
    server = serve(root, env=env, wait=False)

    def failed() -> dict[str, Any] | None:
        try:
            status, index = server.post_json("/v2/repository/index", {})
        except OSError:
            return None
        return index[0] if status == 200 and index and index[0]["state"] == "UNAVAILABLE" else None

    entry = wait_until(failed, 90, "the unplaceable model reported UNAVAILABLE")
    assert "startup_timeout" in entry["reason"] and "tpu" in entry["reason"], entry
    wait_until(lambda: not actors("nowhere"), 60, "the pending actor killed")


def test_hung_and_stalled_actors_are_killed_and_replaced(cluster: dict[str, Any], tmp_path: Path, serve: Any) -> None:
    """A request running past ``worker_timeout`` fails with 504 and its actor is replaced; an
    idle actor that stops answering (SIGSTOP) is found by the heartbeat and replaced."""
    toy_model(tmp_path, "stuck", backend="ray", parallel_workers=1, ray={"num_cpus": 0.25})
    env = {
        "RUNTIME_CORE_RAY_ADDRESS": cluster["cluster"].address,
        "RUNTIME_CORE_GRPC_PORT": "0",
        "RUNTIME_CORE_WORKER_TIMEOUT": "2",
    }
    server = serve(tmp_path, env=env, wait=False)
    server.wait_ready(180)
    (first,) = actors("stuck")
    assert server.post_json("/v2/models/stuck/infer", infer_body([1.0]))[0] == 200
    # The toy sleeps an hour on "hang": only the watchdog can answer this in time.
    status, doc = server.post_json("/v2/models/stuck/infer", infer_body([1.0], hang=True))
    assert status == 504 and "worker_timeout" in doc["error"], doc
    (second,) = wait_until(lambda: [n for n in actors("stuck") if n != first] or None, 120, "a replacement")
    wait_until(lambda: server.post_json("/v2/models/stuck/infer", infer_body([1.0]))[0] == 200, 60, "answers")
    # Stopped while idle: only the heartbeat can tell.
    os.kill(where(second)["pid"], signal.SIGSTOP)
    wait_until(lambda: [n for n in actors("stuck") if n not in (first, second)], 120, "a replacement")
    wait_until(lambda: server.post_json("/v2/models/stuck/infer", infer_body([2.0]))[0] == 200, 60, "answers")
    assert restarts(server, "stuck") == 2
    server.stop()
    wait_until(lambda: not actors("stuck"), 60, "no actor left")


def test_without_ray_a_clear_error(tmp_path: Path, serve: Any) -> None:
    """A Ray that cannot be imported: the model is UNAVAILABLE with the install command."""
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    root = tmp_path / "repo"
    write_model(root / "m", runtime="sklearn", backend="ray")
    path = str(tmp_path / "no-ray") + os.pathsep + os.environ.get("PYTHONPATH", "")
    server = serve(root, env={"PYTHONPATH": path}, wait=False)

    def entry() -> dict[str, Any] | None:
        try:
            status, index = server.post_json("/v2/repository/index", {})
        except OSError:
            return None
        return index[0] if status == 200 and index and index[0]["state"] == "UNAVAILABLE" else None

    found = wait_until(entry, 60, "the model reported UNAVAILABLE")
    assert "pip install 'runtime-core[ray]'" in found["reason"], json.dumps(found)

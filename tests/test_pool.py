"""Worker process groups: one group per model, isolation, faults, and process lifetimes.

Every test runs a real server process with real worker processes; processes are
observed with psutil, not through the server's own reports.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import infer_body, named_processes, output, toy_model

from runtime_core.testing import ServerProcess, wait_until

pytestmark = pytest.mark.e2e  # every test here starts real server processes


def workers(server: ServerProcess, model: str) -> set[int]:
    """Pids of the model's dedicated workers (named ``rc-w<i>:<model>`` by the server)."""
    return {p.pid for name, p in named_processes(server.pid) if name.startswith("rc-w") and name.endswith(":" + model)}


def hosts(server: ServerProcess) -> dict[str, int]:
    """Runtime name (cut to fit the kernel's 15 bytes) -> pid of its host (``rc-h:<runtime>``)."""
    return {name[5:]: p.pid for name, p in named_processes(server.pid) if name.startswith("rc-h:")}


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def infer(server: ServerProcess, model: str, values: list[float] | None = None, **params: Any) -> tuple[int, Any]:
    return server.post_json(f"/v2/models/{model}/infer", infer_body(values or [1.0, 2.0], **params))


def pids_seen(server: ServerProcess, model: str, requests: int = 12) -> set[int]:
    """Pids of the workers that answered ``requests`` concurrent slow requests."""
    with concurrent.futures.ThreadPoolExecutor(requests) as ex:
        results = list(ex.map(lambda _: infer(server, model, sleep=0.2), range(requests)))
    assert all(status == 200 for status, _ in results), results
    return {output(doc, "pid")[0] for _, doc in results}


@pytest.fixture
def two_models(tmp_path: Path, serve: Any) -> ServerProcess:
    # min_workers keeps the whole group up: these tests are about dedicated worker groups
    # (test_density.py covers workers that come and go with traffic).
    toy_model(tmp_path, "alpha", parallel_workers=2, min_workers=2)
    toy_model(tmp_path, "beta", parallel_workers=3, min_workers=3)
    return serve(tmp_path)


def test_each_model_gets_its_own_group_of_n_workers(two_models: ServerProcess) -> None:
    assert len(workers(two_models, "alpha")) == 2 and len(workers(two_models, "beta")) == 3
    alpha, beta = pids_seen(two_models, "alpha"), pids_seen(two_models, "beta")
    assert alpha == workers(two_models, "alpha") and beta == workers(two_models, "beta")
    assert not alpha & beta
    assert two_models.pid not in alpha | beta


def test_shared_runtime_is_loaded_once_in_the_host_and_forked(two_models: ServerProcess) -> None:
    status, doc = infer(two_models, "alpha")
    assert status == 200
    # The model was loaded in its runtime's host, not in the worker that answered, and the
    # worker is the host's child.
    (host,) = hosts(two_models).values()  # names are cut at 15 bytes: rc-h:toy-identi
    assert output(doc, "loaded_in")[0] == host
    assert output(doc, "pid")[0] in {c.pid for c in psutil.Process(host).children()}


def test_per_worker_runtime_loads_in_every_worker(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "each", runtime="toy-per-worker", parallel_workers=2, min_workers=2)
    toy_model(tmp_path, "threaded", runtime="toy-threaded", parallel_workers=2, min_workers=2)
    server = serve(tmp_path)
    for model in ("each", "threaded"):
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            docs = [d for s, d in ex.map(lambda _, m=model: infer(server, m, sleep=0.2), range(6)) if s == 200]
        assert len(docs) == 6
        assert {output(d, "loaded_in")[0] for d in docs} == {output(d, "pid")[0] for d in docs}
        assert len({output(d, "pid")[0] for d in docs}) == 2


def test_bad_input_is_a_400_from_the_worker_and_loses_no_worker(two_models: ServerProcess) -> None:
    before = workers(two_models, "alpha")
    bad = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [1, 2]}]}
    status, doc = two_models.post_json("/v2/models/alpha/infer", bad)
    assert status == 400 and "3 elements" in doc["error"]
    status, doc = infer(two_models, "alpha", invalid=True)
    assert status == 400 and doc == {"error": "the toy model rejects this input, as asked"}
    status, doc = infer(two_models, "alpha", fail=True)
    assert status == 500 and "failed" in doc["error"] and "Traceback" not in doc["error"]
    assert infer(two_models, "alpha")[0] == 200
    assert workers(two_models, "alpha") == before


def test_unload_reload_and_load_touch_only_their_model(tmp_path: Path, two_models: ServerProcess) -> None:
    alpha = pids_seen(two_models, "alpha")
    assert two_models.post_json("/v2/repository/models/beta/unload")[0] == 200
    assert infer(two_models, "beta")[0] in (404, 503)
    wait_until(lambda: not workers(two_models, "beta"), message="beta's workers to exit")
    assert workers(two_models, "alpha") == alpha

    toy_model(tmp_path, "gamma", parallel_workers=1, min_workers=1)
    assert two_models.post_json("/v2/repository/models/gamma/load")[0] == 200
    assert two_models.post_json("/v2/repository/models/beta/load")[0] == 200
    assert workers(two_models, "alpha") == alpha
    assert pids_seen(two_models, "alpha") == alpha
    assert infer(two_models, "beta")[0] == 200 and infer(two_models, "gamma")[0] == 200


def _hammer(server: ServerProcess, model: str, statuses: list[int], done: threading.Event) -> None:
    while not done.is_set():
        statuses.append(infer(server, model, sleep=0.01)[0])


def test_reload_under_load_fails_no_request(two_models: ServerProcess) -> None:
    old = pids_seen(two_models, "beta")
    statuses: list[int] = []
    done = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        futures = [ex.submit(_hammer, two_models, "beta", statuses, done) for _ in range(4)]
        wait_until(lambda: len(statuses) >= 8, 30, "requests flowing before the reload")
        status, doc = two_models.post_json("/v2/repository/models/beta/load")
        after = len(statuses)
        wait_until(lambda: len(statuses) >= after + 8, 30, "requests flowing after the reload")
        done.set()
        for f in futures:
            f.result()
    assert status == 200, doc
    assert statuses and set(statuses) == {200}
    new = pids_seen(two_models, "beta")
    assert len(new) == 3 and not new & old


def test_killed_worker_is_replaced_and_its_requests_are_retried(two_models: ServerProcess) -> None:
    """kill -9 of a worker with requests in flight: each of them is sent once more to the
    other worker, so no client sees an error, and the worker is replaced."""
    before = workers(two_models, "alpha")
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        # Six slow requests spread over the two workers (three each, pipeline depth two
        # running or queued there): the victim holds some of them when it dies.
        futures = [ex.submit(infer, two_models, "alpha", [float(i)], sleep=0.5) for i in range(6)]
        # Four in flight (pipeline depth two on each worker), two queued: both workers hold
        # requests when one of them is killed.
        wait_until(lambda: _inflight(two_models, "alpha") == 4, 10, "four requests in the workers")
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        results = [f.result() for f in futures]
    assert [status for status, _ in results] == [200] * 6, results
    assert [output(doc, "y") for _, doc in results] == [[float(i)] for i in range(6)]
    assert victim not in {output(doc, "pid")[0] for _, doc in results}
    wait_until(lambda: len(workers(two_models, "alpha")) == 2, message="the replacement worker")
    assert victim not in workers(two_models, "alpha")


def _inflight(server: ServerProcess, model: str) -> float:
    status, body, _ = server.request("GET", "/metrics")
    assert status == 200
    prefix = f'runtime_core_inflight_requests{{model="{model}"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines() if line.startswith(prefix))


def _runs(marker: Path) -> list[int]:
    """Pids of the workers that started the request, in order (the toy's ``started_file``)."""
    return [int(pid) for pid in marker.read_text().split()] if marker.exists() else []


def test_a_request_on_a_killed_worker_is_retried_once_on_another(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "pair", parallel_workers=2, min_workers=2)
    server = serve(tmp_path)
    marker = tmp_path / "started"
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        pending = ex.submit(infer, server, "pair", started_file=str(marker), sleep=2.0)
        (victim,) = wait_until(lambda: _runs(marker), 30, "the request to start in a worker")
        os.kill(victim, signal.SIGKILL)  # while the request runs in it
        status, doc = pending.result()
    assert status == 200, doc  # the client never sees the death
    first, retry = _runs(marker)  # run again exactly once, on another worker, which answered
    assert first == victim and retry != victim
    assert output(doc, "pid") == [retry]


def test_a_request_that_kills_every_worker_it_meets_is_tried_twice_then_503(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "trio", parallel_workers=3, min_workers=3)
    server = serve(tmp_path)
    marker = tmp_path / "started"
    status, doc = infer(server, "trio", started_file=str(marker), crash=True)
    assert status == 503 and "died" in doc["error"]
    runs = _runs(marker)
    assert len(runs) == 2 and len(set(runs)) == 2, runs  # once, then one retry; a third worker was free
    assert infer(server, "trio")[0] == 200


def test_hung_worker_is_killed_and_replaced(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "stuck", parallel_workers=1, min_workers=1)
    server = serve(tmp_path, env={"RUNTIME_CORE_WORKER_TIMEOUT": "1"})
    (first,) = pids_seen(server, "stuck", requests=2)
    status, doc = infer(server, "stuck", hang=True)
    assert status == 504 and "worker_timeout" in doc["error"]
    # The model keeps answering meanwhile (its host serves it while it has no worker).
    assert infer(server, "stuck")[0] == 200
    (second,) = wait_until(lambda: workers(server, "stuck") - {first}, 10, "a replacement worker")
    # Once it has said it is ready, it takes every request.
    wait_until(lambda: pids_seen(server, "stuck", requests=2) == {second}, 10, "the replacement to serve")
    assert not psutil.pid_exists(first)


def test_crashing_request_gets_503_and_the_model_keeps_serving(two_models: ServerProcess) -> None:
    status, doc = infer(two_models, "alpha", crash=True)
    assert status == 503 and "died" in doc["error"]
    assert infer(two_models, "alpha")[0] == 200
    status, doc = two_models.get("/v2/models/alpha/ready")
    assert status == 200 and doc["ready"] is True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_process_outlives_the_server(two_models: ServerProcess, sig: int) -> None:
    procs = tree(two_models.pid)
    names = sorted(p.name().split(":")[0] for p in procs[1:])
    # one root template, one host for the toy runtime, five workers
    assert names == ["rc-h", "rc-root"] + ["rc-w0"] * 2 + ["rc-w1"] * 2 + ["rc-w2"]
    code = two_models.stop(sig)
    if sig == signal.SIGTERM:
        assert code == 0
    wait_until(
        lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs), 10, "every worker gone"
    )


def test_a_model_that_fails_to_load_is_unavailable_and_the_others_serve(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "good", parallel_workers=1)
    toy_model(tmp_path, "bad", parallel_workers=1, parameters={"extra": {"load_fails": True}})
    toy_model(tmp_path, "missing", runtime="no-such-runtime")
    server = serve(tmp_path)
    assert infer(server, "good")[0] == 200
    status, index = server.post_json("/v2/repository/index")
    assert status == 200
    states = {m["name"]: m for m in index}
    assert states["good"]["state"] == "READY"
    assert states["bad"]["state"] == "UNAVAILABLE" and "refuses to load" in states["bad"]["reason"]
    assert states["missing"]["state"] == "UNAVAILABLE" and "no-such-runtime" in states["missing"]["reason"]
    assert infer(server, "bad")[0] == 503
    assert workers(server, "bad") == set() and workers(server, "missing") == set()
    text = server.output()
    assert "FAILED  bad" in text and "FAILED  missing" in text and "loaded  good" in text

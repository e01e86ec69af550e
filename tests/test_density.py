"""Density: models cost processes only while their traffic needs them.

Real server processes; processes are observed with psutil (by the names the server
gives them: ``rc-h:<runtime>`` hosts, ``rc-w<i>:<model>`` dedicated workers), not
through the server's own reports.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from support import infer_body, metric, named_processes, output, toy_model

from runtime_core.testing import ServerProcess, wait_until

pytestmark = pytest.mark.e2e  # every test here starts real server processes


def names(server: ServerProcess) -> list[str]:
    return [name for name, _ in named_processes(server.pid)]


def workers_of(server: ServerProcess, model: str) -> int:
    return sum(1 for name in names(server) if name.startswith("rc-w") and name.endswith(":" + model))


def hosts(server: ServerProcess) -> list[psutil.Process]:
    return [proc for name, proc in named_processes(server.pid) if name.startswith("rc-h:")]


def index(server: ServerProcess) -> dict[str, dict[str, Any]]:
    status, doc = server.post_json("/v2/repository/index", {})
    assert status == 200, doc
    return {item["name"]: item for item in doc}


def infer(server: ServerProcess, model: str, values: list[float], **kwargs: Any) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    status, body, _ = server.request(
        "POST", f"/v2/models/{model}/infer", json.dumps(infer_body(values, **kwargs)).encode(), headers
    )
    return status, json.loads(body)


# ---------------------------------------------------------------------------- many models


@pytest.fixture(scope="module")
def many_sklearn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """300 tiny LogisticRegression models (20 features), each trained on its own data."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(7)
    models = {}
    for i in range(300):
        x = rng.normal(size=(40, 20))
        y = (x[:, i % 20] > 0).astype(int)
        model = LogisticRegression().fit(x, y)
        folder = root / f"m{i:03d}"
        folder.mkdir()
        joblib.dump(model, folder / "model.joblib")
        (folder / "model-settings.json").write_text(json.dumps({"name": folder.name, "runtime": "sklearn"}))
        models[folder.name] = model
    return root, models


def test_three_hundred_models_answer_from_one_host_process(many_sklearn: Any, serve: Any) -> None:
    root, models = many_sklearn
    server = serve(root, timeout=300)
    procs = names(server)
    assert [n for n in procs if n.startswith("rc-h:")] == ["rc-h:sklearn"]
    assert not [n for n in procs if n.startswith("rc-w")], procs  # quiet models cost no process
    x = np.random.default_rng(1).normal(size=(3, 20))
    for name, model in models.items():
        status, doc = server.post_json(
            f"/v2/models/{name}/infer",
            {"inputs": [{"name": "x", "shape": [3, 20], "datatype": "FP64", "data": x.ravel().tolist()}]},
        )
        assert status == 200, doc
        assert output(doc, "predict") == model.predict(x).tolist(), name
    assert {item["residency"] for item in index(server).values()} == {"resident"}


# ---------------------------------------------------------------------------- elastic workers


def test_workers_start_under_load_and_retire_when_idle(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "busy", parallel_workers=3, parameters={"extra": {"sleep": 0.05}})
    toy_model(tmp_path, "quiet")
    (tmp_path / "settings.json").write_text(json.dumps({"worker_idle_timeout": 1.0}))
    server = serve(tmp_path)
    assert workers_of(server, "busy") == 0

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda i: infer(server, "busy", [float(i)]), range(64)))
    assert all(status == 200 for status, _ in results)
    assert [output(doc, "y") for _, doc in results] == [[float(i)] for i in range(64)]
    # The load made the model ask for dedicated workers (at most parallel_workers of them).
    pids = {output(doc, "pid")[0] for _, doc in results}
    host_pids = {p.pid for p in hosts(server)}
    assert pids - host_pids, "no dedicated worker served the busy model"
    assert len(pids - host_pids) <= 3
    assert workers_of(server, "quiet") == 0
    # After worker_idle_timeout without a request they are retired.
    wait_until(lambda: workers_of(server, "busy") == 0, 30, "idle workers to retire")
    status, doc = infer(server, "busy", [5.0])
    assert (status, output(doc, "y")) == (200, [5.0])


def test_min_workers_keeps_warm_workers(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "warm", parallel_workers=3, min_workers=2)
    toy_model(tmp_path, "probe", parallel_workers=1, min_workers=0)
    (tmp_path / "settings.json").write_text(json.dumps({"worker_idle_timeout": 0.5}))
    server = serve(tmp_path)
    assert workers_of(server, "warm") == 2
    status, doc = infer(server, "warm", [1.0])
    assert status == 200
    warm = {p.pid for name, p in named_processes(server.pid) if name.endswith(":warm")}
    assert output(doc, "pid")[0] in warm
    # Make the probe model start a worker and watch it retire: the idle timeout has then
    # passed for the warm workers too, and they must still be there.
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda i: infer(server, "probe", [1.0], sleep=0.1), range(12)))
    wait_until(lambda: workers_of(server, "probe") == 1, 30, "the probe's worker")
    wait_until(lambda: workers_of(server, "probe") == 0, 30, "the probe's worker to retire")
    assert workers_of(server, "warm") == 2


def _main_thread_wakeups(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line")


def test_an_idle_server_runs_no_timer_of_its_own(tmp_path: Path, serve: Any) -> None:
    """Once its last request is answered and no worker is left, the supervisor stops waking
    up; the next request wakes it (and the workers it brings are watched again)."""
    toy_model(tmp_path, "a", parallel_workers=1)
    server = serve(tmp_path, args=["--no-grpc"], env={"RUNTIME_CORE_WORKER_IDLE_TIMEOUT": "0.5"})

    def quiet_for_a_while() -> bool:  # the supervisor used to wake once a second
        before = _main_thread_wakeups(server.pid)
        time.sleep(2.5)
        return _main_thread_wakeups(server.pid) == before

    for _ in range(2):
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            results = list(ex.map(lambda i: infer(server, "a", [float(i)], sleep=0.05), range(32)))
        assert [(status, output(doc, "y")) for status, doc in results] == [(200, [float(i)]) for i in range(32)]
        served_by = {output(doc, "pid")[0] for _, doc in results}
        assert served_by - {p.pid for p in hosts(server)}, "no dedicated worker served the model"
        wait_until(lambda: workers_of(server, "a") == 0, 30, "the worker to retire")
        wait_until(quiet_for_a_while, 30, "the main thread to stop waking up")


# ---------------------------------------------------------------------------- residency


def _metric(server: ServerProcess, name: str) -> float:
    status, body, _ = server.request("GET", "/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_eviction_under_a_small_budget_and_transparent_bring_back(tmp_path: Path, serve: Any) -> None:
    for name in ("a", "b", "c"):
        toy_model(tmp_path, name)
    (tmp_path / "settings.json").write_text(json.dumps({"memory_budget": 1}))  # room for one model
    server = serve(tmp_path)
    residency = {name: item["residency"] for name, item in index(server).items()}
    assert sorted(residency.values()) == ["evicted", "evicted", "resident"], residency
    assert all(item["state"] == "READY" for item in index(server).values())
    for name in ("a", "b", "c", "a"):
        status, doc = infer(server, name, [2.0])
        assert (status, output(doc, "y")) == (200, [2.0])
        assert index(server)[name]["residency"] == "resident"
        status, ready = server.get(f"/v2/models/{name}/ready")
        assert status == 200 and ready["ready"] is True
    assert _metric(server, "runtime_core_evictions_total") >= 3


def test_requests_arriving_during_a_bring_back_all_succeed(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "slow", parameters={"extra": {"load_sleep": 0.5}})
    server = serve(tmp_path, args=["--parallel-workers", "2"], env={"RUNTIME_CORE_LAZY_LOAD": "true"})
    assert index(server)["slow"]["residency"] == "evicted"
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        results = list(ex.map(lambda i: infer(server, "slow", [float(i)]), range(10)))
    assert [(status, output(doc, "y")) for status, doc in results] == [(200, [float(i)]) for i in range(10)]
    assert index(server)["slow"]["residency"] == "resident"


def test_a_deadline_expires_during_a_cold_start(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "cold", parameters={"extra": {"load_sleep": 3.0}})
    server = serve(tmp_path, env={"RUNTIME_CORE_LAZY_LOAD": "true"})
    status, doc = infer(server, "cold", [1.0], headers={"Request-Timeout": "0.3"})
    assert status == 504, doc
    assert "deadline" in doc["error"]
    # The load went on: the next request is served.
    status, doc = infer(server, "cold", [1.0])
    assert (status, output(doc, "y")) == (200, [1.0])


def test_unloading_a_model_while_it_is_brought_back(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "cold", parameters={"extra": {"load_sleep": 1.5}})
    toy_model(tmp_path, "other")
    server = serve(tmp_path, env={"RUNTIME_CORE_LAZY_LOAD": "true"})
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        waiting = ex.submit(infer, server, "cold", [1.0])
        wait_until(lambda: index(server)["cold"]["residency"] == "loading", 10, "the load to start")
        status, _ = server.post_json("/v2/repository/models/cold/unload")
        assert status == 200
        status, doc = waiting.result()
    assert status == 503, doc
    assert index(server)["cold"]["state"] == "UNAVAILABLE"
    status, doc = infer(server, "other", [3.0])
    assert (status, output(doc, "y")) == (200, [3.0])
    status, _ = server.post_json("/v2/repository/models/cold/load")
    assert status == 200
    status, doc = infer(server, "cold", [4.0])
    assert (status, output(doc, "y")) == (200, [4.0])


# ---------------------------------------------------------------------------- faults


def test_kill_9_of_a_host_costs_only_its_requests_and_everything_recovers(tmp_path: Path, serve: Any) -> None:
    """A host serves every quiet model of its runtime: killing it fails (or retries) only the
    requests it held at that moment; each model is loaded into a new host on its next request."""
    for name in ("a", "b", "c"):
        toy_model(tmp_path, name)
    server = serve(tmp_path)
    (host,) = hosts(server)
    for name in ("a", "b", "c"):
        assert infer(server, name, [1.0])[0] == 200
    os.kill(host.pid, signal.SIGKILL)
    wait_until(lambda: host.pid not in {p.pid for p in hosts(server)}, 10, "the host to go")
    for name in ("a", "b", "c", "a"):
        status, doc = infer(server, name, [6.0])
        assert (status, output(doc, "y")) == (200, [6.0]), doc
    (new_host,) = hosts(server)
    assert new_host.pid != host.pid
    assert {output(infer(server, n, [1.0])[1], "pid")[0] for n in ("a", "b", "c")} == {new_host.pid}


def test_a_request_that_crashes_the_host_fails_alone(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "a")
    toy_model(tmp_path, "b")
    server = serve(tmp_path)
    status, doc = infer(server, "a", [1.0], crash=True)
    assert status == 503, doc
    assert "died" in doc["error"]
    for name in ("a", "b"):
        status, doc = infer(server, name, [2.0])
        assert (status, output(doc, "y")) == (200, [2.0])


def test_a_stopped_idle_worker_is_found_by_heartbeat_and_replaced(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "pair", parallel_workers=2, min_workers=2)
    server = serve(tmp_path, env={"RUNTIME_CORE_WORKER_TIMEOUT": "3"})
    before = {p.pid: p for name, p in named_processes(server.pid) if name.endswith(":pair")}
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGSTOP)  # idle: no request will ever time out on it
    try:
        wait_until(
            lambda: not psutil.pid_exists(victim) or before[victim].status() == psutil.STATUS_ZOMBIE,
            60,
            "the stopped worker to be killed",
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)
    wait_until(lambda: workers_of(server, "pair") == 2, 30, "a replacement worker")
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda i: infer(server, "pair", [float(i)]), range(8)))
    assert [(status, output(doc, "y")) for status, doc in results] == [(200, [float(i)]) for i in range(8)]
    assert victim not in {output(doc, "pid")[0] for _, doc in results}


@pytest.mark.parametrize("runtime", ["toy-batching", "toy-compute-batching"])
def test_a_slow_model_does_not_hold_up_the_answer_of_a_model_sharing_its_host(
    tmp_path: Path, serve: Any, runtime: str
) -> None:
    """A host runs what it finds at a wake-up model by model; each model's requests are answered
    once they are done, not when the whole wake-up is. Here the host finds a request for
    ``fast`` and then one for ``slow`` in the same wake-up (both sent while it was held busy by
    ``first``): ``fast`` must be answered while ``slow`` still runs. With a compute-only
    runtime, whose earlier calls of ``slow`` were short, the host holds ``fast``'s answer for
    ``slow``'s call (``host_answer_hold``, the longest it allows here so that those calls
    surely count as short): its timer must send it. (``host_stall_after`` is raised so that
    holding ``first`` does not count as a stall: ``fast`` and ``slow`` would then move to a
    sibling host, as tests/test_isolation.py checks.)"""
    gates = tmp_path / "gates"
    gates.mkdir()
    for name in ("first", "fast", "slow"):
        toy_model(tmp_path / "repo", name, runtime=runtime, parameters={"extra": {"gate": str(gates / name)}})
    env = {"RUNTIME_CORE_HOST_STALL_AFTER": "3600", "RUNTIME_CORE_HOST_ANSWER_HOLD": "0.01"}
    server = serve(tmp_path / "repo", env=env)
    (host,) = hosts(server)

    def rows(model: str, value: float) -> Any:
        body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [value]}]}
        return server.post_json(f"/v2/models/{model}/infer", body)

    for i in range(20):  # short calls on the host: it measures slow as cheap
        status, doc = rows("slow", float(i))
        assert (status, output(doc, "pid")) == (200, [host.pid]), doc

    def started(model: str) -> bool:
        return (gates / f"{model}.{host.pid}").exists()

    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        first = ex.submit(rows, "first", 100.0)  # 100: the toy waits for its gate
        wait_until(lambda: started("first"), message="the host to be busy with 'first'")
        fast = ex.submit(rows, "fast", 1.0)
        wait_until(lambda: metric(server, "inflight_requests", "fast") == 1, message="'fast' to reach the host")
        slow = ex.submit(rows, "slow", 100.0)
        wait_until(lambda: metric(server, "inflight_requests", "slow") == 1, message="'slow' to reach the host")
        metric(server, "inflight_requests", "slow")  # one more round trip: both frames are written
        (gates / "first").touch()
        wait_until(fast.done, message="'fast' to be answered while 'slow' runs")
        assert started("slow") and not slow.done()
        (gates / "slow").touch()
        for future, value in ((first, 100.0), (fast, 1.0), (slow, 100.0)):
            status, doc = future.result()
            assert (status, output(doc, "y")) == (200, [value]), doc
        assert output(fast.result()[1], "pid") == [host.pid]


# ---------------------------------------------------------------------------- lazy_load "auto"


def test_lazy_load_auto_loads_a_large_repository_on_first_requests(tmp_path: Path, serve: Any) -> None:
    """Issue 23: above LAZY_LOAD_AUTO_ABOVE models the default loads each on its first
    request; the server is ready without loading any, and every model is READY."""
    from runtime_core.settings import LAZY_LOAD_AUTO_ABOVE

    count = LAZY_LOAD_AUTO_ABOVE + 1
    for i in range(count):
        toy_model(tmp_path, f"m{i:04d}")
    server = serve(tmp_path, timeout=120)
    rows = index(server)
    assert len(rows) == count
    assert {row["state"] for row in rows.values()} == {"READY"}
    assert {row["residency"] for row in rows.values()} == {"evicted"}  # nothing loaded yet
    assert hosts(server) == []
    status, doc = infer(server, "m0007", [3.0])
    assert status == 200 and output(doc, "y") == [3.0], doc
    rows = index(server)
    assert rows["m0007"]["residency"] == "resident" and rows["m0008"]["residency"] == "evicted"
    # Start-up said a line per model for the first hundred, then one per thousand.
    from runtime_core.cli import PROGRESS_LINES

    out = server.output().splitlines()
    assert sum(line.startswith("  loaded  ") for line in out) == PROGRESS_LINES
    assert "  ... 1000 models ready" in out


def test_lazy_load_auto_loads_a_small_repository_at_start(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "a")
    toy_model(tmp_path, "b")
    server = serve(tmp_path)
    assert {row["residency"] for row in index(server).values()} == {"resident"}

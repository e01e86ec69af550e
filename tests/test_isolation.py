"""Isolation inside a runtime's shared host: no model waits for another model's call.

Quiet models of one runtime share a host process. These tests hold that a model whose
calls are long (measured) gets workers of its own, and that a call that stalls the host
(a hang, or a first call nobody has measured yet) does not hold up the host's other
models: they move to a sibling host and are answered while the call still runs.

Real server processes and the toy runtimes; which process answered is the ``pid`` output
of the toy model, and process names are read with psutil.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import infer_body, metric, named_processes, output, toy_model

from runtime_core.testing import ServerProcess, wait_until

pytestmark = pytest.mark.e2e  # every test here starts real server processes


def infer(server: ServerProcess, model: str, value: float, timeout: float = 120.0, **params: Any) -> tuple[int, Any]:
    status, body, _ = server.request(
        "POST",
        f"/v2/models/{model}/infer",
        json.dumps(infer_body([value], **params)).encode(),
        {"Content-Type": "application/json"},
        timeout=timeout,
    )
    return status, json.loads(body)


def pid_of(doc: Any) -> int:
    return int(output(doc, "pid")[0])


def process_name(pid: int) -> str:
    return psutil.Process(pid).name()


def hosts(server: ServerProcess) -> list[int]:
    return [proc.pid for name, proc in named_processes(server.pid) if name.startswith("rc-h:")]


def dedicated(server: ServerProcess, model: str) -> list[int]:
    suffix = ":" + model
    return [proc.pid for name, proc in named_processes(server.pid) if name.startswith("rc-w") and name.endswith(suffix)]


def placement(server: ServerProcess, model: str) -> tuple[str, dict[str, int]]:
    """Where ``model`` runs and the elastic moves its pool made, from ``/status.json``."""
    status, data = server.get(f"/status.json?model={model}")
    assert status == 200, data
    (row,) = [m for m in data["models"] if m["name"] == model]
    return row["placement"], row["decisions"]


def test_a_hung_call_on_the_shared_host_does_not_hold_up_its_other_models(tmp_path: Path, serve: Any) -> None:
    """``stuck`` hangs in the host it shares with ``light``: ``light`` is answered (by a
    sibling host) while that call still runs, instead of waiting for ``worker_timeout``."""
    repo = tmp_path / "repo"
    toy_model(repo, "stuck")
    toy_model(repo, "light")
    server = serve(repo)
    status, doc = infer(server, "light", 1.0)
    assert status == 200, doc
    (host,) = hosts(server)
    assert pid_of(doc) == host
    marker = tmp_path / "stuck-started"
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        hung = ex.submit(infer, server, "stuck", 2.0, 300.0, hang=True, started_file=str(marker))
        wait_until(marker.exists, message="the host to be running the hung call")
        answers = [infer(server, "light", float(i)) for i in range(5)]
        assert not hung.done(), "light waited for the hung call"
        for i, (status, doc) in enumerate(answers):
            assert status == 200 and output(doc, "y") == [float(i)], doc
            assert pid_of(doc) != host
            assert process_name(pid_of(doc)).startswith("rc-h:")
        server.stop(signal.SIGKILL)  # ends the hung call too (a drain would wait for it)


def test_a_costly_model_gets_a_worker_of_its_own_and_the_host_keeps_the_cheap_ones(tmp_path: Path, serve: Any) -> None:
    """Once ``costly`` is measured as costly, its requests run on a dedicated worker: a long
    call of it no longer shares a process with ``light``, which stays on its host."""
    repo = tmp_path / "repo"
    toy_model(repo, "costly", parameters={"extra": {"sleep": 0.02}})
    toy_model(repo, "light")
    server = serve(repo)
    (host,) = hosts(server)
    status, doc = infer(server, "costly", 1.0)  # unmeasured: the host runs it
    assert status == 200 and pid_of(doc) == host, doc
    status, doc = infer(server, "costly", 2.0)
    assert status == 200, doc
    worker = pid_of(doc)
    assert worker in dedicated(server, "costly")
    # The move is visible where a benchmark reads the state it measured.
    assert placement(server, "costly") == ("workers", {"worker_started": 1})
    assert placement(server, "light") == ("host", {})
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        long_call = ex.submit(infer, server, "costly", 3.0, 300.0, hang=True)
        wait_until(lambda: metric(server, "inflight_requests", "costly") == 1, message="the long call to start")
        for i in range(3):
            status, doc = infer(server, "light", float(i))
            assert status == 200 and pid_of(doc) == host, doc
        assert not long_call.done()
        server.stop(signal.SIGKILL)


def test_the_server_processes_share_one_session_and_leave_ctrl_c_to_the_main_process(
    tmp_path: Path, serve: Any
) -> None:
    """A worker demoted to ``SCHED_IDLE`` yields to the main process only if the kernel
    compares the two as tasks. Where it groups processes by session (autogroup), a template
    in a session of its own made the main process and the workers two groups of equal weight,
    and the main process waited up to a scheduler tick behind a demoted worker. Every process
    of the server stays in the main process's session; the templates and what they fork sit in
    their own process groups, so that a terminal's Ctrl-C reaches only the main process."""
    repo = tmp_path / "repo"
    toy_model(repo, "costly", parameters={"extra": {"sleep": 0.02}})
    toy_model(repo, "light")
    server = serve(repo)
    for value in (1.0, 2.0):
        status, doc = infer(server, "costly", value)
        assert status == 200, doc
    assert pid_of(doc) in dedicated(server, "costly")
    status, doc = infer(server, "light", 3.0)
    assert status == 200, doc
    processes = named_processes(server.pid)
    kinds = {name.split(":")[0] for name, _ in processes}
    assert {"rc-root", "rc-h", "rc-w0"} <= kinds, kinds
    session, group = os.getsid(server.pid), os.getpgid(server.pid)
    for name, proc in processes:
        if name.startswith("rc-"):
            assert os.getsid(proc.pid) == session, name
            assert os.getpgid(proc.pid) != group, name


def test_a_costly_model_back_from_idle_runs_on_a_new_worker_not_on_the_host(tmp_path: Path, serve: Any) -> None:
    """Its workers retire when it goes quiet; its next request waits for a fresh one (a fork
    from the host) rather than run on the host the cheap models share."""
    repo = tmp_path / "repo"
    toy_model(repo, "costly", parameters={"extra": {"sleep": 0.02}})
    server = serve(repo, env={"RUNTIME_CORE_WORKER_IDLE_TIMEOUT": "0.5"})
    (host,) = hosts(server)
    for value in (1.0, 2.0):
        status, doc = infer(server, "costly", value)
        assert status == 200, doc
    first = pid_of(doc)
    assert first != host
    wait_until(lambda: not dedicated(server, "costly"), message="costly's worker to retire")
    status, doc = infer(server, "costly", 3.0)
    assert status == 200 and output(doc, "y") == [3.0], doc
    assert pid_of(doc) not in (host, first)
    assert pid_of(doc) in dedicated(server, "costly")


def test_a_costly_models_worker_that_yields_to_a_cheap_one_gives_the_kernel_scheduling_points(
    tmp_path: Path, serve: Any
) -> None:
    """While ``light`` has a request in flight, ``costly``'s worker runs at ``SCHED_IDLE``, and
    the calls it runs then have a timer aimed at their thread: every millisecond the kernel
    chooses again, so a process woken for the cheap model does not wait for a scheduler tick
    behind the costly call (``runtime_core.yieldpoints``). Interrupted that often (a sleep
    here), the call still answers. At normal priority, calls run without the timer."""
    repo = tmp_path / "repo"
    toy_model(repo, "costly", parallel_workers=1, parameters={"extra": {"sleep": 0.02}})
    toy_model(repo, "light")
    server = serve(repo)
    for value in (1.0, 2.0):
        status, doc = infer(server, "costly", value)
        assert status == 200, doc
    (worker,) = dedicated(server, "costly")
    assert pid_of(doc) == worker
    # No cheap model has had work yet: the worker runs at normal priority, without the timer.
    status, doc = infer(server, "costly", 3.0, report_yield=True)
    assert status == 200 and output(doc, "y") == [3.0] and pid_of(doc) == worker, doc
    assert output(doc, "sched_idle") == [0] and output(doc, "yield_timer") == [0], doc
    for i in range(3):  # measured as cheap
        status, doc = infer(server, "light", float(i))
        assert status == 200, doc
    light_gate, costly_gate = tmp_path / "light-gate", tmp_path / "costly-gate"
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        try:
            held_light = ex.submit(infer, server, "light", 7.0, gate=str(light_gate))
            wait_until(lambda: any(tmp_path.glob("light-gate.*")), message="light's call to start")
            held_costly = ex.submit(infer, server, "costly", 8.0, gate=str(costly_gate))
            wait_until(lambda: any(tmp_path.glob("costly-gate.*")), message="costly's first call to start")
            wait_until(lambda: os.sched_getscheduler(worker) == os.SCHED_IDLE, message="costly's worker to yield")
            probed = ex.submit(infer, server, "costly", 9.0, report_yield=True, sleep=0.05)
            wait_until(lambda: metric(server, "inflight_requests", "costly") == 2, message="the probe to be queued")
            costly_gate.touch()
            status, doc = probed.result()
            assert status == 200, doc
            assert output(doc, "y") == [9.0] and pid_of(doc) == worker
            assert output(doc, "sched_idle") == [1] and output(doc, "yield_timer") == [1], doc
            assert held_costly.result()[0] == 200
            light_gate.touch()
            assert held_light.result()[0] == 200
        finally:  # a failed check must not leave the held calls waiting for their gates
            costly_gate.touch()
            light_gate.touch()

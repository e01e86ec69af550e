"""The memory budget bounds the memory the hosts really hold, not only what models declare.

A host that loads and unloads models (eviction churn) can keep memory no eviction gives
back: a leaky framework, the allocator's free lists. The server watches each host's real
growth and, past what its models take plus slack, recycles it: a fresh host loads its
models, then the old one stops. Real server processes and the toy runtime's ``leak_mb``;
memory is read from /proc through psutil, not from the server's own reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import infer_body, named_processes, output, toy_model

from runtime_core.testing import ServerProcess, wait_until

pytestmark = pytest.mark.e2e  # every test here starts real server processes

MIB = 1 << 20
BUDGET = 16 * MIB
SLACK = 64 * MIB  # the documented minimum slack (half the budget, at least 64 MiB)
LEAK = 8  # MiB each load keeps for good


def hosts(server: ServerProcess) -> list[psutil.Process]:
    return [proc for name, proc in named_processes(server.pid) if name.startswith("rc-h:")]


def infer(server: ServerProcess, model: str, value: float) -> tuple[int, Any]:
    body = json.dumps(infer_body([value])).encode()
    status, answer, _ = server.request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
    return status, json.loads(answer)


def test_a_host_whose_memory_drifts_past_the_budget_is_recycled_without_losing_requests(
    tmp_path: Path, serve: Any
) -> None:
    repo = tmp_path / "repo"
    names = [f"m{i}" for i in range(6)]
    for name in names:
        toy_model(repo, name, parameters={"extra": {"leak_mb": LEAK}})
    (repo / "settings.json").write_text(json.dumps({"memory_budget": BUDGET, "lazy_load": True}))
    server = serve(repo)
    status, doc = infer(server, "m0", 0.0)
    assert status == 200, doc
    (first,) = hosts(server)
    # Its size with the runtime imported and one model loaded (and leaked) in it.
    start = first.memory_info().rss
    # Round robin over six models of which two fit the budget: every request loads its model
    # again (and leaks again), 30 loads in all: 240 MiB kept if nothing gave it back.
    for i in range(30):
        name = names[i % len(names)]
        status, doc = infer(server, name, float(i))
        assert status == 200 and output(doc, "y") == [float(i)], (name, doc)
    for host in hosts(server):
        # At most: what it held at start, the budget, the slack and one load in progress.
        assert host.memory_info().rss <= start + BUDGET + SLACK + LEAK * MIB, host
    assert recycles(server) >= 1
    wait_until(lambda: not running(first), message="the recycled host to stop")


def running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def recycles(server: ServerProcess) -> float:
    status, body, _ = server.request("GET", "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith("runtime_core_host_recycles_total "):
            return float(line.split()[1])
    return 0.0

"""Chaos: loads, unloads and reloads in a loop while inference runs and workers are killed.

Afterwards every response was either correct or a clean error, no process leaked,
and the server still answers.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import named_processes, toy_model

from runtime_core.testing import ServerProcess, wait_until

pytestmark = pytest.mark.e2e  # every test here starts real server processes

CLEAN_ERRORS = {503, 504}  # worker died / model reloading or unloaded / worker_timeout


def rc_processes(server: ServerProcess) -> list[tuple[str, psutil.Process]]:
    """The server's ``rc-*`` processes, each with its name read once (see named_processes)."""
    return [(name, proc) for name, proc in named_processes(server.pid) if name.startswith("rc-")]


def test_chaos_keeps_answers_correct_and_leaks_nothing(tmp_path: Path, serve: Any) -> None:
    # min_workers: every model keeps its two dedicated workers for the killer to hit.
    toy_model(tmp_path, "steady", parallel_workers=2, min_workers=2)
    toy_model(tmp_path, "churn", parallel_workers=2, min_workers=2)
    toy_model(tmp_path, "echoing", runtime="echo", parallel_workers=2, min_workers=2)
    server = serve(tmp_path)
    rng = random.Random(7)
    stop = threading.Event()
    problems: list[str] = []
    counts = {"ok": 0, "clean": 0}
    lock = threading.Lock()

    def client(model: str, seed: int) -> None:
        local = random.Random(seed)
        while not stop.is_set():
            values = [local.uniform(-1e3, 1e3) for _ in range(local.randint(1, 5))]
            body = {"inputs": [{"name": "x", "shape": [len(values)], "datatype": "FP64", "data": values}]}
            try:
                status, raw, _ = server.request(
                    "POST",
                    f"/v2/models/{model}/infer",
                    json.dumps(body).encode(),
                    {"Content-Type": "application/json"},
                    timeout=30,
                )
            except OSError as exc:
                problems.append(f"{model}: transport error {exc!r}")
                continue
            doc = json.loads(raw)
            with lock:
                if status == 200:
                    first = doc["outputs"][0]
                    if first["data"] != values:
                        problems.append(f"{model}: wrong answer {first['data']} for {values}")
                    counts["ok"] += 1
                elif status in CLEAN_ERRORS and set(doc) == {"error"} and "Traceback" not in doc["error"]:
                    counts["clean"] += 1
                else:
                    problems.append(f"{model}: unexpected {status} {doc}")

    def operator() -> None:
        while not stop.is_set():
            action = rng.choice(["reload", "unload", "load"])
            status, doc = server.post_json(f"/v2/repository/models/churn/{'unload' if action == 'unload' else 'load'}")
            if status not in (200, 404):  # 404: unloading a model that is already unloaded
                problems.append(f"repository {action}: {status} {doc}")
            time.sleep(0.2)

    def killer() -> None:
        while not stop.is_set():
            time.sleep(0.3)
            workers = [p for name, p in rc_processes(server) if name.startswith("rc-w")]
            if workers:
                victim = rng.choice(workers)
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    threads = [threading.Thread(target=client, args=(m, i)) for i, m in enumerate(["steady", "churn", "echoing"] * 2)]
    threads += [threading.Thread(target=operator), threading.Thread(target=killer)]
    for t in threads:
        t.start()
    time.sleep(12)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not problems, problems[:10]
    assert counts["ok"] > 100

    # Everything recovers: the churned model is loaded again, all answer, and the process
    # tree holds exactly one root template, one host per runtime and each model's workers.
    assert server.post_json("/v2/repository/models/churn/load")[0] == 200
    expected = ["rc-h"] * 2 + ["rc-r"] + ["rc-w"] * 6
    wait_until(
        lambda: sorted(name[:4] for name, _ in rc_processes(server)) == expected,
        20,
        f"the process tree {expected}",
    )
    for model in ("steady", "churn", "echoing"):
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
        assert server.post_json(f"/v2/models/{model}/infer", body)[0] == 200
    everything = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    assert server.stop() == 0
    _gone, alive = psutil.wait_procs(everything, timeout=10)
    assert not alive

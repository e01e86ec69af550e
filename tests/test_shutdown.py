"""Stopping under load: every call or request a client sent to a stopping server is answered.

Each test runs several rounds, one server each: clients keep sending while SIGTERM arrives, so
calls land before the signal, while the queue drains, and as the server stops listening.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from support import toy_model
from tritonclient.utils import InferenceServerException

from runtime_core.testing import ServerProcess, wait_until

ROUNDS = 4
CLIENTS = 8


def _slow_model(root: Path) -> None:
    # One worker, a short call: eight clients keep a queue, and the drain ends quickly, so the
    # clients' next calls arrive just as the server stops.
    toy_model(root, "slow", parallel_workers=1, parameters={"extra": {"sleep": 0.05}})


def _until_refused(send: Callable[[], str], outcomes: Counter[str], lock: threading.Lock) -> None:
    """Send calls one after another until one is not answered OK (as a client that takes
    "shutting down" for an answer would), counting each outcome."""
    while True:
        outcome = send()
        with lock:
            outcomes[outcome] += 1
        if outcome != "OK":
            return


def _load_and_stop(server: ServerProcess, clients: list[Callable[[], None]], outcomes: Counter[str]) -> None:
    threads = [threading.Thread(target=client) for client in clients]
    for thread in threads:
        thread.start()
    try:
        # Every client has been answered at least once: all of them are sending.
        wait_until(lambda: sum(outcomes.values()) >= 3 * len(clients), 60, "the clients under way")
    finally:
        server.proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert server.stop() == 0


def _grpc_round(server: ServerProcess) -> Counter[str]:
    """Eight gRPC clients, each on its own channel, sending until refused; SIGTERM meanwhile."""
    x = grpcclient.InferInput("x", [1], "FP64")
    x.set_data_from_numpy(np.array([3.0]))
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        channel = grpcclient.InferenceServerClient(url=server.grpc_url)

        def send() -> str:
            try:
                channel.infer("slow", [x], client_timeout=60)
                return "OK"
            except InferenceServerException as exc:
                return f"{exc.status()}: {exc.message()}"

        try:
            _until_refused(send, outcomes, lock)
        finally:
            channel.close()

    _load_and_stop(server, [client] * CLIENTS, outcomes)
    return outcomes


def test_grpc_calls_around_sigterm_are_answered_never_cancelled(tmp_path: Path, serve: Any) -> None:
    _slow_model(tmp_path)
    for _ in range(ROUNDS):
        outcomes = _grpc_round(serve(tmp_path))
        # A call the server took is answered, or refused as "shutting down"; a call that came
        # after the port closed fails to connect. No call is cancelled under the client.
        refused = {o for o in outcomes if o != "OK"}
        assert all(o.startswith("StatusCode.UNAVAILABLE: ") for o in refused), outcomes
        assert outcomes["OK"] >= 3 * CLIENTS

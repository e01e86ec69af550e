"""Stopping under load: every call or request a client sent to a stopping server is answered.

Each test runs several rounds, one server each: clients keep sending while SIGTERM arrives, so
calls land before the signal, while the queue drains, and as the server stops listening.
"""

from __future__ import annotations

import select
import signal
import socket
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from support import infer_body, toy_model
from tritonclient.utils import InferenceServerException

from runtime_core.testing import ServerProcess, wait_until

pytestmark = pytest.mark.e2e  # every test here starts real server processes

ROUNDS = 4
CLIENTS = 8


def _slow_model(root: Path) -> None:
    # One worker, a short call: eight clients keep a queue, and the drain ends quickly, so the
    # clients' next calls arrive just as the server stops.
    toy_model(root, "slow", parallel_workers=1, parameters={"extra": {"sleep": 0.05}})


def _until(send: Callable[[], str], outcomes: Counter[str], lock: threading.Lock, final: Callable[[str], bool]) -> None:
    """Send calls one after another until an outcome is ``final``, counting each outcome."""
    while True:
        outcome = send()
        with lock:
            outcomes[outcome] += 1
        if final(outcome):
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
    assert server.proc.wait(timeout=120) == 0


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
            # As a client that takes "shutting down" for an answer would.
            _until(send, outcomes, lock, lambda outcome: outcome != "OK")
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


# --------------------------------------------------------------------------- REST, keep-alive

_REQUEST_BODY = orjson.dumps(infer_body([3.0]))
_REQUEST = (
    b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_REQUEST_BODY), _REQUEST_BODY)
)


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this idle connection: the client can see that before it
    writes, so a request it then does not send is its own to retry."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def _response(sock: socket.socket) -> tuple[int, bool] | None:
    """Read one HTTP response: (status, whether the server closes the connection), or None if
    the connection ended (closed or reset) before a whole response came."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                return None
            body += chunk
    except ConnectionError:
        return None
    return int(lines[0].split(" ", 2)[1]), headers.get("connection", "").lower() == "close"


def _rest_round(server: ServerProcess) -> Counter[str]:
    """Eight keep-alive clients on raw sockets, each sending request after request, reconnecting
    when told ``Connection: close`` or when it sees the server closed its idle connection, until
    the port is closed; SIGTERM meanwhile."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        sock: socket.socket | None = None

        def send() -> str:
            nonlocal sock
            if sock is not None and _closed_by_server(sock):
                sock.close()
                sock = None
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
                except ConnectionRefusedError:
                    return "no listener"
            sock.sendall(_REQUEST)
            answer = _response(sock)
            if answer is None:
                return "unanswered"
            status, close = answer
            if close:
                sock.close()
                sock = None
            return "OK" if status == 200 else str(status)

        try:
            # A load generator that does not take no for an answer: it reconnects after every
            # 503 until the port is closed, so connections are busy when the server closes them.
            _until(send, outcomes, lock, lambda outcome: outcome in ("no listener", "unanswered"))
        finally:
            if sock is not None:
                sock.close()

    _load_and_stop(server, [client] * CLIENTS, outcomes)
    return outcomes


def test_keep_alive_requests_around_sigterm_are_all_answered(tmp_path: Path, serve: Any) -> None:
    _slow_model(tmp_path)
    for _ in range(ROUNDS):
        outcomes = _rest_round(serve(tmp_path, args=["--no-grpc"]))
        # Every request written to a connection the server had not closed got a response: the
        # result, or 503 "shutting down". "no listener": a new connection after the port closed.
        assert set(outcomes) <= {"OK", "503", "no listener"}, outcomes
        assert outcomes["OK"] >= 3 * CLIENTS

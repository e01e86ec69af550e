"""Test helpers for runtime authors (also a pytest plugin: ``pytest11`` entry point).

Start a real server process on free ports of 127.0.0.1 (``url`` for HTTP,
``grpc_url`` for gRPC), on a model repository folder, and talk to it::

    def test_my_runtime(tmp_path, rc_server):
        write_model(tmp_path / "m", runtime="my-runtime")
        server = rc_server(tmp_path)
        status, body = server.post_json("/v2/models/m/infer", {...})

``make_runtime`` builds and loads a runtime instance in the test process, through the
installed entry points, for unit tests of a runtime's ``load`` and ``predict``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from runtime_core.runtime import Runtime, RuntimeContext
from runtime_core.types import InferenceRequest, Tensor

T = TypeVar("T")

#: Flags for a headless Chromium that drives the status page (the browser tests, the
#: screenshot in the docs): nothing that reaches beyond the machine.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine of a runtime (``load``, ``predict``) to completion."""
    return asyncio.run(coro)


def make_runtime(
    folder: Path,
    settings: dict[str, Any],
    *,
    repository: Path | None = None,
    threads: int = 1,
    load: bool = True,
) -> Runtime:
    """Build a runtime instance the way the server does, without a server: write
    ``folder/model-settings.json`` from ``settings`` (``name`` defaults to the folder name;
    ``runtime`` is required), find the runtime through the installed entry points, resolve
    the artifact and, unless ``load=False``, load it."""
    from runtime_core.plugins import load_registry
    from runtime_core.settings import load_model_settings

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model-settings.json"
    path.write_text(json.dumps({"name": folder.name, **settings}))
    model_settings = load_model_settings(path)
    entry = load_registry().get(model_settings.runtime_name, model=model_settings.name)
    context = RuntimeContext(
        model_name=model_settings.name,
        version=model_settings.version,
        folder=folder,
        uri=model_settings.resolve_uri(repository or folder, entry.cls.artifact_names),
        threads=threads,
        worker_index=None,
    )
    runtime = entry.cls(model_settings, context)
    if load:
        run(runtime.load())
    return runtime


def predict_outputs(runtime: Runtime, request: InferenceRequest) -> dict[str, Tensor]:
    """``runtime.predict(request)``'s outputs by name."""
    return {t.name: t for t in run(runtime.predict(request)).outputs}


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail with
    ``message`` (and the last exception the predicate raised, if any) after ``timeout``
    seconds. The one way tests wait for a condition: never a sleep of a guessed length."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = None
        except Exception as exc:  # the condition may not be observable yet (process gone, ...)
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}") from last
        time.sleep(0.02)


#: Ports this process has handed out: never handed out twice.
_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A free TCP port of 127.0.0.1 that this process has not handed out before. The kernel
    may offer a port again as soon as the probing socket closes, so a server given the
    same port as another (say its HTTP port as another's gRPC port) would fail to bind, or
    worse, a test would talk to the wrong server."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def write_model(folder: Path, **settings: Any) -> Path:
    """Write ``folder/model-settings.json`` from keyword arguments; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder


class ServerProcess:
    """A ``runtime-core start`` child process."""

    def __init__(
        self,
        repository: Path,
        *,
        workers: int | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        wait: bool = True,
        timeout: float = 120.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = free_port()
        #: ``host:port`` of the gRPC endpoint, as gRPC clients take it.
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        cmd = [sys.executable, "-m", "runtime_core.cli", "start", str(repository), "--host", "127.0.0.1"]
        cmd += ["--http-port", str(self.port), "--grpc-port", str(self.grpc_port)]
        if workers is not None:
            cmd += ["--parallel-workers", str(workers)]
        cmd += args or []
        full_env = dict(os.environ)
        full_env.update(env or {})
        # A file, not a pipe: a pipe that nobody reads would block a chatty server.
        self._log = tempfile.TemporaryFile("w+")
        self._final = ""
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, text=True)
        if wait:
            try:
                self.wait_ready(timeout)
            except BaseException:
                self.stop()  # a server that never got ready is not left running
                raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                status, _ = self.get("/v2/health/ready", timeout=2.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.output()}")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read(), dict(err.headers)

    def get(self, path: str, timeout: float = 60.0) -> tuple[int, Any]:
        status, body, _ = self.request("GET", path, timeout=timeout)
        return status, json.loads(body) if body else None

    def post_json(self, path: str, doc: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        data = b"" if doc is None else json.dumps(doc).encode()
        status, body, _ = self.request("POST", path, data, {"Content-Type": "application/json"}, timeout=timeout)
        return status, json.loads(body) if body else None

    def output(self) -> str:
        """Everything the server (and its workers) printed so far."""
        if self._log.closed:
            return self._final
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self._log.closed:
            self._final = self.output()
            self._log.close()
        return self.proc.returncode


@pytest.fixture
def rc_server() -> Iterator[Any]:
    """Factory fixture: ``rc_server(repository, workers=None, env=None)`` starts a server;
    every server started is stopped after the test."""
    started: list[ServerProcess] = []

    def start(repository: Path, **kwargs: Any) -> ServerProcess:
        server = ServerProcess(repository, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()

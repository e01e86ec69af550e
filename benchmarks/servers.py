"""Start and stop the servers under test: runtime-core and MLServer, on 127.0.0.1 only.

Both are used as context managers so that every server started is stopped
(SIGTERM, then SIGKILL of the whole process group) even on Ctrl-C or an error::

    with RuntimeCoreServer(repo) as server:
        print(server.url, server.ready_seconds)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from measure import read_stat, tree_stats, wait_ready

#: MLServer 1.7.1's ``mlserver`` command, in a virtual environment of its own: ``MLSERVER_BIN``,
#: else ``mlserver`` on PATH (benchmarks/README.md says how to install it).
MLSERVER_BIN = Path(os.environ.get("MLSERVER_BIN") or shutil.which("mlserver") or "mlserver")
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class _Server:
    """A server child process in its own process group, logging to a temporary file."""

    name = "server"

    def __init__(self, repo: Path, *, timeout: float = 180.0) -> None:
        self.repo = repo
        self.timeout = timeout
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.grpc_port = free_port()
        #: ``host:port`` of the server's V2 gRPC endpoint.
        self.grpc_target = f"{HOST}:{self.grpc_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds = 0.0
        self.leftovers = 0  # processes of the tree still alive after the server's own exit
        self._log = tempfile.NamedTemporaryFile("w+b", prefix=f"bench-{self.name}-", suffix=".log", delete=False)

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> _Server:
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            cwd=self.repo,
            # Its own process group, so that killpg reaches every child; but the benchmark's
            # session, so that the server and the load generators share one autogroup as the
            # server's own processes do (a client on another machine does not compete with
            # the server's processes as a group of its own).
            process_group=0,
        )
        try:
            self.ready_seconds = wait_ready(
                self.url + "/v2/health/ready",
                started,
                self.timeout,
                lambda: self.proc is not None and self.proc.poll() is None,
            )
        except BaseException:
            self.stop()
            tail = self.log_tail()
            self._log.close()
            raise RuntimeError(f"{self.name} did not become ready (log: {self._log.name}); tail:\n{tail}") from None
        return self

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        text = Path(self._log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        tree = [(s.pid, s.starttime) for s in tree_stats(proc.pid)]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        # Children that outlived their parent (they should not): its process group, then by
        # pid (runtime-core's zygotes run in sessions of their own), if still the same process.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            proc.wait()
        if len(tree) > 1:
            time.sleep(0.2)  # let orphans that exit on their own (parent-death signal) go first
        for pid, starttime in tree:
            still = read_stat(pid)
            if still is not None and still.starttime == starttime and still.state != "Z" and pid != proc.pid:
                self.leftovers += 1
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> _Server:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        self._log.close()
        if t is None:
            os.unlink(self._log.name)
        else:
            print(f"[servers] {self.name} log kept at {self._log.name}", file=sys.stderr, flush=True)


class RuntimeCoreServer(_Server):
    """``runtime-core start REPO`` with this interpreter (the benchmark's own venv); with
    ``python_path``, that folder is the server's ``PYTHONPATH`` (a plugin's site, or another
    revision's ``runtime_core``, which is then imported instead of this tree's)."""

    name = "runtime-core"

    def __init__(
        self,
        repo: Path,
        *,
        workers: int | None = None,
        extra_args: list[str] | None = None,
        python_path: Path | None = None,
        **kw: float,
    ):
        super().__init__(repo, **kw)
        self.workers = workers
        self.extra_args = extra_args or []
        self.python_path = python_path

    def environment(self) -> dict[str, str]:
        env = super().environment()
        if self.python_path is not None:
            env["PYTHONPATH"] = str(self.python_path)
        return env

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "runtime_core.cli", "start", str(self.repo), "--host", HOST]
        cmd += ["--http-port", str(self.port), "--grpc-port", str(self.grpc_port)]
        if self.workers is not None:
            cmd += ["--parallel-workers", str(self.workers)]
        return cmd + self.extra_args


class MLServerServer(_Server):
    """``mlserver start REPO`` (MLServer 1.7.1 from its own venv).

    Writes ``REPO/settings.json``: free HTTP/gRPC/metrics ports, server-wide
    ``parallel_workers``, metrics and environments dirs inside a temp dir, and
    ``debug: false`` (no per-request access log: MLServer's best case)."""

    name = "mlserver"

    def __init__(self, repo: Path, *, parallel_workers: int = 1, **kw: float) -> None:
        super().__init__(repo, **kw)
        self.parallel_workers = parallel_workers
        self._scratch = Path(tempfile.mkdtemp(prefix="bench-mlserver-"))

    def command(self) -> list[str]:
        settings = {
            "host": HOST,
            "http_port": self.port,
            "grpc_port": self.grpc_port,
            "metrics_port": free_port(),
            "parallel_workers": self.parallel_workers,
            "metrics_dir": str(self._scratch / "metrics"),
            "environments_dir": str(self._scratch / "envs"),
            "debug": False,
        }
        (self.repo / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        return [str(MLSERVER_BIN), "start", str(self.repo)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = f"{MLSERVER_BIN.parent}:{env.get('PATH', '')}"
        env["PYTHONPATH"] = ""
        return env

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self._scratch, ignore_errors=True)


def mlserver_available() -> bool:
    return MLSERVER_BIN.is_file()

"""The command line: help texts, errors before serving, progress lines, and clean stops."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from runtime_core.testing import ServerProcess, write_model

SCRIPT = Path(sys.executable).with_name("runtime-core")


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``runtime-core ARGS`` through the installed console script (or ``-m`` without one)."""
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "runtime_core.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTIME_CORE_", "MLSERVER_"))}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_help_lists_commands() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    for word in ("start", "runtimes", "--version", "V2"):
        assert word in result.stdout


def test_no_command_prints_help() -> None:
    result = _cli()
    assert result.returncode == 2
    assert "start" in result.stdout and "runtimes" in result.stdout


def test_start_help_mentions_flags_and_sources() -> None:
    result = _cli("start", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for word in (
        "MODEL_REPOSITORY",
        "--host",
        "--http-port",
        "--parallel-workers",
        "--log-level",
        "settings.json",
        "RUNTIME_CORE_",
        "SIGTERM",
    ):
        assert word in text, word


def test_runtimes_help_and_listing() -> None:
    result = _cli("runtimes", "--help")
    assert result.returncode == 0
    assert "entry-point" in result.stdout
    result = _cli("runtimes")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["RUNTIME", "ALIASES", "DISTRIBUTION", "VERSION"]
    names = {line.split()[0] for line in lines[1:]}
    assert {"echo", "sklearn", "xgboost"} <= names
    assert "mlserver_sklearn.SKLearnModel" in result.stdout
    assert "mlserver_xgboost.XGBoostModel" in result.stdout


def test_version() -> None:
    result = _cli("--version")
    assert result.returncode == 0
    assert re.match(r"runtime-core \d+\.\d+", result.stdout)


def test_missing_repository_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    result = _cli("start", str(missing))
    assert result.returncode == 2
    assert f"model repository {missing} is not a folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flag_value_exits_2(tmp_path: Path) -> None:
    result = _cli("start", str(tmp_path), "--http-port", "eighty")
    assert result.returncode == 2
    assert "--http-port" in result.stderr and "invalid int value" in result.stderr


def test_busy_port_exits_1(tmp_path: Path) -> None:
    write_model(tmp_path / "echo", runtime="echo", parallel_workers=0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _cli("start", str(tmp_path), "--host", "127.0.0.1", "--http-port", str(port))
    assert result.returncode == 1
    assert f"runtime-core: cannot listen on 127.0.0.1:{port}:" in result.stderr
    assert "Traceback" not in result.stderr
    assert "ready at" not in result.stdout


def test_progress_line_per_model_then_ready_line(tmp_path: Path) -> None:
    write_model(tmp_path / "alpha", runtime="echo", parallel_workers=0)
    write_model(tmp_path / "beta", runtime="echo", parallel_workers=1)
    write_model(tmp_path / "gamma", runtime="no-such-runtime")
    server = ServerProcess(tmp_path, wait=False)
    try:
        server.wait_ready()
        lines = [line for line in server.output().splitlines() if line.strip()]
    finally:
        assert server.stop() == 0
    model_lines = [line for line in lines if line.startswith(("  loaded ", "  FAILED "))]
    assert len(model_lines) == 3, lines
    assert re.search(r"^  loaded  alpha \(echo\) in \d+\.\d\d s$", "\n".join(model_lines), re.M)
    assert re.search(r"^  loaded  beta \(echo\) in \d+\.\d\d s$", "\n".join(model_lines), re.M)
    failed = next(line for line in model_lines if "gamma" in line)
    assert failed.startswith("  FAILED  gamma (no-such-runtime): ")
    assert "not installed" in failed
    ready = [line for line in lines if "ready at" in line]
    assert ready == [f"runtime-core ready at http://127.0.0.1:{server.port} (2 models ready, 1 unavailable)"]
    assert lines.index(ready[0]) > max(lines.index(line) for line in model_lines)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    write_model(tmp_path / "pooled", runtime="echo", parallel_workers=2)
    write_model(tmp_path / "inline", runtime="echo", parallel_workers=0)
    family: list[psutil.Process] = []
    server = ServerProcess(tmp_path, wait=False)
    try:
        server.wait_ready()
        status, _ = server.post_json(
            "/v2/models/pooled/infer", {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}]}
        )
        assert status == 200
        family = psutil.Process(server.pid).children(recursive=True)
        assert len(family) >= 3  # the zygote and two workers
    finally:
        code = server.stop(sig)
    assert code == 0, server.output()
    _gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, [p.pid for p in alive]
    output = server.output()
    assert "runtime-core: stopping" in output and "runtime-core: stopped" in output
    assert "Traceback" not in output

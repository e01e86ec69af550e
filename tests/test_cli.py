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

pytestmark = pytest.mark.e2e  # every test here starts real server processes

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
    assert ready == [
        f"runtime-core ready at http://127.0.0.1:{server.port} and grpc://127.0.0.1:{server.grpc_port}"
        " (2 models ready, 1 unavailable)"
    ]
    assert lines.index(ready[0]) > max(lines.index(line) for line in model_lines)


def test_ready_line_names_the_address_it_listens_on(tmp_path: Path) -> None:
    write_model(tmp_path / "alpha", runtime="echo", parallel_workers=0)
    # The last --host wins: every interface, as in a container.
    server = ServerProcess(tmp_path, args=["--host", "0.0.0.0", "--no-grpc"])
    try:
        ready = [line for line in server.output().splitlines() if "ready at" in line]
    finally:
        assert server.stop() == 0
    assert ready == [
        f"runtime-core ready at http://0.0.0.0:{server.port}, all interfaces; "
        f"from this machine http://127.0.0.1:{server.port} (1 model ready)"
    ]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    write_model(tmp_path / "pooled", runtime="echo", parallel_workers=2, min_workers=2)
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
        assert len(family) >= 4  # the root, the echo runtime's host and two workers
    finally:
        code = server.stop(sig)
    assert code == 0, server.output()
    _gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, [p.pid for p in alive]
    output = server.output()
    assert "runtime-core: stopping" in output and "runtime-core: stopped" in output
    assert "Traceback" not in output
    assert " ERROR " not in output, output  # a clean stop logs no error (nor a dropped exception)


def test_other_systems_fail_with_one_line(tmp_path: Path) -> None:
    # The module is imported first (as the console script does), then the platform is changed.
    code = "import sys; from runtime_core.cli import main; sys.platform = 'darwin'; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, "start", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == "runtime-core: the server runs on Linux only, not on darwin\n"


WARNING = "anyone who can reach the port can load and unload models"


@pytest.mark.parametrize(
    ("host", "env", "warned"),
    [
        ("0.0.0.0", {}, True),
        ("0.0.0.0", {"RUNTIME_CORE_REPOSITORY_TOKEN": "s3cret"}, False),
        ("0.0.0.0", {"RUNTIME_CORE_REPOSITORY_API": "false"}, False),
        ("127.0.0.1", {}, False),
    ],
)
def test_open_repository_api_on_a_public_address_warns_once(
    tmp_path: Path, host: str, env: dict[str, str], warned: bool
) -> None:
    server = ServerProcess(tmp_path, args=["--host", host], env=env)
    try:
        lines = [line for line in server.output().splitlines() if WARNING in line]
        assert len(lines) == (1 if warned else 0), server.output()
        if warned:
            assert "s3cret" not in lines[0] and "repository_token" in lines[0]
    finally:
        server.stop()


def test_models_load_only_through_the_api_when_asked(tmp_path: Path) -> None:
    write_model(tmp_path / "echo", runtime="echo", parallel_workers=0)
    (tmp_path / "settings.json").write_text('{"load_models_at_startup": false}')
    server = ServerProcess(tmp_path)
    try:
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]}
        status, _ = server.post_json("/v2/models/echo/infer", body)
        assert status == 404
        status, doc = server.post_json("/v2/repository/models/echo/load")
        assert status == 200, doc
        status, doc = server.post_json("/v2/models/echo/infer", body)
        assert (status, doc["outputs"][0]["data"]) == (200, [1.5])
    finally:
        server.stop()


def test_untrained_examples_say_what_to_run(tmp_path: Path) -> None:
    """A fresh clone has no example model files: each example model says what to run."""
    examples = Path(__file__).resolve().parent.parent / "examples" / "models"
    for settings in examples.glob("*/model-settings.json"):
        (tmp_path / settings.parent.name).mkdir()
        (tmp_path / settings.parent.name / settings.name).write_text(settings.read_text())
    server = ServerProcess(tmp_path, workers=0)
    try:
        failed = [line for line in server.output().splitlines() if "FAILED" in line]
        assert len(failed) == 3, server.output()
        assert all("examples/train_models.py" in line for line in failed), failed
    finally:
        server.stop()


def test_progress_lines_are_bounded_with_many_models(tmp_path: Path) -> None:
    """Issue 23: a line per model for the first PROGRESS_LINES, then one per PROGRESS_EVERY."""
    from runtime_core import cli

    lines: list[str] = []
    original = cli._say
    try:
        cli._say = lambda message, **kw: lines.append(message)  # type: ignore[assignment]
        cli._loaded = 0
        for i in range(2 * cli.PROGRESS_EVERY + 5):
            cli._progress(f"m{i}", "echo", 0.0, None)
        cli._progress("bad", "echo", 0.0, "broken")
    finally:
        cli._say = original  # type: ignore[assignment]
        cli._loaded = 0
    assert len([line for line in lines if line.startswith("  loaded ")]) == cli.PROGRESS_LINES
    assert [line for line in lines if line.startswith("  ...")] == [
        f"  ... {cli.PROGRESS_EVERY} models ready",
        f"  ... {2 * cli.PROGRESS_EVERY} models ready",
    ]
    assert lines[-1].startswith("  FAILED  bad (echo)")

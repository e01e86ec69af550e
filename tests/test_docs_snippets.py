"""Shell snippets of the docs, run as written (paths and ports swapped for the test's)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import joblib
import pytest
import xgboost
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from runtime_core.testing import free_port, wait_until

pytestmark = pytest.mark.e2e  # every test here starts real server processes

ROOT = Path(__file__).resolve().parent.parent


def _shell_block(doc: Path, heading: str) -> list[str]:
    """The commands of the first ``shell`` block under ``heading``, comments left out."""
    section = doc.read_text().split(f"\n{heading}\n", 1)[1]
    block = re.search(r"```shell\n(.*?)```", section, re.S)
    assert block is not None, heading
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_the_repository_token_snippet_works_as_written(tmp_path: Path) -> None:
    lines = _shell_block(ROOT / "docs" / "operations.md", "## Repository API: disable it or require a token")
    assert len(lines) == 3, lines
    # The example repository, with its models trained here.
    models = tmp_path / "examples" / "models"
    shutil.copytree(ROOT / "examples" / "models", models, ignore=shutil.ignore_patterns("model.*"))
    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), models / "iris-sklearn" / "model.joblib")
    xgboost.XGBClassifier(n_estimators=2, n_jobs=1).fit(x, y).save_model(models / "iris-xgboost" / "model.json")
    secret = tmp_path / "rc-token"
    secret.write_text("s3cret-for-the-test")
    port = free_port()

    def as_here(line: str) -> str:
        return line.replace("/run/secrets/rc-token", str(secret)).replace("localhost:8080", f"127.0.0.1:{port}")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTIME_CORE_", "MLSERVER_"))}
    env.update({"RUNTIME_CORE_HTTP_PORT": str(port), "RUNTIME_CORE_GRPC_ENABLED": "false"})
    env["RUNTIME_CORE_HOST"] = "127.0.0.1"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    start = as_here(lines[1]).removesuffix("&").strip()
    # Its own process group: SIGTERM reaches the shell and the server it runs.
    server = subprocess.Popen(
        ["bash", "-c", f"{as_here(lines[0])}\n{start}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: server.poll() is None and _ready(port), 60, "the server started by the snippet")
        curl = f"{as_here(lines[2])} --silent --output /dev/null --write-out '%{{http_code}}'"
        answer = subprocess.run(["bash", "-c", f"{as_here(lines[0])}\n{curl}"], capture_output=True, text=True)
        assert answer.stdout == "200", answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        assert server.wait(60) == 0

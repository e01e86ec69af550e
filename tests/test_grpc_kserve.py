"""KServe's gRPC client against runtime-core, in a pytest process of its own.

KServe's and tritonclient's generated protobuf modules both register ``inference.*``
symbols, so importing both in one process fails with "duplicate symbol"; and KServe's SDK
cannot share an environment with MLServer (see ``kserve_python`` in conftest.py). The KServe
checks live in tests/kserve_grpc/ and run here, through a separate ``pytest`` invocation in
KServe's environment, against a server started from this one, so the single test command
still runs them.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from runtime_core.testing import ServerProcess, write_model

pytestmark = pytest.mark.e2e  # every test here starts real server processes

HERE = Path(__file__).parent


def test_kserve_inference_grpc_client(tmp_path: Path, kserve_python: Path) -> None:
    write_model(tmp_path / "repo" / "echo", name="echo", runtime="echo")
    server = ServerProcess(tmp_path / "repo", workers=1)
    try:
        result = subprocess.run(
            [
                # Not this project's pytest configuration nor its conftest.py: they need runtime-core.
                str(kserve_python),
                "-m",
                "pytest",
                "-q",
                "-c",
                os.devnull,
                "--rootdir",
                str(HERE / "kserve_grpc"),
                "--noconftest",
                "-p",
                "no:cacheprovider",
                "-rs",
                f"--basetemp={tmp_path / 'kserve'}",
                str(HERE / "kserve_grpc" / "check_kserve_client.py"),
            ],
            cwd=HERE / "kserve_grpc",
            env={**os.environ, "RC_GRPC_TARGET": server.grpc_url},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 25, summary
    assert "failed" not in summary and "error" not in summary, summary

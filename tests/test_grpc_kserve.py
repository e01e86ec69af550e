"""KServe's gRPC client against runtime-core, in a pytest process of its own.

KServe's and tritonclient's generated protobuf modules both register ``inference.*``
symbols, so importing both in one process fails with "duplicate symbol". The KServe
checks live in tests/kserve_grpc/ and run here, through a separate ``pytest``
invocation, so the single test command still runs them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_kserve_inference_grpc_client(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
            f"--basetemp={tmp_path / 'kserve'}", str(HERE / "kserve_grpc" / "check_kserve_client.py"),
        ],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 25, summary
    assert "failed" not in summary and "error" not in summary, summary

"""``--watch`` with a broken file: the model keeps serving its previous version, and the log
says so in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from runtime_core.testing import ServerProcess, wait_until, write_model

pytestmark = pytest.mark.e2e  # every test here starts real server processes


def test_a_corrupt_artifact_under_watch_is_one_line_and_the_old_version_serves(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    folder = write_model(tmp_path / "iris", name="iris", runtime="sklearn", parallel_workers=1)
    artifact = folder / "model.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), artifact)
    server = ServerProcess(tmp_path, args=["--watch"], env={"RUNTIME_CORE_WATCH_INTERVAL": "0.2"})
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": x[0].tolist()}]}

    def predicted() -> Any:
        status, doc = server.post_json("/v2/models/iris/infer", body)
        assert status == 200, doc
        return doc["outputs"][0]["data"]

    try:
        assert predicted() == [int(y[0])]
        artifact.write_bytes(b"\x80\x04this is not a pickle at all")
        line = wait_until(
            lambda: next((s for s in server.output().splitlines() if "reload failed" in s), None),
            60,
            "the failed reload in the log",
        )
        assert predicted() == [int(y[0])]
        status, index = server.post_json("/v2/repository/index", {})
        assert status == 200
        assert [(m["name"], m["state"]) for m in index] == [("iris", "READY")]
    finally:
        assert server.stop() == 0
    output = server.output()
    assert "ERROR" in line or "WARNING" in line
    assert "model 'iris'" in line and str(artifact) in line and "previous version keeps serving" in line
    # One line: no traceback (that is for log_level debug), no start-up style FAILED line, and
    # no other line about the failure.
    assert "Traceback" not in output, output
    assert "  FAILED" not in output, output
    lines = [s for s in output.splitlines() if "iris" in s and ("fail" in s.lower() or "error" in s.lower())]
    assert lines == [line], output


def test_the_traceback_of_a_failed_reload_is_at_debug(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    folder = write_model(tmp_path / "iris", name="iris", runtime="sklearn", parallel_workers=1)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), folder / "model.joblib")
    server = ServerProcess(
        tmp_path, args=["--watch", "--log-level", "debug"], env={"RUNTIME_CORE_WATCH_INTERVAL": "0.2"}
    )
    try:
        (folder / "model.joblib").write_bytes(b"\x80\x04this is not a pickle at all")
        wait_until(lambda: "reload failed" in server.output(), 60, "the failed reload in the log")
        wait_until(lambda: "Traceback" in server.output(), 30, "the traceback at debug")
    finally:
        assert server.stop() == 0

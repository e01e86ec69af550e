"""Plain helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psutil

from runtime_core.testing import ServerProcess, write_model


def toy_model(root: Path, name: str, runtime: str = "toy-identity", **settings: Any) -> Path:
    """Write a toy model folder ``root/name``."""
    return write_model(root / name, name=name, runtime=runtime, **settings)


def infer_body(values: list[float], **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "x", "shape": [len(values)], "datatype": "FP64", "data": values}]}
    if parameters:
        body["parameters"] = parameters
    return body


def output(doc: dict[str, Any], name: str) -> list[Any]:
    for out in doc["outputs"]:
        if out["name"] == name:
            return list(out["data"])
    raise KeyError(name)


def named_processes(pid: int) -> list[tuple[str, psutil.Process]]:
    """Descendants of ``pid`` with their names, each read once. A worker may exit between
    the walk and the question (tests kill them), so a process that vanished is skipped
    rather than raising ``NoSuchProcess``; callers never ask a process its name again."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in children:
        try:
            found.append((proc.name(), proc))
        except psutil.NoSuchProcess:
            continue
    return found


def metric(server: ServerProcess, name: str, model: str) -> float:
    """The value of ``runtime_core_<name>`` (or its ``_total``) for ``model`` on ``/metrics``; 0
    when the series does not exist yet."""
    status, body, _ = server.request("GET", "/metrics")
    assert status == 200
    pattern = re.compile(rf'^runtime_core_{name}(?:_total)?\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$', re.M)
    found = pattern.search(body.decode())
    return float(found.group(1)) if found else 0.0

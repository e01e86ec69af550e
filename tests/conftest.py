"""Shared fixtures: real server processes, a pip-installed toy plugin, tiny models."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime_core.testing import CHROMIUM_ARGS, ServerProcess

HERE = Path(__file__).parent


def pip_install_target(source: Path, target: Path) -> Path:
    """``pip install`` a plugin folder into ``target`` (a real wheel build and install)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage_per_module() -> Iterator[None]:
    """What a module's tests leave in reference cycles (an unclosed socket, say) is collected
    when the module ends, so that its ResourceWarning fails that module's last test, not
    whichever later test the collector happens to run in."""
    yield
    gc.collect()


#: KServe's SDK, in a virtual environment of its own: kserve 0.21 needs starlette >= 1.3.1, while
#: MLServer 1.7 (which runtimes/mlserver runs) pins fastapi < 0.116 and so starlette < 0.47, and
#: one environment cannot hold both. Built on first use, kept (under .cache/, ignored by git)
#: for the next runs; the tests that need it run their KServe code in that Python.
KSERVE_REQUIREMENTS = ["kserve==0.21.0", "pytest>=8", "pyyaml>=6.0"]
KSERVE_VENV = HERE.parent / ".cache" / "kserve-venv"


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """A Python that can import KServe's SDK (see ``KSERVE_REQUIREMENTS``)."""
    python = KSERVE_VENV / "bin" / "python"
    stamp = KSERVE_VENV / "requirements.txt"
    wanted = "\n".join(KSERVE_REQUIREMENTS) + "\n"
    if not (python.exists() and stamp.exists() and stamp.read_text() == wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(KSERVE_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *KSERVE_REQUIREMENTS],
            check=True,
        )
        stamp.write_text(wanted)
    return python


@pytest.fixture(scope="session")
def toy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the pip-installed ``rc-toy-runtimes`` distribution."""
    return pip_install_target(HERE / "toy_plugin", tmp_path_factory.mktemp("toy-site"))


@pytest.fixture
def toy_env(toy_site: Path) -> dict[str, str]:
    """Environment for a server that should see the toy plugin."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(toy_site) + (os.pathsep + path if path else "")}


@pytest.fixture
def serve(toy_env: dict[str, str]) -> Iterator[Any]:
    """``serve(repository, workers=None, env=None, args=None)``: a server that sees the toy plugin.
    Servers are stopped after the test."""
    started: list[ServerProcess] = []

    def start(repository: Path, **kwargs: Any) -> ServerProcess:
        env = dict(toy_env)
        env.update(kwargs.pop("env", None) or {})
        server = ServerProcess(repository, env=env, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (Debian's ``chromium``, or ``RUNTIME_CORE_CHROMIUM``) driven by
    Playwright, one per test module."""
    chromium_path = os.environ.get("RUNTIME_CORE_CHROMIUM", "/usr/bin/chromium")
    if shutil.which(chromium_path) is None:
        pytest.fail(f"{chromium_path} is missing: install Debian's chromium package (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()

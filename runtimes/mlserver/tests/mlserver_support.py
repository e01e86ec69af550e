"""Model folders as an MLServer user has them, and MLServer itself (in-process) to compare with.

A module of helpers, not a conftest.py: the core's tests import their own ``conftest``."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

CODE = Path(__file__).parent / "model_code"


def mlserver_model(root: Path, name: str, module: str, implementation: str, **settings: Any) -> Path:
    """``root/name`` with ``module``'s source beside a ``model-settings.json`` naming ``implementation``."""
    folder = root / name
    folder.mkdir(parents=True)
    if module:
        shutil.copy(CODE / f"{module}.py", folder / f"{module}.py")
    settings = {"name": name, "implementation": implementation, **settings}
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder


def lightgbm_model(root: Path, name: str) -> tuple[Path, np.ndarray]:
    """An mlserver-lightgbm model folder holding a booster trained here, and rows to ask it."""
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.float64)
    params = {"objective": "binary", "num_leaves": 4, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=5)
    folder = root / name
    folder.mkdir(parents=True)
    booster.save_model(str(folder / "model.bst"))
    settings = {"name": name, "implementation": "mlserver_lightgbm.LightGBMModel", "parameters": {"uri": "./model.bst"}}
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder, x[:3].astype(np.float32)


def mlserver_reference(folder: Path, asks: list[tuple[str, dict[str, Any], dict[str, str]]]) -> list[dict[str, Any]]:
    """What MLServer 1.7 itself answers (its own FastAPI app, data plane and registry) to each
    ``(path, body, headers)`` POSTed for the model in ``folder``. Run in a child process:
    MLServer's generated protobuf module and tritonclient's (which the tests use) define the
    same ``inference.*`` messages and cannot both be imported in one process."""
    job = json.dumps({"folder": str(folder), "asks": asks})
    done = subprocess.run(
        [sys.executable, __file__], input=job, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    answers: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return answers


async def _ask_mlserver(folder: Path, asks: list[tuple[str, dict[str, Any], dict[str, str]]]) -> list[Any]:
    import httpx
    from mlserver.handlers import DataPlane, ModelRepositoryHandlers
    from mlserver.registry import MultiModelRegistry
    from mlserver.repository import SchemalessModelRepository
    from mlserver.repository.load import load_model_settings
    from mlserver.rest.app import create_app
    from mlserver.settings import Settings

    settings = Settings(model_repository_root=str(folder.parent), load_models_at_startup=False)
    registry = MultiModelRegistry()
    await registry.load(load_model_settings(str(folder / "model-settings.json")))
    handlers = ModelRepositoryHandlers(SchemalessModelRepository(str(folder.parent)), registry)
    app = create_app(settings, DataPlane(settings, registry), handlers)
    answers = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mlserver") as client:
        for path, body, headers in asks:
            response = await client.post(path, json=body, headers=headers)
            assert response.status_code == 200, response.text
            answers.append(response.json())
    return answers


def process_names(pid: int) -> list[str]:
    """The kernel names (``rc-h:mlserver``, ``rc-w0:<model>``) of ``pid``'s descendants; a
    process that exits during the walk is skipped."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    names = []
    for child in children:
        try:
            names.append(child.name())
        except psutil.NoSuchProcess:
            continue
    return names


if __name__ == "__main__":  # the child process of mlserver_reference()
    request = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(_ask_mlserver(Path(request["folder"]), request["asks"]))))

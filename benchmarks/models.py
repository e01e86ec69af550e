"""Benchmark models: trained deterministically, cached, and written as model folders.

Models (all binary classifiers on 20 features from ``make_classification``):

* ``light``: LogisticRegression -- a ~20 us predict; measures server overhead.
* ``heavy``: RandomForestClassifier(300 trees, max_depth=12) -- CPU-bound predict.
* ``xgb``:   XGBClassifier(200 trees, max_depth=6), saved as ``model.json``.
* ``sleepy``: :class:`sleepy.Sleepy` -- every predict sleeps 1 s and uses no CPU (its
  servers need this folder on ``PYTHONPATH`` to unpickle it).

Trained artifacts are cached in ``benchmarks/.cache`` (keyed by library versions);
:func:`write_model` writes a model folder (``model-settings.json`` + a hard link to,
or copy of, the artifact) for runtime-core or, with ``flavor="mlserver"``, for
MLServer (``implementation`` + ``parameters.uri``).

Usage: ``python benchmarks/models.py OUT_DIR [--mlserver] [--workers N]`` writes all three.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
N_FEATURES = 20
SEED = 0
N_SAMPLES = 5000


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    artifact: str  # file name in the model folder
    runtime: str  # runtime-core runtime
    implementation: str  # MLServer implementation
    rows: int  # rows per benchmark request


SPECS: dict[str, ModelSpec] = {
    "light": ModelSpec("light", "model.joblib", "sklearn", "mlserver_sklearn.SKLearnModel", 1),
    "heavy": ModelSpec("heavy", "model.joblib", "sklearn", "mlserver_sklearn.SKLearnModel", 64),
    "xgb": ModelSpec("xgb", "model.json", "xgboost", "mlserver_xgboost.XGBoostModel", 64),
    "sleepy": ModelSpec("sleepy", "model.joblib", "sklearn", "mlserver_sklearn.SKLearnModel", 1),
}

#: Seconds every call of the ``sleepy`` model sleeps.
SLEEPY_SECONDS = 1.0


def dataset() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=N_SAMPLES, n_features=N_FEATURES, n_informative=10, n_redundant=4, random_state=SEED
    )
    return x.astype(np.float32), y


def _versions() -> str:
    import sklearn
    import xgboost

    return f"sk{sklearn.__version__}-xgb{xgboost.__version__}"


def artifact_path(name: str) -> Path:
    """The cached artifact of model ``name``, trained on first use."""
    spec = SPECS[name]
    stem = f"{name}-{_versions()}" + (f"-{SLEEPY_SECONDS:g}s" if name == "sleepy" else "")
    path = CACHE / stem / spec.artifact
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    x, y = dataset()
    tmp = path.with_suffix(".tmp" + path.suffix)
    print(f"[models] training {name} ...", flush=True)
    if name == "light":
        import joblib
        from sklearn.linear_model import LogisticRegression

        joblib.dump(LogisticRegression(max_iter=1000, random_state=SEED).fit(x, y), tmp)
    elif name == "heavy":
        import joblib
        from sklearn.ensemble import RandomForestClassifier

        forest = RandomForestClassifier(n_estimators=300, max_depth=12, random_state=SEED, n_jobs=-1).fit(x, y)
        forest.set_params(n_jobs=None)  # serve single-threaded per request, like a default-built model
        joblib.dump(forest, tmp)
    elif name == "xgb":
        from xgboost import XGBClassifier

        XGBClassifier(n_estimators=200, max_depth=6, random_state=SEED, tree_method="hist").fit(x, y).save_model(tmp)
    elif name == "sleepy":
        import joblib
        from sleepy import Sleepy  # pickled as sleepy.Sleepy: the servers import it by that name

        joblib.dump(Sleepy(seconds=SLEEPY_SECONDS).fit(x, y), tmp)
    else:  # pragma: no cover
        raise KeyError(name)
    os.replace(tmp, path)
    return path


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_model(
    repo: Path,
    name: str,
    *,
    flavor: str = "runtime-core",
    model_name: str | None = None,
    workers: int | None = None,
    **extra: Any,
) -> Path:
    """Write the folder ``repo/model_name`` serving model ``name``; returns the folder.

    ``workers`` sets ``parallel_workers`` (runtime-core only: MLServer's is server-wide);
    ``extra`` keys go into model-settings.json as given (``weight=2``, ``parameters={...}``...)."""
    spec = SPECS[name]
    model_name = model_name or name
    folder = repo / model_name
    folder.mkdir(parents=True, exist_ok=True)
    _link(artifact_path(name), folder / spec.artifact)
    settings: dict[str, Any] = {"name": model_name}
    if flavor == "mlserver":
        settings["implementation"] = spec.implementation
        settings["parameters"] = {"uri": f"./{spec.artifact}", **extra.pop("parameters", {})}
    else:
        settings["runtime"] = spec.runtime
        if workers is not None:
            settings["parallel_workers"] = workers
    settings.update(extra)
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return folder


def set_workers(folder: Path, workers: int | None) -> None:
    """Rewrite ``parallel_workers`` of an existing runtime-core model folder."""
    path = folder / "model-settings.json"
    settings = json.loads(path.read_text())
    if workers is None:
        settings.pop("parallel_workers", None)
    else:
        settings["parallel_workers"] = workers
    path.write_text(json.dumps(settings, indent=2) + "\n")


def request_array(name: str) -> np.ndarray[Any, Any]:
    """The rows every benchmark request for model ``name`` carries (float32, fixed)."""
    x, _ = dataset()
    rows = SPECS[name].rows
    return np.round(x[1000 : 1000 + rows], 4).astype(np.float32)


def request_body(name: str) -> bytes:
    """A V2 JSON inference request for model ``name`` (same bytes for both servers)."""
    x = request_array(name)
    doc = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": [round(float(v), 4) for v in x.flat],
            }
        ]
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="model repository folder to write")
    parser.add_argument("--mlserver", action="store_true", help="write MLServer-format folders")
    parser.add_argument("--workers", type=int, help="parallel_workers of each model (runtime-core)")
    parser.add_argument("--models", default="light,heavy,xgb")
    args = parser.parse_args()
    for name in args.models.split(","):
        folder = write_model(
            args.out, name, flavor="mlserver" if args.mlserver else "runtime-core", workers=args.workers
        )
        print(folder)


if __name__ == "__main__":
    main()

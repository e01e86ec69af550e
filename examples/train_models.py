"""Train the example models of ``examples/models`` (iris, 4 features, 3 classes).

Model files are not committed (see ``.gitignore``); this script, or the server
calling :func:`ensure_models`, writes them when they are missing. Training is
deterministic and takes well under a second per model.

    python examples/train_models.py            # write missing models
    python examples/train_models.py --force    # retrain all
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODELS_ROOT = Path(__file__).resolve().parent / "models"


def _iris() -> tuple[Any, Any]:
    from sklearn.datasets import load_iris  # bundled with scikit-learn: no download

    x, y = load_iris(return_X_y=True)
    return x.astype("float32"), y


def _write_sklearn(path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    x, y = _iris()
    joblib.dump(LogisticRegression(max_iter=1000).fit(x, y), path)


def _write_xgboost(path: Path) -> None:
    import xgboost

    x, y = _iris()
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=3, learning_rate=0.3, n_jobs=1, random_state=0)
    model.fit(x, y)
    model.save_model(path)  # the ".json" suffix selects the JSON format


#: (model folder, artifact file, module the trainer needs, trainer)
MODELS: list[tuple[str, str, str, Callable[[Path], None]]] = [
    ("iris-sklearn", "model.joblib", "sklearn", _write_sklearn),
    ("iris-xgboost", "model.json", "xgboost", _write_xgboost),
]


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def ensure_models(root: Path = MODELS_ROOT, *, force: bool = False) -> list[Path]:
    """Write every example model missing under ``root`` (all of them with ``force``) and
    return the paths written. Models whose framework is not installed are skipped, so a
    server with only some runtimes installed can still call this.

    Each file is written under a temporary name and renamed into place, so a server
    starting at the same time never reads a half-written model.
    """
    written: list[Path] = []
    for folder, file, module, train in MODELS:
        path = root / folder / file
        if (path.exists() and not force) or not _installed(module):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
        try:
            train(temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=MODELS_ROOT, help="model repository (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="retrain models that already exist")
    args = parser.parse_args(argv)
    for path in ensure_models(args.root, force=args.force):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

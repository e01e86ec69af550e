"""Take the status page screenshot kept in docs/ (docs/img/status-page.png).

Starts runtime-core on 127.0.0.1 with the benchmark models (light, heavy, xgb) and one
model whose file is missing (so the page shows a model in trouble), sends a modest
open-loop load for a while, then loads ``/`` in headless Chromium (Debian's
``chromium``, driven by Playwright) and saves a full-page screenshot::

    .venv/bin/python benchmarks/status_screenshot.py [--seconds 40] [--out docs/img/status-page.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import models
from common import infer_url, progress
from loadgen import OpenLoop, run_loads
from servers import RuntimeCoreServer

from runtime_core.testing import CHROMIUM_ARGS

CHROMIUM = "/usr/bin/chromium"
RATES = {"light": 60.0, "xgb": 25.0, "heavy": 4.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="load before the screenshot")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs/img/status-page.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        repo = Path(tmp)
        for name in RATES:
            models.write_model(repo, name, workers=2, **({"weight": 2} if name == "light" else {}))
        broken = repo / "churn"
        broken.mkdir()
        (broken / "model-settings.json").write_text(json.dumps({"name": "churn", "runtime": "sklearn"}))
        with RuntimeCoreServer(repo) as server:
            progress(f"runtime-core ready at {server.url}; {args.seconds:g} s of load")
            loads = [
                OpenLoop(infer_url(server.url, name), models.request_body(name), rate=rate, duration=args.seconds)
                for name, rate in RATES.items()
            ]
            run_loads(loads)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.goto(server.url + "/")
                page.wait_for_selector('#models tr[data-model="light"]')
                page.wait_for_function("document.getElementById('cpu').textContent !== '-'")  # two polls
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
    progress(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The status page at ``/`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

The browser loads the page from a real server with three models (one of which failed to
load), sees every model, watches the numbers and both charts of a model change while
traffic flows, sees a model turn UNAVAILABLE (and stand out) after an unload and after a
worker of it is killed, shows each version of a model as its own row and chart, and logs no
JavaScript error on the way. The page's JSON carries no
server path, and the ``status_page`` setting turns all of it off.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import infer_body, named_processes, toy_model

from runtime_core.testing import ServerProcess, wait_until, write_model

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

MODELS = ["broken", "echo", "toy"]


def _env(toy_site: Path) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(toy_site) + (os.pathsep + path if path else "")}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("status-repo")
    write_model(root / "echo", name="echo", runtime="echo", parameters={"version": "1"})
    toy_model(root, "toy", weight=2)
    toy_model(root, "broken", parameters={"extra": {"load_fails": True}})
    return root


@pytest.fixture(scope="module")
def server(root: Path, toy_site: Path) -> Iterator[ServerProcess]:
    # min_workers: the models keep a dedicated worker, which a test kills.
    proc = ServerProcess(root, workers=1, env={**_env(toy_site), "RUNTIME_CORE_MIN_WORKERS": "1"})
    yield proc
    proc.stop()


@pytest.fixture
def page(browser: Any, server: ServerProcess) -> Iterator[Any]:
    """The status page, loaded; fails the test if the browser logged a JavaScript error."""
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(server.url + "/")
    yield tab
    context.close()
    assert errors == [], errors


def cell(page: Any, model: str, name: str) -> str:
    return str(page.text_content(f'#models tr[data-model="{model}"] td.{name}') or "")


def chart(page: Any, model: str, kind: str) -> str:
    return str(page.evaluate(f"document.querySelector('.card[data-model=\"{model}\"] canvas.{kind}').toDataURL()"))


def test_every_model_is_listed_with_its_state(page: Any, server: ServerProcess) -> None:
    rows = wait_until(
        lambda: page.eval_on_selector_all("#models tbody tr", "rows => rows.map(r => r.dataset.model)"),
        message="the model table",
    )
    assert rows == MODELS
    assert cell(page, "echo", "state").startswith("READY")
    assert cell(page, "echo", "version") == "1"
    assert cell(page, "echo", "runtime") == "echo"
    assert cell(page, "toy", "weight") == "2"
    assert cell(page, "toy", "workers").endswith("/1")  # ready / parallel_workers
    # The model that failed to load stands out, in the table and in its chart card.
    assert cell(page, "broken", "state").startswith("UNAVAILABLE")
    assert "trouble" in (page.get_attribute('#models tr[data-model="broken"]', "class") or "")
    assert "trouble" in (page.get_attribute('.card[data-model="broken"]', "class") or "")
    assert "trouble" not in (page.get_attribute('#models tr[data-model="echo"]', "class") or "")
    assert page.text_content("#version") == "0.1.0"
    # The process tree: the server and at least the template its workers are forked from.
    assert int(page.text_content("#processes") or 0) >= 2
    assert (page.text_content("#cpu") or "").endswith("% of a core")
    assert (page.text_content("#memory") or "").endswith("MiB")
    assert (page.text_content("#url") or "").startswith(server.url)
    for link in ("/metrics", "/v2/docs/openapi.json", "/docs/"):
        assert page.locator(f'nav a[href="{link}"]').count() == 1


def _rows(tab: Any) -> list[str | None]:
    return [row.get_attribute("data-model") for row in tab.locator("#models tbody tr").all()]


def test_without_javascript_the_page_shows_the_table_from_the_server(browser: Any, server: ServerProcess) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        tab = context.new_page()
        tab.goto(server.url + "/")
        assert _rows(tab) == MODELS
        assert cell(tab, "echo", "state").startswith("READY")
        assert cell(tab, "echo", "version") == "1"
        assert cell(tab, "toy", "weight") == "2"
        assert cell(tab, "toy", "workers").endswith("/1")
        assert cell(tab, "broken", "state").startswith("UNAVAILABLE")
        assert "trouble" in (tab.get_attribute('#models tr[data-model="broken"]', "class") or "")
        assert tab.text_content("#version") == "0.1.0"
        assert (tab.text_content("#url") or "").startswith(server.url)
        assert (tab.text_content("#memory") or "").endswith("MiB")
        assert tab.locator("noscript").count() == 1
        assert tab.get_attribute("body", "data-updated") is None  # no script ran
    finally:
        context.close()


def test_with_javascript_the_script_takes_the_server_rendered_table_over(page: Any, server: ServerProcess) -> None:
    wait_until(lambda: page.get_attribute("body", "data-updated"), message="the script's first poll")
    # The script redrew the rows in place: each model once, not the server's rows and its own.
    assert _rows(page) == MODELS
    assert cell(page, "echo", "state").startswith("READY")
    assert page.locator("#charts .card").count() == len(MODELS)


def test_the_docs_link_opens_the_shipped_documentation(page: Any, server: ServerProcess) -> None:
    """The page's "Docs" link works offline: the docs come from the installed package."""
    page.click('nav a[href="/docs/"]')
    page.wait_for_selector('a[href="/docs/operations.md"]')
    page.click('a[href="/docs/operations.md"]')
    page.wait_for_url("**/docs/operations.md")
    assert "## Request log" in (page.text_content("body") or "")
    for path in ("/docs/../settings.py", "/docs/nothing.md", "/docs/%2e%2e/rest/status.py"):
        status, _, _ = server.request("GET", path)
        assert status == 404, path


def test_traffic_moves_the_numbers_and_the_charts(page: Any, server: ServerProcess) -> None:
    wait_until(lambda: cell(page, "toy", "success") == "0", message="the toy row before traffic")
    before = chart(page, "toy", "throughput"), chart(page, "toy", "latency")
    for i in range(20):
        status, _ = server.post_json("/v2/models/toy/infer", infer_body([float(i)]))
        assert status == 200
    bad = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [1.0]}]}
    status, _ = server.post_json("/v2/models/toy/infer", bad)
    assert status == 400
    wait_until(lambda: cell(page, "toy", "success") == "20", message="20 requests on the page")
    assert float(cell(page, "toy", "rps")) > 0
    assert float(cell(page, "toy", "p50")) > 0 and float(cell(page, "toy", "p99")) >= float(cell(page, "toy", "p50"))
    assert cell(page, "toy", "errors") == "client 1"
    assert chart(page, "toy", "throughput") != before[0]
    assert chart(page, "toy", "latency") != before[1]
    assert cell(page, "echo", "success") == "0"  # the other models' figures did not move


def test_an_unloaded_model_changes_state_and_stands_out(page: Any, server: ServerProcess) -> None:
    wait_until(lambda: cell(page, "echo", "state").startswith("READY"), message="echo READY on the page")
    status, _ = server.post_json("/v2/repository/models/echo/unload")
    assert status == 200
    wait_until(lambda: cell(page, "echo", "state").startswith("UNAVAILABLE"), message="echo UNAVAILABLE on the page")
    assert "trouble" in (page.get_attribute('#models tr[data-model="echo"]', "class") or "")
    status, _ = server.post_json("/v2/repository/models/echo/load")
    assert status == 200
    wait_until(lambda: cell(page, "echo", "state") == "READY", message="echo READY again")


def test_a_killed_worker_makes_its_model_stand_out(page: Any, server: ServerProcess) -> None:
    status, _ = server.post_json("/v2/models/toy/infer", infer_body([1.0]))  # a worker is up
    assert status == 200
    wait_until(lambda: cell(page, "toy", "restarts") == "0", message="toy with no restart on the page")
    assert "trouble" not in (page.get_attribute('#models tr[data-model="toy"]', "class") or "")
    [victim] = [p for name, p in named_processes(server.pid) if name.startswith("rc-w") and name.endswith(":toy")]
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: cell(page, "toy", "restarts") == "1", message="the restart on the page")
    assert "workers restarting" in cell(page, "toy", "state")
    assert "trouble" in (page.get_attribute('#models tr[data-model="toy"]', "class") or "")
    status, _ = server.post_json("/v2/models/toy/infer", infer_body([2.0]))  # and it still answers
    assert status == 200


def test_the_page_shows_no_server_path(server: ServerProcess, root: Path) -> None:
    status, body, _ = server.request("GET", "/status.json")
    assert status == 200
    assert str(root) not in body.decode() and str(root.parent) not in body.decode()


def test_with_many_models_only_the_busy_ones_are_charted(tmp_path: Path, serve: Any, browser: Any) -> None:
    names = [f"m{i:02d}" for i in range(26)]  # more than statuspage.MAX_CHARTS (24)
    for name in names:
        write_model(tmp_path / name, name=name, runtime="echo")
    server = serve(tmp_path, workers=0)
    body = {"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [1]}]}
    for name in ("m03", "m17", "m17"):
        status, _ = server.post_json(f"/v2/models/{name}/infer", body)
        assert status == 200
    status, data = server.get("/status.json")
    assert status == 200 and [m["name"] for m in data["models"]] == names
    assert {m["name"] for m in data["models"] if m["series"] is not None} == {"m03", "m17"}

    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(server.url + "/")
    cards = wait_until(
        lambda: tab.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.model)"), message="the charts"
    )
    assert cards == ["m03", "m17"]
    assert tab.locator("#models tbody tr").count() == 26
    tab.close()
    assert errors == []


def test_each_version_of_a_model_has_its_row_and_chart(tmp_path: Path, serve: Any, browser: Any) -> None:
    for version in ("1", "2"):
        write_model(tmp_path / "m" / version, runtime="echo")  # Triton's layout: m/1, m/2
    server = serve(tmp_path, workers=0)
    body = {"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [1]}]}
    for _ in range(3):
        assert server.post_json("/v2/models/m/versions/2/infer", body)[0] == 200

    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(server.url + "/")
    script = "rows => rows.map(r => [r.dataset.model, r.dataset.version, r.querySelector('td.success').textContent])"
    rows = wait_until(lambda: tab.eval_on_selector_all("#models tbody tr", script), message="the model table")
    assert rows == [["m", "1", "0"], ["m", "2", "3"]]
    cards = tab.eval_on_selector_all(".card", "cards => cards.map(c => c.querySelector('h3').textContent)")
    assert cards == ["m (version 1): READY", "m (version 2): READY"]
    tab.close()
    assert errors == []


def test_a_setting_turns_the_page_off(root: Path, toy_site: Path, serve: Any) -> None:
    server = serve(root, workers=0, env={"RUNTIME_CORE_STATUS_PAGE": "false"})
    for path in ("/", "/status.json", "/static/status.js", "/docs/", "/docs/operations.md"):
        status, body, _ = server.request("GET", path)
        assert status == 404 and "error" in json.loads(body), path
    status, _ = server.get("/v2/models/stats")  # the statistics extension stays
    assert status == 200


def test_with_more_than_a_page_of_models_the_troubled_and_busy_are_shown_and_a_filter_finds_the_rest(
    tmp_path: Path, serve: Any, browser: Any
) -> None:
    """Issue 23: the page and /status.json show at most STATUS_ROWS models (the troubled and
    the busiest first) and how many there are; ``model`` filters, ``limit``/``offset`` page."""
    from runtime_core.statuspage import STATUS_ROWS

    names = [f"m{i:03d}" for i in range(STATUS_ROWS + 5)]
    for name in names:
        write_model(tmp_path / name, name=name, runtime="echo")
    toy_model(tmp_path, "zz-broken", parameters={"extra": {"load_fails": True}})
    server = serve(tmp_path, workers=0)
    body = {"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [1]}]}
    status, _ = server.post_json(f"/v2/models/{names[-1]}/infer", body)
    assert status == 200
    status, data = server.get("/status.json")
    shown = [m["name"] for m in data["models"]]
    assert status == 200 and data["total"] == len(names) + 1 and len(shown) == STATUS_ROWS
    assert shown == sorted(shown) and {names[-1], "zz-broken"} <= set(shown)
    status, data = server.get("/status.json?model=M10")  # any case, part of the name
    assert [m["name"] for m in data["models"]] == [n for n in names if "m10" in n] and data["total"] == 5
    status, data = server.get("/status.json?limit=3&offset=101")
    assert [m["name"] for m in data["models"]] == names[101:104] and data["total"] == len(names) + 1
    status, _ = server.get("/status.json?limit=-1")
    assert status == 400

    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(server.url + "/")
    assert tab.locator("#models tbody tr").count() == STATUS_ROWS
    assert tab.inner_text("#shown").startswith(f"{STATUS_ROWS} of {len(names) + 1} models shown")
    tab.fill("#filter", "m042")
    wait_until(lambda: tab.locator("#models tbody tr").count() == 1, message="the filtered table")
    assert tab.inner_text("#models tbody tr td.name") == "m042" and tab.inner_text("#shown") == "1 model"
    tab.close()
    assert errors == []

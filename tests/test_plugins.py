"""Runtime discovery through installed entry points, as a third-party plugin author meets it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pluggy
import pytest
from conftest import pip_install_target
from support import infer_body, named_processes, output, toy_model

from runtime_core import InferenceRequest, InferenceResponse, Runtime, hookimpl, hookspecs
from runtime_core.errors import PluginError, RuntimeNotFound
from runtime_core.plugins import RuntimeRegistry

DOCS = Path(__file__).parent.parent / "docs" / "writing-a-runtime.md"


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "runtime_core.cli", *args], capture_output=True, text=True, env=full, timeout=timeout
    )


def make_plugin(folder: Path, dist: str, module: str, runtime_name: str) -> Path:
    pkg = folder / module
    pkg.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "1.2.3"
        [project.entry-points.runtime_core]
        {module} = "{module}"
        [tool.setuptools]
        packages = ["{module}"]
        """)
    )
    (pkg / "__init__.py").write_text(
        textwrap.dedent(f"""
        from runtime_core import InferenceResponse, Runtime, hookimpl

        class Clash(Runtime):
            name = "{runtime_name}"
            async def load(self): pass
            async def predict(self, request): return InferenceResponse(outputs=[])

        @hookimpl
        def rc_register_runtimes():
            return [Clash]
        """)
    )
    return folder


@pytest.mark.e2e
def test_runtimes_command_lists_installed_plugins_with_distribution(toy_env: dict[str, str]) -> None:
    result = cli("runtimes", env=toy_env)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert re.search(r"echo\s+-\s+runtime-core\s+\d", rows["echo"])
    assert re.search(r"toy-identity\s+-\s+rc-toy-runtimes\s+0\.3\.0", rows["toy-identity"])


@pytest.mark.e2e
def test_a_plugin_not_installed_is_not_found(tmp_path: Path) -> None:
    # Without the toy plugin on the path, its runtimes do not exist.
    result = cli("runtimes")
    assert result.returncode == 0
    assert "toy-identity" not in result.stdout


@pytest.mark.e2e
def test_two_plugins_claiming_one_name_stop_the_server_at_startup(tmp_path: Path, toy_env: dict[str, str]) -> None:
    site = pip_install_target(make_plugin(tmp_path / "src", "rc-clash", "rc_clash", "toy-identity"), tmp_path / "site")
    env = {"PYTHONPATH": f"{site}{os.pathsep}{toy_env['PYTHONPATH']}"}
    toy_model(tmp_path / "repo", "m")
    result = cli("start", str(tmp_path / "repo"), "--http-port", "0", env=env)
    assert result.returncode == 2
    assert "two plugins claim the runtime name 'toy-identity'" in result.stderr
    assert "rc-toy-runtimes" in result.stderr and "rc-clash" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_a_model_naming_a_missing_runtime_names_the_model_file_and_installed_runtimes(
    tmp_path: Path, serve: Any
) -> None:
    folder = toy_model(tmp_path, "lost", runtime="tensorflow-magic")
    toy_model(tmp_path, "fine", parallel_workers=1)
    server = serve(tmp_path)
    assert server.post_json("/v2/models/fine/infer", infer_body([1.0]))[0] == 200
    line = next(line for line in server.output().splitlines() if "FAILED  lost" in line)
    assert "'tensorflow-magic'" in line and str(folder / "model-settings.json") in line
    assert "installed runtimes:" in line and "echo" in line and "toy-identity" in line
    status, doc = server.post_json("/v2/repository/models/lost/load")
    assert status == 400 and "tensorflow-magic" in doc["error"] and str(tmp_path) not in doc["error"]


def _doc_files() -> dict[str, str]:
    """The files the plugin guide shows, keyed by the path in each block's first-line comment."""
    text = DOCS.read_text()
    files = {}
    for block in re.findall(r"```(?:toml|python|json)\n(.*?)```", text, flags=re.S):
        first, _, rest = block.partition("\n")
        match = re.match(r"#\s*file:\s*(\S+)", first)
        if match:
            files[match.group(1)] = rest
    return files


@pytest.mark.e2e
def test_the_plugin_guide_example_installs_and_serves(tmp_path: Path, rc_server: Any) -> None:
    files = _doc_files()
    assert "pyproject.toml" in files, "docs/writing-a-runtime.md must show a pyproject.toml block"
    src = tmp_path / "src"
    for name, content in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(content)
    site = pip_install_target(src, tmp_path / "site")
    repo = tmp_path / "repo"
    (repo / "doubler").mkdir(parents=True)
    (repo / "doubler" / "model-settings.json").write_text(files["model-settings.json"])
    server = rc_server(repo, env={"PYTHONPATH": str(site)}, workers=1)
    status, doc = server.post_json("/v2/models/doubler/infer", infer_body([1.5, -2.0]))
    assert status == 200, doc
    assert output(doc, "doubled") == [3.0, -4.0]
    runtimes = cli("runtimes", env={"PYTHONPATH": str(site)}).stdout
    assert re.search(r"doubler\s+-\s+runtime-core-doubler\s+0\.1\.0", runtimes)


# --------------------------------------------------------------------------- the registry, in-process


def _runtime(runtime_name: str, *alias: str) -> type[Runtime]:
    class Named(Runtime):
        name = runtime_name
        aliases = alias

        async def predict(self, request: InferenceRequest) -> InferenceResponse:
            return InferenceResponse(outputs=[])

    Named.__qualname__ = f"Named_{runtime_name}"
    return Named


def _plugin(*runtimes: type[Runtime]) -> object:
    class Plugin:
        @hookimpl
        def rc_register_runtimes(self) -> list[type[Runtime]]:
            return list(runtimes)

    return Plugin()


def _manager(*plugins: object) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for n, plugin in enumerate(plugins):
        pm.register(plugin, name=f"plugin-{n}")
    return pm


@pytest.mark.parametrize(
    ("first", "second", "claimed"),
    [
        (_runtime("dup"), _runtime("dup"), "dup"),
        (_runtime("one", "shared.Model"), _runtime("two", "shared.Model"), "shared.Model"),
        (_runtime("three"), _runtime("other", "three"), "three"),
    ],
)
def test_two_plugins_claiming_one_name_are_refused_without_pip(
    first: type[Runtime], second: type[Runtime], claimed: str
) -> None:
    with pytest.raises(PluginError) as info:
        RuntimeRegistry.from_plugin_manager(_manager(_plugin(first), _plugin(second)))
    assert f"two plugins claim the runtime name {claimed!r}" in info.value.message
    assert first.__qualname__ in info.value.message and second.__qualname__ in info.value.message


def test_a_refused_batch_leaves_the_registry_unchanged() -> None:
    kept = _runtime("kept", "kept.Alias")
    registry = RuntimeRegistry.from_plugin_manager(_manager(_plugin(kept)))
    fresh, clash = _runtime("afresh"), _runtime("clash", "kept.Alias")  # iterated by name: afresh first
    batch = RuntimeRegistry.from_plugin_manager(_manager(_plugin(fresh, clash)))
    with pytest.raises(PluginError):
        registry.add(batch)
    assert [e.name for e in registry] == ["kept"]
    with pytest.raises(RuntimeNotFound):
        registry.get("afresh")  # staged before the clash was found, never added
    assert registry.get("kept.Alias").cls is kept


def test_one_plugin_registering_a_class_twice_is_not_a_clash() -> None:
    twice = _runtime("twice")
    registry = RuntimeRegistry.from_plugin_manager(_manager(_plugin(twice, twice)))
    assert registry.get("twice").cls is twice


def test_hook_rc_runtime_for_implementation() -> None:
    """An implementation that is no runtime name or alias goes to the runtime a plugin names
    for it; names and aliases are never taken away; a broken claim fails only that lookup."""
    claimer, aliased = _runtime("claimer"), _runtime("aliased", "pkg.Aliased")

    class Claims:
        @hookimpl
        def rc_runtime_for_implementation(self, implementation: str) -> str | None:
            if implementation == "pkg.Broken":
                raise RuntimeError("cannot decide")
            if implementation == "pkg.Elsewhere":
                return "not-installed"
            return "claimer" if implementation.startswith("pkg.") else None

    registry = RuntimeRegistry.from_plugin_manager(_manager(_plugin(claimer, aliased), Claims()))
    assert registry.get("pkg.Model").cls is claimer
    assert registry.get("pkg.Aliased").cls is aliased  # an alias is looked up before any claim
    with pytest.raises(RuntimeNotFound) as info:
        registry.get("other.Model", model="m")
    assert "names runtime 'other.Model', which is not installed" in info.value.message
    with pytest.raises(PluginError, match="'not-installed', which is not installed"):
        registry.get("pkg.Elsewhere", model="m")
    with pytest.raises(PluginError, match="cannot decide"):
        registry.get("pkg.Broken", model="m")
    assert registry.get("pkg.Model").cls is claimer  # a failed claim changed nothing


@pytest.mark.e2e
@pytest.mark.parametrize("runtime", ["toy-waits", "toy-says-never-waits"])
def test_a_runtime_that_awaits_in_predict_is_answered_on_the_shared_host(
    tmp_path: Path, serve: Any, runtime: str
) -> None:
    """A host runs a wake-up of ``predict_never_waits`` runtimes without its event loop: one
    that says so and waits all the same is still answered, in one context from start to end,
    and one that does not say so gets a current task (``asyncio.timeout`` works)."""
    toy_model(tmp_path, "m", runtime)
    server = serve(tmp_path)
    (host,) = [proc for name, proc in named_processes(server.pid) if name.startswith("rc-h:")]
    for wait in (None, 0, 0.0005):  # no wait, a bare yield, a future
        parameters = {} if wait is None else {"await_sleep": wait}
        status, body, _ = server.request(
            "POST",
            "/v2/models/m/infer",
            json.dumps(infer_body([1.0, 2.0], **parameters)).encode(),
            {"Content-Type": "application/json"},
        )
        doc = json.loads(body)
        assert status == 200, doc
        assert output(doc, "y") == [1.0, 2.0]
        assert output(doc, "pid") == [host.pid]  # run by the shared host, not a worker of its own
        if wait is not None:
            assert output(doc, "waited") == [1]

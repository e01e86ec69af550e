"""Plugin discovery: the pluggy manager and the registry of runtime classes.

Runtimes are found only through installed entry points in the group
``runtime_core`` (the built-in ``echo`` runtime is registered the same way, by
runtime-core's own distribution). Building the registry imports each plugin
module once; worker processes receive the runtime's import path
(``module:qualname``) and import it by that path, never through the plugin
manager.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import pluggy

from runtime_core import hookspecs
from runtime_core.errors import PluginError, RuntimeNotFound
from runtime_core.runtime import Runtime


@dataclass(frozen=True, slots=True)
class RuntimeEntry:
    """One runtime class, where it comes from, and the names that select it."""

    name: str
    aliases: tuple[str, ...]
    cls: type[Runtime]
    distribution: str
    version: str
    plugin: str

    @property
    def import_path(self) -> str:
        return f"{self.cls.__module__}:{self.cls.__qualname__}"


def make_plugin_manager(blocklist: Iterable[str] = ()) -> pluggy.PluginManager:
    """A plugin manager with our hookspecs and every installed ``runtime_core`` entry point,
    less the entry-point names in ``blocklist``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in blocklist:
        pm.set_blocked(name)
    try:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    except Exception as exc:  # a plugin that fails to import must not hide which one it was
        raise PluginError(f"a runtime_core plugin failed to load: {exc}") from exc
    pm.check_pending()
    return pm


class RuntimeRegistry:
    """Maps runtime names and aliases to :class:`RuntimeEntry`. Rejects duplicates before
    it changes any state."""

    def __init__(self, entries: Iterable[RuntimeEntry] = (), claim: Callable[[str], str | None] | None = None) -> None:
        self._by_name: dict[str, RuntimeEntry] = {}
        self._entries: list[RuntimeEntry] = []
        # Asks the plugins which runtime serves an implementation that is no name or alias
        # (the ``rc_runtime_for_implementation`` hook); None: nothing claims anything.
        self._claim = claim
        self.add(entries)

    def add(self, entries: Iterable[RuntimeEntry]) -> None:
        staged: dict[str, RuntimeEntry] = {}
        batch = list(entries)
        for entry in batch:
            for key in (entry.name, *entry.aliases):
                other = self._by_name.get(key) or staged.get(key)
                if other is not None and other.cls is not entry.cls:
                    raise PluginError(
                        f"two plugins claim the runtime name {key!r}: "
                        f"{other.distribution} ({other.import_path}) and {entry.distribution} ({entry.import_path})"
                    )
                staged[key] = entry
        self._by_name.update(staged)
        self._entries.extend(e for e in batch if e not in self._entries)

    def get(self, name: str, *, model: str | None = None, path: str | None = None) -> RuntimeEntry:
        entry = self._by_name.get(name)
        if entry is None and self._claim is not None:
            try:
                claimed = self._claim(name)
            except Exception as exc:  # a broken plugin fails this model's load, not the server
                raise PluginError(f"model {model!r}: a plugin failed while claiming {name!r}: {exc}") from exc
            if claimed is not None:
                entry = self._by_name.get(claimed)
                if entry is None:
                    raise PluginError(
                        f"model {model!r}: a plugin claimed {name!r} for the runtime {claimed!r},"
                        " which is not installed"
                    )
        if entry is None:
            installed = ", ".join(sorted(e.name for e in self._entries)) or "none"
            where = f" ({path})" if path else ""
            raise RuntimeNotFound(
                f"model {model!r}{where} names runtime {name!r}, which is not installed;"
                f" installed runtimes: {installed}",
                model=model,
                path=path,
            )
        return entry

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._entries, key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> RuntimeRegistry:
        dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
        entries: list[RuntimeEntry] = []
        for impl in pm.hook.rc_register_runtimes.get_hookimpls():
            dist = dists.get(id(impl.plugin))
            dist_name = dist.metadata["Name"] if dist is not None else "(registered directly)"
            dist_version = dist.version if dist is not None else ""
            registered = cast("list[object]", impl.function() or [])
            for runtime_cls in registered:
                if not (isinstance(runtime_cls, type) and issubclass(runtime_cls, Runtime)):
                    raise PluginError(f"plugin {impl.plugin_name!r} registered {runtime_cls!r}, not a Runtime subclass")
                name = getattr(runtime_cls, "name", None)
                if not isinstance(name, str) or not name:
                    raise PluginError(f"runtime {runtime_cls.__qualname__} of plugin {impl.plugin_name!r} sets no name")
                entries.append(
                    RuntimeEntry(
                        name, tuple(runtime_cls.aliases), runtime_cls, dist_name, dist_version, impl.plugin_name
                    )
                )
        hook = pm.hook.rc_runtime_for_implementation
        return cls(entries, claim=lambda implementation: cast("str | None", hook(implementation=implementation)))


def load_registry(blocklist: Iterable[str] = ()) -> RuntimeRegistry:
    """Discover installed plugins and build the registry."""
    return RuntimeRegistry.from_plugin_manager(make_plugin_manager(blocklist))


def import_runtime(import_path: str) -> type[Runtime]:
    """Import a runtime class from ``module:qualname`` (used inside workers)."""
    module_name, _, qualname = import_path.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Runtime)):
        raise PluginError(f"{import_path} is not a Runtime subclass")
    return obj

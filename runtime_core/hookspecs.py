"""Hook specifications of the runtime-core plugin interface.

Plugins are modules (or objects) registered under the entry-point group
``runtime_core``; they implement hooks with the :data:`hookimpl` marker::

    from runtime_core import hookimpl

    @hookimpl
    def rc_register_runtimes():
        return [MyRuntime]

Hooks only declare things; the work happens in :class:`~runtime_core.runtime.Runtime`
subclasses, inside the model's worker processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from runtime_core.runtime import Runtime

PROJECT = "runtime_core"

_spec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- discovery -----------------------------------------------------------------


@_spec
def rc_register_runtimes() -> list[type[Runtime]]:  # type: ignore[empty-body]
    """Declare the runtime classes this plugin provides.

    Called once when the plugin manager is built, in the main process, before
    any model loads (and by ``runtime-core runtimes``). Takes no arguments.
    Return a list of :class:`~runtime_core.runtime.Runtime` subclasses; each
    must set ``name`` and may set ``aliases``. Two runtimes claiming the same
    name or alias is an error at startup.
    """


# --- model settings --------------------------------------------------------------


@_spec(firstresult=True)
def rc_runtime_for_implementation(implementation: str) -> str | None:
    """Claim an ``implementation`` that no runtime registers as its name or alias.

    Called in the main process while a model loads, when its ``model-settings.json``
    names (in ``"implementation"`` or ``"runtime"``) something that is neither a
    registered runtime name nor an alias, e.g. ``"models.SumModel"`` or
    ``"mlserver_lightgbm.LightGBMModel"``. ``implementation`` is that string, as written.
    Return the name of a registered runtime that serves it, or ``None`` to leave it to
    other plugins (the model then fails to load: runtime not installed). The runtime's
    instances read the string themselves from ``self.settings.implementation``. Names and
    aliases are looked up first, so this hook never takes a name away from a runtime.
    Stops at first non-None result.
    """

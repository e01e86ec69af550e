"""Scanning the model repository folder: which model versions its settings files define.

:meth:`RepositoryScan.scan` finds every ``model-settings.json`` and returns the versions
that can serve, keyed ``name`` or ``name/version``, with the errors of the others: a
settings file that is a link out of the repository, a version defined twice, a model
with and without versions, a ``default_version`` that its folders disagree on. With no
settings file at all, the folder may be KServe's single-model layout
(:mod:`runtime_core.layout`).

Scans are frequent (every load by name, every repository index, every watch pass) and
repositories may hold many thousand models, so a scan reuses what the previous one read
from each settings file while the file and its folder are unchanged (:func:`_stamp`), and
the repository index reuses a whole scan for ``INDEX_SCAN_SECONDS``. Scanning runs in the
caller's thread and starts no task; it reads the folder, never the models' artifacts. On the
event loop a scan runs in steps with turns of the loop between them
(:meth:`RepositoryScan.scan_async`), so scans may interleave: each reads the memo the last
finished one left, and replaces it whole.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from pathlib import Path
from typing import Any

from runtime_core.errors import SettingsError
from runtime_core.layout import single_model
from runtime_core.model_names import is_version_folder, version_order
from runtime_core.plugins import RuntimeRegistry
from runtime_core.settings import (
    MODEL_SETTINGS_FILE,
    ModelSettings,
    ServerSettings,
    load_model_settings,
)
from runtime_core.steps import Stepper, Steps, run_steps, run_steps_async

__all__ = ["INDEX_SCAN_SECONDS", "RepositoryScan"]

#: Seconds a scan of the repository folder serves the repository index: a model folder
#: added or removed shows in the index within this (loads and unloads show at once).
INDEX_SCAN_SECONDS = 2.0

#: What a scan read from each settings file (by path), kept only where a later scan may reuse
#: it (:func:`_reusable`): the file's stamp, and its settings or error. Kept for every model
#: between scans: a string, not a ``Path`` (0.27 KB with its parts), and the stamp packed in
#: bytes, not a tuple of seven large ints (0.3 KB), issue 23.
_Memo = dict[str, tuple[bytes, list[ModelSettings] | SettingsError]]
_STAMP = struct.Struct("QQqqqQq")


class RepositoryScan:
    """Scans one repository folder, remembering what earlier scans read."""

    def __init__(self, root: Path | None, server: ServerSettings, registry: RuntimeRegistry) -> None:
        self.root = root
        self.server = server
        self.registry = registry
        #: What the last scan read from each settings file, with the file's and its folder's
        #: stamps (:func:`_stamp`): a file unchanged since is not parsed again, so a scan of
        #: an unchanged repository costs little more than listing it (issue 23).
        self._memo: _Memo = {}
        #: ``(monotonic time, models found)`` of the last scan the repository index used.
        self._for_index: tuple[float, set[str]] | None = None

    def scan(self) -> tuple[dict[str, ModelSettings], list[SettingsError]]:
        """Parse every model settings file; returns the valid ones by key (``name`` or
        ``name/version``) and the errors (``model`` of each: the key it concerns)."""
        return run_steps(self._scan())

    async def scan_async(self) -> tuple[dict[str, ModelSettings], list[SettingsError]]:
        """:meth:`scan`, in steps with turns of the event loop between them
        (:mod:`runtime_core.steps`): a scan of 10,000 model folders is a tenth of a second of
        Python that would otherwise hold every request for as long (issue 23)."""
        return await run_steps_async(self._scan())

    def _scan(self) -> Steps[tuple[dict[str, ModelSettings], list[SettingsError]]]:
        found: dict[str, ModelSettings] = {}
        errors: list[SettingsError] = []
        if self.root is None:
            return found, errors
        paths = yield from _settings_files(self.root)
        if not paths:  # KServe's layout: one model's files, no settings file (issue 11)
            return single_model(self.root, self.server, self.registry)
        by_name: dict[str, list[ModelSettings]] = {}
        memo: _Memo = {}
        stepper = Stepper()
        for path in paths:
            if stepper.due():
                yield
            stamp = _stamp(path)
            if stamp is None:
                continue  # gone, or not a regular file (a broken link): not a settings file
            known = self._memo.get(path)
            if known is not None and known[0] == stamp:
                outcome = known[1]
                memo[path] = known
            else:
                outcome = self._read_folder(Path(path))
                if _reusable(outcome):
                    memo[path] = (stamp, outcome)
            if isinstance(outcome, SettingsError):
                errors.append(outcome)
                continue
            for each in outcome:
                by_name.setdefault(each.name, []).append(each)
        self._memo = memo
        for name, group in by_name.items():
            if stepper.due():
                yield
            for settings in _check_versions(name, group, errors):
                found[settings.key] = settings
        return found, errors

    def _read_folder(self, path: Path) -> list[ModelSettings] | SettingsError:
        """The settings of one ``model-settings.json`` (several for a folder of numbered
        version folders), or the error that makes it unusable."""
        assert self.root is not None
        folder = path.parent
        in_version_folder = folder.parent != self.root and folder != self.root and is_version_folder(folder.name)
        try:
            self._confine_settings_file(path, in_version_folder)
            settings = load_model_settings(path, in_version_folder=in_version_folder)
            return self._versions_of_folder(settings)
        except SettingsError as exc:
            return exc

    def _confine_settings_file(self, path: Path, in_version_folder: bool) -> None:
        """Refuse a settings file that is a link out of the repository, before reading it: the
        same rule as for artifacts (see :meth:`ModelSettings.resolve_uri`)."""
        assert self.root is not None
        resolved = path.resolve()
        if self.root in resolved.parents:
            return
        name = path.parent.parent.name if in_version_folder else path.parent.name
        raise SettingsError(
            f"{path}: model {name!r}: {path.name} is a link that leaves the model repository; not read",
            model=name,
            path=str(path),
        )

    def _versions_of_folder(self, settings: ModelSettings) -> list[ModelSettings]:
        """Triton's layout: a model folder whose subfolders named by digits hold one version
        each, under the model folder's settings (a version folder with its own settings file
        is read on its own, in place of these). Any other folder: the settings themselves."""
        folder = settings.folder
        if folder is None or folder == self.root or settings.path is None or settings.path.parent != folder:
            return [settings]
        numbered = sorted(
            (p for p in folder.iterdir() if p.is_dir() and is_version_folder(p.name)), key=lambda p: int(p.name)
        )
        if not numbered:
            return [settings]
        if settings.version is not None:
            raise SettingsError(
                f"{settings.path}: model {settings.name!r}: parameters.version is set but the folder holds "
                f"version folders ({', '.join(p.name for p in numbered)}); keep one or the other",
                model=settings.name,
                path=str(settings.path),
            )
        return [settings.as_version(p.name, p) for p in numbered if not (p / MODEL_SETTINGS_FILE).is_file()]

    def fresh_for_index(self) -> set[str] | None:
        """The models of a scan made within the last ``INDEX_SCAN_SECONDS``, or ``None`` when
        the repository index needs a new one (:meth:`found_for_index`). Clients poll the
        index, and a scan of many thousand models takes a tenth of a second (issue 23)."""
        if self._for_index is None or time.monotonic() - self._for_index[0] >= INDEX_SCAN_SECONDS:
            return None
        return self._for_index[1]

    async def found_for_index(self) -> set[str]:
        """The models in the repository folder, as the index lists them: a scan made within
        the last ``INDEX_SCAN_SECONDS`` is reused."""
        found = self.fresh_for_index()
        if found is None:
            found = set((await self.scan_async())[0])
            self._for_index = (time.monotonic(), found)
        return found

    def fingerprints(self, found: dict[str, ModelSettings]) -> Steps[dict[str, tuple[Any, ...]]]:
        """Per model: sizes and mtimes of its settings file, the files beside it and its URI
        (what the watcher compares between two passes); in steps (:mod:`runtime_core.steps`)."""
        prints: dict[str, tuple[Any, ...]] = {}
        stepper = Stepper()
        for name, settings in found.items():
            if stepper.due():
                yield
            prints[name] = self._fingerprint(settings)
        return prints

    def _fingerprint(self, settings: ModelSettings) -> tuple[Any, ...]:
        files: set[Path] = {settings.path} if settings.path is not None else set()
        if settings.folder is not None:
            files.update(p for p in settings.folder.iterdir() if p.is_file())
        try:
            uri = settings.resolve_uri(self.root)
        except SettingsError:
            uri = None
        if uri is not None and uri.is_file():
            files.add(uri)
        stamp = []
        for path in sorted(files):
            try:
                st = path.stat()
            except OSError:
                continue
            stamp.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(stamp)


def _check_versions(name: str, group: list[ModelSettings], errors: list[SettingsError]) -> list[ModelSettings]:
    """The versions of ``name`` that can serve: one folder per version, all with a version
    or none, and a ``default_version`` (if any) that they agree on and that exists."""
    by_version: dict[str | None, ModelSettings] = {}
    for settings in group:
        other = by_version.get(settings.version)
        if other is not None:
            what = f"model {name!r}" + (f" version {settings.version!r}" if settings.version else "")
            errors.append(
                SettingsError(
                    f"{settings.path}: {what} is already defined by {other.path}",
                    model=settings.key,
                    path=str(settings.path),
                )
            )
            continue
        by_version[settings.version] = settings
    if None in by_version and len(by_version) > 1:
        plain = by_version.pop(None)
        versioned = next(iter(by_version.values()))
        errors.append(
            SettingsError(
                f"{plain.path}: model {name!r} has no parameters.version, but {versioned.path} gives it "
                f"version {versioned.version!r}; give every folder of one model a version",
                model=name,
                path=str(plain.path),
            )
        )
    defaults = {s.default_version: s for s in by_version.values() if s.default_version is not None}
    problem = ""
    if len(defaults) > 1:
        (first, one), (second, two) = list(defaults.items())[:2]
        problem = f"default_version {first!r} ({one.path}) and {second!r} ({two.path}) disagree"
    elif defaults:
        wanted, where = next(iter(defaults.items()))
        if wanted not in by_version:
            have = ", ".join(sorted((v for v in by_version if v), key=version_order)) or "none"
            problem = f"default_version {wanted!r} ({where.path}) is not one of its versions ({have})"
    if problem:
        for settings in by_version.values():
            errors.append(SettingsError(f"model {name!r}: {problem}", model=settings.key, path=str(settings.path)))
        return []
    return list(by_version.values())


def _settings_files(repository: Path) -> Steps[list[str]]:
    """:func:`~runtime_core.settings.find_model_settings` as strings (links to folders not
    followed either), without its check that each is a file: a scan stats each one anyway
    (:func:`_stamp`). ``scandir``'s entry types replace ``os.walk``'s ``lstat`` of every
    folder: with those, the extra ``stat`` and a ``Path`` per file, listing 10,000 model
    folders took twice as long (issue 23). In steps (:mod:`runtime_core.steps`)."""
    found: list[str] = []
    folders = [os.fspath(repository)]
    stepper = Stepper()
    while folders:
        folder = folders.pop()
        if stepper.due():
            yield
        try:
            entries = os.scandir(folder)
        except OSError:  # gone or unreadable since it was listed, as os.walk skips it
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
                    elif entry.name == MODEL_SETTINGS_FILE:
                        found.append(entry.path)
                except OSError:
                    continue
    found.sort(key=lambda path: path.split(os.sep))
    return found


def _stamp(path: str) -> bytes | None:
    """Identity and change time of a settings file (links followed) and of its folder (whose
    mtime changes when version folders come or go), or ``None`` if either cannot be read or
    the settings file is not a regular file."""
    try:
        st = os.stat(path)
        folder = os.stat(os.path.dirname(path))
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return _STAMP.pack(
        st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, folder.st_ino, folder.st_mtime_ns
    )


def _reusable(outcome: list[ModelSettings] | SettingsError) -> bool:
    """Whether a scan may reuse what it read from a settings file while the file and its
    folder are unchanged: not for a folder of numbered version folders, whose versions also
    depend on what the version folders hold."""
    if isinstance(outcome, SettingsError):
        return True
    return len(outcome) == 1 and outcome[0].path is not None and outcome[0].folder == outcome[0].path.parent

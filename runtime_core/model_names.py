"""How models and their versions are named, keyed and ordered.

A model's name and a version label are URL path segments, so both follow one rule
(:func:`valid_name`). Each version of each model is keyed ``name`` or ``name/version``
(:func:`model_key`) by the scheduler, the pools, the statistics and the repository.
"""

from __future__ import annotations

import re

__all__ = ["MODEL_NAME_RE", "is_version_folder", "model_key", "split_key", "valid_name", "version_order"]

#: Model names are URL path segments: no separators, no dot-dot, nothing exotic.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


def valid_name(value: str) -> bool:
    """Whether ``value`` may be a model's name or a version label."""
    return MODEL_NAME_RE.match(value) is not None and ".." not in value


def model_key(name: str, version: str | None) -> str:
    """One version of one model, as the scheduler, pools and statistics key it."""
    return name if version is None else f"{name}/{version}"


def split_key(key: str) -> tuple[str, str | None]:
    """``(name, version)`` of a key made by :func:`model_key`."""
    name, slash, version = key.partition("/")
    return name, version if slash else None


def is_version_folder(name: str) -> bool:
    """Whether a folder's name makes it a version folder (Triton's layout): ASCII digits only."""
    return name.isascii() and name.isdigit()


_PIECES = re.compile(r"\d+|\D+")


def version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of versions, lowest first: runs of digits compare as numbers, the rest as
    text, piece by piece (``2`` < ``10``, ``v1.9`` < ``v1.10``, ``1.0`` < ``1.0-rc``); at one
    position a number sorts before text."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _PIECES.findall(version))

"""Reading a settings file, and wording what is wrong with it.

Both kinds of settings file (``settings.json`` for the server, ``model-settings.json`` per
model) hold one JSON object, and their errors read alike: they name the file and the
offending key, never a pydantic error type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runtime_core.errors import SettingsError

__all__ = ["format_validation", "format_validation_item", "read_json_object"]


def read_json_object(path: Path, *, blank_is_empty: bool = False) -> dict[str, Any]:
    """The JSON object in ``path``. ``blank_is_empty``: a file of only white space reads as
    ``{}`` (``settings.json`` may be left empty; a model's settings may not)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read: {exc.__class__.__name__}", path=str(path)) from None
    if blank_is_empty and not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}", path=str(path)) from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: must hold a JSON object", path=str(path))
    return raw


def format_validation_item(item: Any) -> str:
    """One of pydantic's ``ValidationError.errors()``, as the key it concerns and what is wrong."""
    where = ".".join(str(p) for p in item["loc"]) or "(root)"
    if item["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    return f"{where!r}: {item['msg']}"


def format_validation(error: ValidationError) -> str:
    return "; ".join(format_validation_item(item) for item in error.errors())

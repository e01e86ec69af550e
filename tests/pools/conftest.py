"""Fixtures of the pools' unit tests (fakes in ``pool_fakes.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest


@pytest.fixture
def run() -> Any:
    """Run one coroutine function in a fresh event loop."""
    return lambda main: asyncio.run(main())

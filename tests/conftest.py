"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Free each test's unreachable mappings and handles before the next test.

    Mappings and file handles caught in reference cycles (tracebacks of
    expected exceptions, closures) would otherwise hold page memory and the
    default RAM's capacity across tests, making one test's counters depend
    on the tests before it.
    """
    yield
    gc.collect()

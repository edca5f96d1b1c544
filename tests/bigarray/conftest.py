from __future__ import annotations

from collections.abc import Callable

import pytest

from zbigarray.bigarray import BigArray

from .backends import BACKENDS


@pytest.fixture(scope="session", params=sorted(BACKENDS))
def make_array(request: pytest.FixtureRequest) -> Callable[..., BigArray]:
    """``make_array(shape, dtype, order='C')``: a fresh, zero-filled BigArray
    on each backend (a BigFile of 4 KiB blocks; RAMArray)."""
    return BACKENDS[request.param]

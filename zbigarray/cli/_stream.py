"""Copying an array piece by piece, with a progress bar: the loop of
``export`` and ``import``.

Memory stays bounded by one piece (:data:`STEP`) on each side plus the page
RAM, whose capacity the command line sets low (:data:`RAM_DEFAULT`) unless
the user chose one: a copy reads or writes each page once, so a big cache
would only grow the process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

from zbigarray.cli._pieces import Index, pieces
from zbigarray.cli._progress import Progress

STEP = 8 << 20
"""Bytes per piece copied."""

RAM_DEFAULT = "64M"
"""Page RAM of a copying command when ``ZBIGARRAY_RAM_MAX`` is not set."""


def limit_ram() -> None:
    """Give the process-wide page RAM :data:`RAM_DEFAULT` unless the user
    set ``ZBIGARRAY_RAM_MAX``; call before any array is touched (the RAM
    reads its capacity once)."""
    os.environ.setdefault("ZBIGARRAY_RAM_MAX", RAM_DEFAULT)


def copy(shape: tuple[int, ...], dtype: np.dtype, order: str,
         read: Callable[[Index], np.ndarray], write: Callable[[Index, np.ndarray], None],
         label: str) -> int:
    """``write(index, read(index))`` for every piece of an array of `shape`,
    `dtype` and `order`, in order; return the bytes copied."""
    total = math.prod(shape) * dtype.itemsize
    bar = Progress(label, total)
    done = 0
    try:
        for index, nbytes in pieces(shape, dtype.itemsize, order, STEP):
            write(index, read(index))
            done += nbytes
            bar.update(done)
    finally:
        bar.close()
    return done

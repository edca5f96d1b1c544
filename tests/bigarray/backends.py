"""Backends the BigArray tests run on, and a counting BigFile."""

from __future__ import annotations

from collections import Counter
from typing import Any
from collections.abc import Callable

import numpy as np

from zbigarray.bigarray import BigArray
from zbigarray.bigarray.array_ram import RAMArray
from zbigarray.bigfile import BigFile

# Small blocks, so that even the tiny arrays of the property tests span
# several blocks and every index crosses block boundaries.
SMALL_BLKSIZE = 4096


class MemFile(BigFile):
    """A BigFile whose blocks live in a dict (a missing block reads as zeros),
    counting every loadblk and storeblk per block."""

    def __init__(self, blksize: int) -> None:
        self.blocks: dict[int, bytes] = {}
        self.loaded: Counter[int] = Counter()
        self.stored: Counter[int] = Counter()

    def loadblk(self, blk: int, buf: memoryview) -> None:
        self.loaded[blk] += 1
        data = self.blocks.get(blk)
        if data is None:
            np.frombuffer(buf, dtype=np.uint8).fill(0)
        else:
            buf[:] = data

    def storeblk(self, blk: int, buf: memoryview) -> None:
        self.stored[blk] += 1
        self.blocks[blk] = bytes(buf)


def file_array(shape: Any, dtype: Any, order: str = "C", blksize: int = SMALL_BLKSIZE) -> BigArray:
    """A BigArray over a fresh MemFile (reach the file as ``A._fileh.file``)."""
    return BigArray(shape, dtype, MemFile(blksize).fileh_open(), order)


BACKENDS: dict[str, Callable[..., BigArray]] = {
    "file4k": file_array,
    "ram": RAMArray,
}

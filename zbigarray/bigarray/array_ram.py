"""RAMArray: a BigArray whose file lives in RAM only (no disk, no database)."""

from __future__ import annotations

from typing import Any

import numpy as np

from zbigarray.bigfile import RAM, BigFile

from ._bigarray import BigArray, ShapeLike

__all__ = ["RAMArray"]

# 2 MiB: large enough that a full scan takes few faults and Python calls, and
# the size of a huge page, so RAM can use huge pages when it is given them.
_BLKSIZE = 2 * 1024 * 1024


class _RAMFile(BigFile):
    """A file with nothing behind it: blocks are born zero, and their only
    copy is the page that holds them."""

    def loadblk(self, blk: int, buf: memoryview) -> None:
        # Page memory may be recycled from another page: clear it.
        np.frombuffer(buf, dtype=np.uint8).fill(0)

    def storeblk(self, blk: int, buf: memoryview) -> None:
        raise RuntimeError(f"a RAMArray's file lives in RAM only: it has nowhere to store block {blk}")


class RAMArray(BigArray):
    """A BigArray over a file that lives only in RAM.

    Same API and semantics as :class:`BigArray`.  Written pages are dirty and
    the core never reclaims dirty pages, so they are the data; pages never
    written read as zeros and may be reclaimed and re-created freely.  The
    array has its own ``RAM`` whose capacity always covers every page of the
    largest shape it has had (grown by :meth:`resize` / :meth:`append`), so a
    write can never find the RAM full of dirty pages.

    Parameters
    ----------
    shape
        An int or a sequence of ints, none negative.
    dtype
        Anything ``numpy.dtype`` accepts, holding no Python objects.
    order
        ``'C'`` or ``'F'``.
    """

    def __init__(self, shape: ShapeLike, dtype: Any, order: str = "C") -> None:
        self._ram = RAM(_BLKSIZE)
        super().__init__(shape, dtype, _RAMFile(_BLKSIZE).fileh_open(ram=self._ram), order)
        self._fit_ram()

    def resize(self, new_shape: ShapeLike, refcheck: bool = True) -> None:
        super().resize(new_shape, refcheck)
        self._fit_ram()

    def _fit_ram(self) -> None:
        """Grow the RAM capacity to cover every page of the current shape.
        Never shrink it: pages beyond a shrunk end may still be dirty, and
        views taken before may still write there."""
        need = max(-(-self.nbytes // _BLKSIZE), 1) * _BLKSIZE
        if need > self._ram.capacity:
            self._ram.capacity = need

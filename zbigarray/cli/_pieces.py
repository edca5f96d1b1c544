"""Cutting an array into pieces that stream: each piece is a run of
consecutive elements in the array's memory order, at most a given number of
bytes (or one element), the pieces in order.

Rows of the major axis are grouped while a row fits; a row that does not
fit is cut along the next axis, and so on.  A piece is thus always a basic
index (ints, then one slice, then whole axes): a view of a BigArray, a
selection h5py and zarr take, and a contiguous byte range of a ``.npy``
file written in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

Index = tuple[int | slice, ...]


def pieces(shape: tuple[int, ...], itemsize: int, order: str,
           step: int) -> Iterator[tuple[Index, int]]:
    """``(index, nbytes)`` of each piece of an array of `shape`, `itemsize`
    and `order` (``'C'``/``'F'``), at most `step` bytes each."""
    ndim = len(shape)
    if ndim == 0:
        yield (), itemsize
        return
    if math.prod(shape) == 0:
        return
    axes = list(range(ndim)) if order == "C" else list(range(ndim - 1, -1, -1))

    def cut(fixed: dict[int, int], depth: int) -> Iterator[tuple[Index, int]]:
        axis = axes[depth]
        inner = itemsize * math.prod(shape[a] for a in axes[depth + 1:])
        if inner > step and depth + 1 < ndim:
            for i in range(shape[axis]):
                yield from cut({**fixed, axis: i}, depth + 1)
            return
        rows = max(1, step // inner)
        for lo in range(0, shape[axis], rows):
            hi = min(lo + rows, shape[axis])
            index = tuple(fixed[a] if a in fixed else slice(lo, hi) if a == axis
                          else slice(None) for a in range(ndim))
            yield index, (hi - lo) * inner

    yield from cut({}, 0)


def piece_shape(shape: tuple[int, ...], index: Index) -> tuple[int, ...]:
    """The shape of ``a[index]`` for an array `a` of `shape`."""
    out = []
    for n, ix in zip(shape, index):
        if isinstance(ix, slice):
            out.append(len(range(*ix.indices(n))))
    return tuple(out)

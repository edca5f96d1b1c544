"""Index analysis for BigArray: which rows of the major axis an index touches.

A BigArray is laid out contiguously along its *major* axis (axis 0 in C order,
the last axis in Fortran order): rows ``[lo, hi)`` of that axis occupy one
contiguous byte range of the file.  To serve ``A[idx]`` BigArray views only
that range as an ndarray ``sub`` (whose major axis has ``hi - lo`` rows) and lets
NumPy apply an index rewritten relative to ``lo``.  This module does the
analysis; it never touches memory.

The rewritten element keeps the *kind* of the original (int stays int, slice
stays slice, integer array stays integer array, boolean mask stays boolean
mask), because NumPy's result layout for mixed basic/advanced indexing depends
only on the kinds and positions of the index elements, never on their values.
(An advanced element that selects nothing becomes an empty integer array: to
NumPy a 1-d mask is the integer array of its True positions.)
Whatever this module does not recognise (field names, floats, malformed
indices) is reported as "whole range, index unchanged", so that NumPy itself
decides — and raises its own error — on a view of the whole array.

Empty selections follow NumPy's rules exactly, as the view has fewer rows than
the array and NumPy can no longer check the original index against it:

- a boolean mask must match the length of each axis it covers, except where
  the mask itself has length 0 (an empty mask fits any axis);
- integer arrays are bounds-checked only when the advanced indices together
  select something: when they broadcast to an empty shape NumPy checks no
  entry of them (plain ints and 0-d integer arrays, which NumPy reads as
  ints, are always checked);
- a 0-d boolean is an advanced index of length 1 (True) or 0 (False).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MajorRange", "major_range"]


@dataclass(frozen=True)
class MajorRange:
    """Rows ``[lo, hi)`` of the major axis an index needs, and the index to
    apply to a view of exactly those rows."""

    lo: int
    """First row touched."""
    hi: int
    """One past the last row touched (``lo == hi``: nothing is touched)."""
    index: Any
    """The index to apply to the view of rows ``[lo, hi)``."""


_INTP_MIN = int(np.iinfo(np.intp).min)
_INTP_MAX = int(np.iinfo(np.intp).max)

# Kinds of index elements, by how many dimensions they consume.
_NEWAXIS = "newaxis"    # None: consumes 0
_ELLIPSIS = "ellipsis"  # ...: consumes what the others leave
_SCALAR_BOOL = "bool0"  # True/False or 0-d bool array: consumes 0 (advanced)
_INT = "int"            # consumes 1
_SLICE = "slice"        # consumes 1
_INT_ARRAY = "intarr"   # consumes 1 (advanced)
_BOOL_ARRAY = "boolarr"  # consumes its ndim (advanced)


def _classify(elem: Any) -> tuple[str, Any, int] | None:
    """Return ``(kind, normalised element, dims consumed)``, or None when the
    element is not one this module reasons about."""
    if elem is None:
        return _NEWAXIS, None, 0
    if elem is Ellipsis:
        return _ELLIPSIS, elem, 0
    if isinstance(elem, slice):
        return _SLICE, elem, 1
    # bool is an int subclass, but NumPy treats scalar booleans as 0-d masks.
    if isinstance(elem, (bool, np.bool_)):
        return _SCALAR_BOOL, elem, 0
    if not isinstance(elem, (np.ndarray, list, tuple)) or (
        isinstance(elem, np.ndarray) and elem.ndim == 0 and elem.dtype != np.bool_
    ):
        # NumPy reads a 0-d integer array as an int, not as an advanced index.
        try:
            return _INT, operator.index(elem), 1
        except TypeError:
            return None
    arr = np.asarray(elem)
    if arr.size == 0 and not isinstance(elem, np.ndarray):
        arr = arr.astype(np.intp)  # NumPy reads an empty sequence as no indices
    if arr.dtype == np.bool_:
        if arr.ndim == 0:
            return _SCALAR_BOOL, elem, 0
        return _BOOL_ARRAY, arr, arr.ndim
    if np.issubdtype(arr.dtype, np.integer):
        # NumPy casts index arrays to intp (unsafely: uint64 entries wrap
        # around).  Do the same before any arithmetic: in a small dtype
        # ``arr + n`` or ``arr < -n`` overflows once the axis is longer than
        # the dtype's range.
        return _INT_ARRAY, arr.astype(np.intp, copy=False), 1
    return None


def _whole(n: int, index: Any) -> MajorRange:
    return MajorRange(0, n, index)


def _advanced_shape(classified: list[tuple[str, Any, int]]) -> tuple[int, ...] | None:
    """The shape the advanced indices broadcast to, or None when there are
    none or they do not broadcast (NumPy then raises its own error on the
    view)."""
    shapes: list[tuple[int, ...]] = []
    for kind, elem, _ in classified:
        if kind == _INT_ARRAY:
            shapes.append(elem.shape)
        elif kind == _BOOL_ARRAY:
            # A mask stands for the integer arrays of its nonzero() entries.
            shapes.append((int(np.count_nonzero(elem)),))
        elif kind == _SCALAR_BOOL:
            shapes.append((1 if elem else 0,))
    if not shapes:
        return None
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        return None


def major_range(index: Any, shape: tuple[int, ...], axis: int) -> MajorRange:
    """Find which rows of major axis ``axis`` of an array of ``shape`` the
    ``index`` touches.

    Parameters
    ----------
    index
        Anything accepted by ``ndarray.__getitem__``.
    shape
        Shape of the indexed array (``ndim >= 1``).
    axis
        The major axis: 0 or ``len(shape) - 1``.

    Returns
    -------
    MajorRange
        The rows to map and the index to apply to them.

    Raises
    ------
    IndexError
        An integer out of bounds on the major axis, or an integer array
        entry out of bounds there while the advanced indices select
        something, or a boolean mask along it whose length is neither 0 nor
        the axis length; with NumPy's wording.
    """
    elems = index if isinstance(index, tuple) else (index,)
    n = shape[axis]
    maybe = [_classify(e) for e in elems]
    classified = [c for c in maybe if c is not None]
    if len(classified) != len(maybe):
        return _whole(n, index)
    kinds = [c[0] for c in classified]
    consumed = sum(c[2] for c in classified)
    if kinds.count(_ELLIPSIS) > 1 or consumed > len(shape):
        return _whole(n, index)

    # Find the element that consumes dimension `axis`.
    dim = 0
    pos = None
    for i, (kind, _, ndims) in enumerate(classified):
        if kind == _ELLIPSIS:
            dim += len(shape) - consumed
        elif dim <= axis < dim + ndims:
            pos = i
            break
        else:
            dim += ndims
        if dim > axis:
            break  # the major axis lies inside the Ellipsis
    if pos is None:
        return _whole(n, index)
    kind, elem, ndims = classified[pos]
    if kind == _BOOL_ARRAY and ndims != 1:
        return _whole(n, index)

    empty = None
    if kind in (_INT_ARRAY, _BOOL_ARRAY):
        advanced = _advanced_shape(classified)
        if advanced is not None and 0 in advanced:
            empty = advanced
    lo, hi, rel = _restrict(kind, elem, n, axis, empty)
    rewritten = elems[:pos] + (rel,) + elems[pos + 1:]
    return MajorRange(lo, hi, rewritten)


def _restrict(
    kind: str, elem: Any, n: int, axis: int, empty: tuple[int, ...] | None
) -> tuple[int, int, Any]:
    """Rows ``[lo, hi)`` that one major-axis element selects, and the element
    rewritten relative to ``lo``.

    ``empty`` is the shape the advanced indices broadcast to when it has no
    elements (None otherwise): an advanced major-axis element then selects no
    row, and becomes an integer array of that shape, which has no entries and
    broadcasts with the other advanced indices exactly as the original did.
    """
    if kind == _INT:
        if not _INTP_MIN <= elem <= _INTP_MAX:
            # NumPy refuses an int beyond intp whatever the axis length
            # (OverflowError or IndexError, by value): let it, on no rows.
            return 0, 0, elem
        k = elem + n if elem < 0 else elem
        if not 0 <= k < n:
            raise IndexError(f"index {elem} is out of bounds for axis {axis} with size {n}")
        return k, k + 1, 0
    if kind == _SLICE:
        start, stop, step = elem.indices(n)
        count = len(range(start, stop, step))
        if count == 0:
            return 0, 0, slice(0, 0)
        last = start + (count - 1) * step
        if step > 0:
            return start, last + 1, slice(0, last + 1 - start, step)
        # Descending: the first row selected is the highest one.
        return last, start + 1, slice(start - last, None, step)
    if kind == _INT_ARRAY:
        if empty is not None:
            return 0, 0, np.zeros(empty, np.intp)
        arr = elem
        if arr.size == 0:
            # Only when the advanced indices do not broadcast: NumPy raises
            # that on the view.
            return 0, 0, arr
        bad = (arr < -n) | (arr >= n)
        if bad.any():
            raise IndexError(
                f"index {arr[bad].flat[0]} is out of bounds for axis {axis} with size {n}"
            )
        arr = np.where(arr < 0, arr + n, arr)
        lo = int(arr.min())
        return lo, int(arr.max()) + 1, arr - lo
    # 1-d boolean mask along the major axis.
    mask = elem
    if mask.shape[0] not in (0, n):
        raise IndexError(
            f"boolean index did not match indexed array along axis {axis}; size of axis "
            f"is {n} but size of corresponding boolean axis is {mask.shape[0]}"
        )
    if empty is not None:
        return 0, 0, np.zeros(empty, np.intp)
    rows = np.flatnonzero(mask)
    if rows.size == 0:
        # Only when the advanced indices do not broadcast: NumPy raises that
        # on the view.
        return 0, 0, mask[:0]
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    return lo, hi, mask[lo:hi]

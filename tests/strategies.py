"""Hypothesis strategies shared by the whole test suite.

Arrays are kept small (a few dozen elements): the properties are about
layout and indexing, and a small block size in the backends under test makes
even small arrays span several blocks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# ------------------------------------------------------------------ layouts

_SCALAR_DTYPES = [
    np.dtype(t) for t in (
        "?", "i1", "u1", ">i2", "<u2", "i4", "u4", "i8", ">u8",
        "f2", "f4", ">f8", "<f8", "c8", "c16",
    )
]
_STRUCTURED_DTYPES = [
    np.dtype([("a", "i4"), ("b", "f8")]),
    np.dtype([("x", "u1"), ("y", ">i4")], align=True),  # with padding
    np.dtype([("p", "i2", (3,)), ("q", [("r", "?"), ("s", "c8")])]),  # nested
]


def dtypes() -> st.SearchStrategy[np.dtype]:
    """Bool, ints, floats, complex (both byte orders) and structured dtypes
    (with padding, subarray fields and nesting)."""
    return st.sampled_from(_SCALAR_DTYPES + _STRUCTURED_DTYPES)


def shapes(max_dims: int = 3, max_side: int = 7) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes of 0 to ``max_dims`` dimensions, empty ones included."""
    return hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side)


def orders() -> st.SearchStrategy[str]:
    """``'C'`` or ``'F'``."""
    return st.sampled_from("CF")


def contents(dtype: np.dtype, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Arrays of ``dtype`` and ``shape``, without NaN (NaN != NaN would make
    equal structured arrays compare unequal)."""
    return hnp.arrays(dtype, shape, elements=hnp.from_dtype(dtype, allow_nan=False))


# ----------------------------------------------------------------- indices


def _ints(n: int) -> st.SearchStrategy[int]:
    """In-bounds integers for an axis of size ``n`` (> 0), negative too."""
    return st.integers(-n, n - 1)


def _slices(n: int) -> st.SearchStrategy[slice]:
    """Slices with any start/stop (out of range too) and any step."""
    bound = st.none() | st.integers(-n - 2, n + 2)
    step = st.none() | st.integers(-4, 4).filter(bool)
    return st.builds(slice, bound, bound, step)


@st.composite
def basic_indices(draw: st.DrawFn, shape: tuple[int, ...]) -> Any:
    """Basic index expressions for ``shape``: ints (negative too), slices
    (negative steps too), at most one Ellipsis, newaxis anywhere, fewer
    indices than dimensions; sometimes a bare element instead of a tuple."""
    nidx = draw(st.integers(0, len(shape)))
    elems: list[Any] = []
    for n in shape[:nidx]:
        if n > 0 and draw(st.booleans()):
            elems.append(draw(_ints(n)))
        else:
            elems.append(draw(_slices(n)))
    if draw(st.booleans()):
        # An Ellipsis stands for the dimensions after its position that the
        # explicit elements do not cover: shift the remainder to the end.
        pos = draw(st.integers(0, len(elems)))
        tail = len(elems) - pos
        if tail:
            rest = [
                draw(_ints(n)) if n > 0 and draw(st.booleans()) else draw(_slices(n))
                for n in shape[len(shape) - tail:]
            ]
            elems[pos:] = rest
        elems.insert(pos, Ellipsis)
    for _ in range(draw(st.integers(0, 2))):
        elems.insert(draw(st.integers(0, len(elems))), None)
    if len(elems) == 1 and draw(st.booleans()):
        return elems[0]
    return tuple(elems)


@st.composite
def advanced_indices(draw: st.DrawFn, shape: tuple[int, ...]) -> Any:
    """Index expressions with at least one integer array or boolean mask,
    mixed with ints, slices and 0-d booleans (``shape`` has at least one
    dimension).

    Integer arrays share one broadcastable shape; masks are 1-d along their
    axis or cover the whole array.  Empty selections are drawn on purpose,
    as NumPy checks less there: masks of length 0 (which fit any axis),
    integer arrays with out-of-range entries (checked only when the advanced
    indices select something) and a 0-d ``False``.
    """
    if draw(st.booleans()) and len(shape) > 1:
        return draw(hnp.arrays(np.bool_, shape))
    arrshape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=4))
    elems: list[Any] = []
    nidx = draw(st.integers(1, len(shape)))
    kinds = draw(st.lists(st.sampled_from(["int", "slice", "intarr", "mask"]), min_size=nidx, max_size=nidx))
    if not any(k in ("intarr", "mask") for k in kinds):
        kinds[draw(st.integers(0, nidx - 1))] = "intarr" if all(shape[:nidx]) else "mask"
    if sum(k == "mask" for k in kinds) > 1:
        # Two masks must select the same number of elements: keep just one.
        first = kinds.index("mask")
        kinds = [k if k != "mask" or i == first else "slice" for i, k in enumerate(kinds)]
    for kind, n in zip(kinds, shape):
        if kind == "intarr" and n > 0:
            # Now and then out of range: an IndexError, unless nothing is selected.
            high = n - 1 + draw(st.sampled_from([0, 0, 0, 2]))
            elems.append(draw(hnp.arrays(np.intp, arrshape, elements=st.integers(-n, high))))
        elif kind == "mask":
            length = draw(st.sampled_from([n, n, n, 0]))
            mask = draw(hnp.arrays(np.bool_, (length,)))
            # A mask broadcasts against the integer arrays as a 1-d index
            # array of its True count; keep the two compatible.
            if "intarr" in kinds and mask.sum() not in (1, arrshape[-1]):
                mask[:] = False
                mask[: min(length, 1)] = True
            elems.append(mask)
        elif kind == "int" and n > 0:
            elems.append(draw(_ints(n)))
        else:
            elems.append(draw(_slices(n)))
    if draw(st.integers(0, 3)) == 0:
        # A 0-d boolean: an advanced index of length 1 (True) or 0 (False).
        elems.insert(draw(st.integers(0, len(elems))), draw(st.booleans()))
    if draw(st.booleans()):
        elems.insert(draw(st.integers(0, len(elems))), Ellipsis)
    return tuple(elems)


@st.composite
def _shapes_broadcasting_to(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shapes that ``numpy.broadcast_to(value, shape)`` accepts: trailing
    dimensions of ``shape``, some of them replaced by 1."""
    ndim = draw(st.integers(0, len(shape)))
    tail = shape[len(shape) - ndim:]
    return tuple(1 if draw(st.booleans()) else n for n in tail)


def values_for(dtype: np.dtype, shape: tuple[int, ...]) -> st.SearchStrategy[Any]:
    """Values assignable to a target of ``shape``: a scalar, or an array of a
    shape that broadcasts to it."""
    scalar = hnp.from_dtype(dtype, allow_nan=False)
    arrays = _shapes_broadcasting_to(shape).flatmap(lambda s: contents(dtype, s))
    return scalar | arrays

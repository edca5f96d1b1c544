"""Property-based tests: BigArray behaves as an ndarray with the same contents.

Each property builds the same data as an ndarray (the oracle) and as a BigArray
on each backend, applies the same index or update to both, and compares.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import advanced_indices, basic_indices, contents, dtypes, orders, shapes, values_for
from zbigarray.bigarray import BigArray
from zbigarray.bigarray._memory import memory_owner

PROPERTY_SETTINGS = settings(max_examples=120, deadline=None)


@st.composite
def arrays_and_oracles(draw: st.DrawFn, make_array: Callable[..., BigArray]) -> tuple[BigArray, np.ndarray]:
    shape, dtype, order = draw(shapes()), draw(dtypes()), draw(orders())
    oracle = np.array(draw(contents(dtype, shape)), order=order)
    A = make_array(shape, dtype, order)
    A[...] = oracle
    return A, oracle


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except IndexError as exc:
        return "IndexError", exc


def _assert_read_matches(A: BigArray, oracle: np.ndarray, idx: Any) -> Any:
    kind, want = _outcome(lambda: oracle[idx])
    got_kind, got = _outcome(lambda: A[idx])
    assert got_kind == kind, (got, want)
    if kind != "ok":
        return None
    assert type(got) is type(want)
    np.testing.assert_array_equal(got, want)
    if isinstance(want, np.ndarray):
        assert (got.shape, got.dtype) == (want.shape, want.dtype)
    return got


@PROPERTY_SETTINGS
@given(data=st.data())
def test_basic_index_reads_as_numpy_and_is_a_view(make_array, data):
    A, oracle = data.draw(arrays_and_oracles(make_array))
    idx = data.draw(basic_indices(A.shape), label="idx")
    got = _assert_read_matches(A, oracle, idx)
    if isinstance(got, np.ndarray) and got.size:
        assert got.strides == oracle[idx].strides
        assert memory_owner(got)[1].root is A
        # A view: writing through it changes the array.
        fresh = data.draw(values_for(A.dtype, got.shape), label="value")
        got[...] = fresh
        oracle[idx] = fresh
        np.testing.assert_array_equal(A[...], oracle)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_basic_index_writes_as_numpy(make_array, data):
    A, oracle = data.draw(arrays_and_oracles(make_array))
    idx = data.draw(basic_indices(A.shape), label="idx")
    kind, target = _outcome(lambda: oracle[idx])
    if kind != "ok":
        return
    value = data.draw(values_for(A.dtype, np.shape(target)), label="value")
    oracle[idx] = value
    A[idx] = value
    np.testing.assert_array_equal(A[...], oracle)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_advanced_index_reads_and_writes_as_numpy(make_array, data):
    A, oracle = data.draw(arrays_and_oracles(make_array))
    if not A.ndim:
        return
    idx = data.draw(advanced_indices(A.shape), label="idx")
    got = _assert_read_matches(A, oracle, idx)
    if got is None:
        return
    value = data.draw(values_for(A.dtype, np.shape(got)), label="value")
    oracle[idx] = value
    A[idx] = value
    np.testing.assert_array_equal(A[...], oracle)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_assignment_from_an_overlapping_view_as_numpy(make_array, data):
    A, oracle = data.draw(arrays_and_oracles(make_array))
    dst = data.draw(basic_indices(A.shape), label="dst")
    src = data.draw(basic_indices(A.shape), label="src")
    kind, target = _outcome(lambda: oracle[dst])
    skind, source = _outcome(lambda: oracle[src])
    if kind != "ok" or skind != "ok":
        return
    try:
        np.broadcast_to(source, np.shape(target))
    except ValueError:
        return
    oracle[dst] = source
    A[dst] = A[src]
    np.testing.assert_array_equal(A[...], oracle)

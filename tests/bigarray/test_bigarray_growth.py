"""resize and append: header-only growth, writes of the new part only."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zbigarray.bigarray import BigArray
from zbigarray.bigfile import WRITEOUT_MARKSTORED, WRITEOUT_STORE

from .backends import MemFile, file_array

WRITEOUT = WRITEOUT_STORE | WRITEOUT_MARKSTORED


def _filled(shape, order="C", blksize=4096):
    f = MemFile(blksize)
    fileh = f.fileh_open()
    A = BigArray(shape, "i4", fileh, order)
    A[...] = np.arange(A.size).reshape(shape, order=order)
    fileh.dirty_writeout(WRITEOUT)
    f.loaded.clear()
    f.stored.clear()
    return A, f


@pytest.mark.parametrize("order, new", [("C", (10**6, 16)), ("C", (5, 16)), ("F", (16, 10**6)), ("F", (16, 3))])
def test_resize_touches_no_block(order, new):
    A, f = _filled((100, 16) if order == "C" else (16, 100), order)
    A.resize(new)
    assert A.shape == new
    assert not A._fileh.isdirty()
    assert not f.loaded and not f.stored


def test_grown_region_reads_zeros_then_old_data_after_shrink_and_regrow():
    A, _ = _filled((100, 16))
    A.resize((200, 16))
    np.testing.assert_array_equal(A[100:], 0)
    np.testing.assert_array_equal(A[:100], np.arange(1600).reshape(100, 16))
    A.resize((10, 16))
    A.resize((100, 16))
    np.testing.assert_array_equal(A[:], np.arange(1600).reshape(100, 16))


@pytest.mark.parametrize(
    "order, old, new",
    [
        ("C", (4, 5), (4, 6)),
        ("C", (4, 5), (20,)),
        ("C", (4, 5), (4, 5, 1)),
        ("F", (4, 5), (5, 5)),
        ("C", (3,), ()),
        ("C", (), (1,)),
    ],
)
def test_resize_that_would_move_data_is_value_error(order, old, new):
    A = file_array(old, "f8", order)
    with pytest.raises(ValueError, match="cannot resize"):
        A.resize(new)
    assert A.shape == old


@pytest.mark.parametrize(
    "order, old, new",
    [
        ("C", (1, 5), (1, 9)),    # one row: its elements keep their offsets
        ("F", (5, 1), (9, 1)),
        ("C", (0, 5), (3, 7, 2)),  # no elements: any shape
        ("C", (4, 5), (0, 3)),    # no common element
        ("C", (), ()),
    ],
)
def test_resize_allowed_where_the_layout_keeps_every_element(order, old, new):
    A = file_array(old, "f8", order)
    A.resize(new)
    assert A.shape == new


def test_resize_validates_new_shape():
    A = file_array((3, 4), "f8")
    with pytest.raises(ValueError, match="negative"):
        A.resize((-1, 4))
    with pytest.raises(ValueError, match="too big"):
        A.resize((2**62, 4))
    A.resize(np.array([5, 4]), refcheck=False)
    assert A.shape == (5, 4)


@pytest.mark.parametrize("order", "CF")
def test_append_loads_and_stores_only_the_blocks_of_the_new_rows(order):
    # 4 KiB blocks hold 64 rows of 16 int32; 1000 rows end inside block 15.
    shape = (1000, 16) if order == "C" else (16, 1000)
    A, f = _filled(shape, order)
    new = np.full((100, 16) if order == "C" else (16, 100), -1, "i4")
    A.append(new)
    A._fileh.dirty_writeout(WRITEOUT)
    # Rows 1000..1099: bytes [64000, 70400) -> blocks 15, 16, 17.  Block 15
    # is partly old data, so it is loaded; 16 and 17 are new (zeros).
    assert set(f.stored) == {15, 16, 17}
    assert set(f.loaded) <= {15, 16, 17}
    assert A.shape == ((1100, 16) if order == "C" else (16, 1100))
    np.testing.assert_array_equal(A[1000:] if order == "C" else A[:, 1000:], new)


def test_views_taken_before_append_keep_aliasing():
    A = file_array((10, 3), "f8")
    before = A[8:]
    A.append(np.ones((5, 3)))
    before[:] = 7
    np.testing.assert_array_equal(A[8:10], 7)
    A[9] = 8
    np.testing.assert_array_equal(before[1], 8)


@pytest.mark.parametrize(
    "order, shape, values",
    [("C", (4, 3), np.ones((2, 4))), ("C", (4, 3), np.ones(3)), ("F", (4, 3), np.ones((2, 3))), ("C", (4, 3), 1.0)],
)
def test_append_with_mismatched_shape_is_value_error(order, shape, values):
    A = file_array(shape, "f8", order)
    with pytest.raises(ValueError, match="must match"):
        A.append(values)
    assert A.shape == shape


def test_append_to_0d_is_value_error():
    with pytest.raises(ValueError, match="0-d"):
        file_array((), "f8").append(np.ones(1))


def test_append_that_fails_to_cast_keeps_the_shape():
    A = file_array((4,), "i4")
    with pytest.raises(ValueError):
        A.append(np.array(["a", "b"]))
    assert A.shape == (4,)


def test_append_own_data_and_another_bigarray():
    A = file_array((3, 2), "i8")
    A[:] = [[1, 2], [3, 4], [5, 6]]
    A.append(A)
    B = file_array((1, 2), "i8")
    B[:] = 9
    A.append(B)
    np.testing.assert_array_equal(A[:], [[1, 2], [3, 4], [5, 6], [1, 2], [3, 4], [5, 6], [9, 9]])


@settings(max_examples=100, deadline=None)
@given(
    order=st.sampled_from("CF"),
    chunks=st.lists(st.integers(0, 300), min_size=1, max_size=6),
)
def test_appends_build_what_concatenate_builds(make_array, order, chunks):
    axis = 0 if order == "C" else 1
    A = make_array((0, 7) if order == "C" else (7, 0), "i2", order)
    parts = []
    for i, k in enumerate(chunks):
        part = np.full((k, 7) if order == "C" else (7, k), i, "i2")
        parts.append(part)
        A.append(part)
    np.testing.assert_array_equal(A[...], np.concatenate(parts, axis=axis))

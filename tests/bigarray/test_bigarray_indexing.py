"""BigArray indexing: views, laziness, errors and aliasing."""

from __future__ import annotations

import gc
import math
from typing import Any
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import orders, values_for
from zbigarray.bigarray import BigArray
from zbigarray.bigarray._memory import memory_owner
from zbigarray.bigfile import WRITEOUT_MARKSTORED, WRITEOUT_STORE

from tests.common import run_in_child

from .backends import MemFile, file_array

MiB = 1024 * 1024
GiB = 1024 * MiB


def _mapping(view: np.ndarray):
    return memory_owner(view)[1]


def test_int_index_of_10gib_array_loads_one_block():
    # 10 GiB of float64 rows of 4 KiB, in 2 MiB blocks: row k lies in one block.
    f = MemFile(2 * MiB)
    A = BigArray((10 * GiB // 4096, 512), "f8", f.fileh_open())
    k = 1234567
    row = A[k]
    assert row.shape == (512,)
    blk = k * 4096 // (2 * MiB)
    assert _mapping(row).file_offset(row) == k * 4096
    assert row.sum() == 0
    assert f.loaded == {blk: 1}


@pytest.mark.parametrize("order", "CF")
def test_slice_loads_only_the_blocks_of_its_major_range(order):
    f = MemFile(4096)
    f.fault_around = 0      # exact loads (fault-around reads ahead, beyond the view)
    A = BigArray((64, 512), "u1", f.fileh_open(), order) if order == "C" else \
        BigArray((512, 64), "u1", f.fileh_open(), order)
    idx = np.s_[10:30:7] if order == "C" else np.s_[:, 10:30:7]
    view = A[idx]
    # Rows 10, 17, 24 of 512 bytes: bytes [5120, 12800) -> blocks 1..3.
    assert _mapping(view).file_offset(view) == 5120
    view.sum()
    assert set(f.loaded) == {1, 2, 3}


def test_slices_share_one_mapping_of_the_whole_array():
    # A scan in slices done twice finds the pages of the first pass mapped
    # already: no fault, no load, as numpy.memmap.
    f = MemFile(4096)
    A = BigArray((64, 1024), "u1", f.fileh_open())
    views = [A[lo:lo + 8] for lo in range(0, 64, 8)]
    vmas = {id(_mapping(v).vma) for v in views}
    assert len(vmas) == 1
    assert _mapping(views[0]).vma.filerange() == (0, 16)
    for v in views:
        v.sum()
    assert f.loaded == {b: 1 for b in range(16)}
    del views
    for lo in range(0, 64, 8):
        A[lo:lo + 8].sum()
    assert f.loaded == {b: 1 for b in range(16)}
    assert A._fileh.stats()["nvma"] == 1


def test_array_beyond_the_map_window_maps_the_window_around_an_access(monkeypatch):
    from zbigarray.bigarray import _bigarray

    monkeypatch.setattr(_bigarray, "MAP_WINDOW", 8 * 4096)
    f = MemFile(4096)
    f.fault_around = 0
    A = BigArray((100, 4096), "u1", f.fileh_open())
    row = A[21]
    assert _mapping(row).vma.filerange() == (16, 8)
    # An access across windows maps what it needs, from its window's start.
    view = A[21:30]
    assert _mapping(view).vma.filerange() == (16, 14)
    assert f.loaded == {}
    view.sum()
    assert set(f.loaded) == set(range(21, 30))


def _map_request_only_when_the_array_does_not_fit_address_space() -> None:
    import resource

    from tests.bigarray.backends import MemFile
    from zbigarray.bigarray import BigArray
    from zbigarray.bigarray._memory import memory_owner

    f = MemFile(2 * MiB)
    fileh = f.fileh_open()
    A = BigArray((60 * GiB // 4096, 512), "f8", fileh)
    # Address space for the process as it is and 1 GiB more: the array's
    # 60 GiB cannot be reserved, the one block asked for can.
    with open("/proc/self/status") as st:
        vm_kib = next(int(line.split()[1]) for line in st if line.startswith("VmSize:"))
    limit = vm_kib * 1024 + GiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    row = A[1234567]
    assert memory_owner(row)[1].vma.filerange() == (1234567 * 4096 // (2 * MiB), 1)
    assert row.sum() == 0


def test_mapping_falls_back_to_the_request_when_address_space_is_short():
    run_in_child(_map_request_only_when_the_array_does_not_fit_address_space)


@pytest.mark.parametrize(
    "idx",
    [
        np.s_[5:5], np.s_[7:2], np.s_[2:2, ::-1], np.s_[[]], np.s_[np.zeros(10, bool)],
        np.s_[np.zeros(0, bool)], np.s_[[12], []], np.s_[[3], False], np.s_[np.arange(10) == 4, []],
    ],
)
def test_empty_result_maps_nothing(idx):
    A = file_array((10, 4), "f8")
    nvma = A._fileh.stats()["nvma"]
    got = A[idx]
    want = np.zeros((10, 4))[idx]
    assert (got.shape, got.dtype) == (want.shape, want.dtype)
    assert A._fileh.stats()["nvma"] == nvma
    A[idx] = 1  # writes nothing, and does not fail
    assert A._fileh.stats()["nvma"] == nvma


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 5)])
def test_array_without_elements_reads_and_writes_as_numpy(shape):
    A = file_array(shape, "i4")
    a = np.zeros(shape, "i4")
    np.testing.assert_array_equal(np.asarray(A), a)
    assert A[:].shape == a[:].shape
    A[...] = 7
    assert A[..., None].shape == a[..., None].shape


def test_basic_index_returns_a_view_writes_reach_the_file():
    f = MemFile(4096)
    fileh = f.fileh_open()
    A = BigArray((100, 100), "i8", fileh)
    view = A[50:60, ::-1]
    view[...] = np.arange(10)[:, None]
    assert isinstance(view, np.ndarray) and _mapping(view).root is A
    fileh.dirty_writeout(WRITEOUT_STORE | WRITEOUT_MARKSTORED)
    # Rows 50..59 are bytes [40000, 48000): blocks 9, 10 and 11.
    assert sorted(f.blocks) == [9, 10, 11]
    stored = np.frombuffer(b"".join(f.blocks[b] for b in (9, 10, 11)), "i8")
    rows = stored[(40000 - 9 * 4096) // 8:][:1000].reshape(10, 100)
    np.testing.assert_array_equal(rows, np.repeat(np.arange(10), 100).reshape(10, 100))


def test_full_int_index_gives_a_scalar_as_numpy():
    A = file_array((3, 4), "f4")
    A[1, 2] = 5
    got = A[1, 2]
    assert type(got) is np.float32 and got == 5
    assert A[-2, -2] == 5


@pytest.mark.parametrize("idx", [np.s_[3], np.s_[-4], np.s_[0, 5], np.s_[..., -6], np.s_[[0, 3]], np.s_[:, [5]]])
@pytest.mark.parametrize("order", "CF")
def test_out_of_range_int_is_index_error(idx, order):
    A = file_array((3, 5), "f8", order)
    with pytest.raises(IndexError, match="out of bounds"):
        A[idx]
    with pytest.raises(IndexError, match="out of bounds"):
        A[idx] = 1


@pytest.mark.parametrize("idx", [np.s_[1.5], np.s_["x"], np.s_[..., ...], np.s_[0, 0, 0], np.s_[np.ones(4, bool)]])
def test_invalid_index_raises_what_numpy_raises(idx):
    A = file_array((3, 5), "f8")
    with pytest.raises(IndexError) as want:
        np.zeros((3, 5))[idx]
    with pytest.raises(type(want.value)):
        A[idx]


def test_field_access_on_structured_array():
    A = file_array(6, [("a", "i4"), ("b", "f8")])
    A["b"] = np.arange(6)
    A[2:4]["a"] = 7
    np.testing.assert_array_equal(A["a"], [0, 0, 7, 7, 0, 0])
    np.testing.assert_array_equal(A[["a", "b"]][1:3]["b"], [1, 2])


def test_views_stay_valid_after_the_bigarray_is_gone():
    A = file_array((1000,), "i4")
    A[:] = np.arange(1000)
    view = A[100:200]
    del A
    gc.collect()
    np.testing.assert_array_equal(view, np.arange(100, 200))
    view[:] = 0
    assert view.sum() == 0


def test_two_views_alias_the_same_memory():
    A = file_array((100, 10), "f8")
    v1, v2 = A[10:20], A[15:30]
    v1[5:] = 3.5
    np.testing.assert_array_equal(v2[:5], 3.5)


@pytest.mark.parametrize("order", "CF")
def test_overlapping_assignment_through_two_mappings_is_correct(order):
    # NumPy cannot see that the two mappings overlap (different addresses);
    # BigArray must copy the value first, as NumPy does for one mapping.
    A = file_array(5000, "i8", order)
    a = np.arange(5000)
    A[:] = a
    A[1:] = A[:-1]
    a[1:] = a[:-1].copy()
    np.testing.assert_array_equal(A[:], a)
    A[:-7] = A[7:]
    a[:-7] = a[7:].copy()
    np.testing.assert_array_equal(A[:], a)
    A[::-1] = A[:]
    np.testing.assert_array_equal(A[:], a[::-1])


def test_assignment_from_another_bigarray_and_broadcasting():
    A = file_array((4, 3), "f8")
    B = file_array(3, "i4")
    B[:] = [1, 2, 3]
    A[...] = B
    np.testing.assert_array_equal(A[:], np.tile([1, 2, 3], (4, 1)))
    A[[0, 2]] = [[9], [8]]
    np.testing.assert_array_equal(A[:, 1], [9, 2, 8, 2])


def test_array_protocol():
    A = file_array((4, 3), "i4", "F")
    A[:] = np.arange(12).reshape(4, 3)
    a = np.asarray(A)
    assert a.flags.f_contiguous and _mapping(a).root is A
    a[0, 0] = 100
    assert A[0, 0] == 100
    assert np.array(A, copy=True).base is None
    c = np.asarray(A, dtype="f8")
    assert c.dtype == np.float64 and c[0, 0] == 100
    np.testing.assert_array_equal(A.__array__(copy=False), a)
    with pytest.raises(ValueError, match="copy"):
        A.__array__(np.float64, copy=False)
    assert np.add(A, 1)[0, 0] == 101


def test_0d_array():
    A = file_array((), "c16")
    A[()] = 1 + 2j
    assert A[()] == 1 + 2j
    assert A[...].shape == () and isinstance(A[...], np.ndarray)
    assert A[None].shape == (1,)
    np.testing.assert_array_equal(np.asarray(A), 1 + 2j)


def test_whole_view_beyond_the_address_space_is_memory_error_and_rows_still_work():
    A = BigArray(2**59, "f8", MemFile(4096).fileh_open())  # 4 EiB
    A[-1] = 5
    np.testing.assert_array_equal(A[-3:], [0, 0, 5])
    with pytest.raises(MemoryError, match="mmap"):
        np.asarray(A)


@pytest.mark.parametrize(
    ("nbytes", "size"),
    # 4 EiB fits the core's address arithmetic but mmap refuses it (ENOMEM);
    # 8 EiB does not fit the address space at all (OverflowError in the core).
    [(2**62, "4.00 EiB"), (2**63 - 1, "8.00 EiB")],
)
def test_view_too_big_to_map_is_memory_error_naming_its_size_as_numpy(make_array, nbytes, size):
    with pytest.raises(MemoryError, match="EiB"):
        np.empty(nbytes, np.uint8)
    A = make_array((nbytes,), np.uint8)
    for take in (np.asarray, lambda A: A[:], lambda A: A[1:]):
        with pytest.raises(MemoryError, match=size):
            take(A)
    A[-1] = 3  # the array stays usable in parts
    assert A[-2:].tolist() == [0, 3]


def test_closed_file_handle_is_value_error():
    A = file_array(1000, "f8")
    A[:10] = 1
    A._fileh.close()
    with pytest.raises(ValueError, match="closed"):
        A[5]
    with pytest.raises(ValueError, match="closed"):
        A[0] = 1


def _z(shape: int | tuple[int, ...], dtype: type = bool) -> np.ndarray:
    return np.zeros(shape, dtype)


# Empty arrays, empty selections and empty index arrays, with what NumPy does:
# - a boolean mask is checked against each axis it covers, except where the
#   mask itself has length 0 (then it matches any axis);
# - integer arrays are not bounds-checked when the advanced indices together
#   select nothing (they broadcast to an empty shape); plain ints and 0-d
#   integer arrays always are;
# - a 0-d boolean is an advanced index of length 1 (True) or 0 (False).
_EMPTY_CASES = [
    ((0, 1), np.s_[..., _z(0)]),  # found by hypothesis (F order: mask on the major axis)
    ((2, 1), np.s_[..., _z(0)]),
    ((2, 3), np.s_[:, _z(0)]),
    ((2, 3), np.s_[_z(0)]),
    ((2, 3), np.s_[_z(0), 1]),
    ((3,), np.s_[_z(0)]),
    ((0,), np.s_[_z(0)]),
    ((0,), np.s_[np.array([True])]),
    ((0,), np.s_[np.array([False])]),
    ((1,), np.s_[_z(2)]),
    ((0, 3), np.s_[:, np.array([True])]),
    ((3, 4), np.s_[np.array([True, False, False, True]), []]),
    ((3, 4), np.s_[_z(0), [1]]),
    ((3, 4), np.s_[_z(0), [1, 2]]),
    ((3, 4), np.s_[_z(3), [1, 2]]),
    ((4, 3), np.s_[[1, 2], _z(3)]),
    ((3, 4), np.s_[np.ones(3, bool), []]),
    ((3, 4), np.s_[[5], []]),
    ((3, 4), np.s_[[], [5]]),
    ((3, 4), np.s_[[-9], np.array([], np.intp), ...]),
    ((3, 4), np.s_[[[5]], _z((0, 1), np.intp)]),
    ((3, 4), np.s_[_z((0, 1), np.intp), [7]]),
    ((3, 4), np.s_[_z(3), [9]]),
    ((3, 4), np.s_[[9], _z(4)]),
    ((3, 4), np.s_[[5], False]),
    ((3, 4), np.s_[False, [5]]),
    ((3, 4), np.s_[np.array([5]), np.array(False)]),
    ((3, 4), np.s_[[5], True]),
    ((3, 4), np.s_[5, []]),
    ((3, 4), np.s_[[], 5]),
    ((3, 4), np.s_[np.array(5), []]),
    ((3, 4), np.s_[[], np.array(-5)]),
    ((3, 4), np.s_[np.array(1), [0, 1]]),
    ((3, 4), np.s_[[0, 1], np.array(-1)]),
    ((3, 4), np.s_[7, False]),
    ((3, 0), np.s_[[5], :]),
    ((0, 3), np.s_[:, [5]]),
    ((0, 3), np.s_[[0], :]),
    ((0, 3), np.s_[[], :]),
    ((0, 3), np.s_[:, []]),
    ((3, 4, 5), np.s_[[5], :, []]),
    ((3, 4, 5), np.s_[[], :, [9]]),
    ((3, 4, 5), np.s_[7, :, []]),
    ((3, 4, 5), np.s_[_z((3, 4)), [9]]),
    ((3, 4), np.s_[False]),
    ((0, 4), np.s_[True]),
    ((0, 4), np.s_[np.array(False)]),
    ((1, 2), _z((0, 2))),
    ((1, 2), _z((1, 0))),
    ((1, 2), _z((0, 5))),
    ((0, 2), _z((0, 0))),
    ((3,), np.s_[[[]]]),
    ((0,), np.s_[[]]),
    ((0, 0), np.s_[[], []]),
    ((0, 0), np.s_[_z(0), _z(0)]),
]


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except (IndexError, ValueError, TypeError) as exc:
        return type(exc).__name__, exc


@pytest.mark.parametrize("order", "CF")
@pytest.mark.parametrize(
    ("shape", "idx"), _EMPTY_CASES, ids=[f"case{i}" for i in range(len(_EMPTY_CASES))]
)
def test_empty_arrays_and_selections_index_as_numpy(make_array, shape, idx, order):
    a = np.arange(math.prod(shape), dtype="i4").reshape(shape, order=order)
    A = make_array(shape, "i4", order)
    A[...] = a
    kind, want = _outcome(lambda: a[idx])
    got_kind, got = _outcome(lambda: A[idx])
    assert got_kind == kind, (got, want)
    if kind != "ok":
        with pytest.raises(type(want)):
            A[idx] = 1
        return
    assert type(got) is type(want)
    assert (got.shape, got.dtype) == (want.shape, want.dtype)
    np.testing.assert_array_equal(got, want)
    a[idx] = -1
    A[idx] = -1
    np.testing.assert_array_equal(A[...], a)


# Index arrays of every integer dtype NumPy accepts, some narrower than intp
# and non-native; the axes they index are longer than a narrow dtype's range.
_INDEX_DTYPES = [np.dtype(t) for t in ("i1", "u1", "i2", "u2", ">i2", "i4", "<u4", "i8", "u8", ">u8")]


@st.composite
def _int_arrays(draw: st.DrawFn, n: int, size: int) -> np.ndarray:
    """Entries for an axis of ``n`` in a drawn integer dtype: negative ones
    where the dtype has them, now and then just out of bounds."""
    info = np.iinfo(draw(st.sampled_from(_INDEX_DTYPES)))
    high = n - 1 + draw(st.sampled_from([0, 0, 0, 2]))
    values = st.integers(max(info.min, -n - 2), min(info.max, high))
    return np.array(draw(st.lists(values, min_size=size, max_size=size)), dtype=info.dtype)


def _slices_of(n: int) -> st.SearchStrategy[slice]:
    bound = st.none() | st.integers(-n - 1, n + 1)
    return st.builds(slice, bound, bound, st.none() | st.sampled_from([-2, -1, 1, 2]))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_integer_index_arrays_of_any_dtype_index_as_numpy(make_array, data):
    order = data.draw(orders(), label="order")
    n = data.draw(st.sampled_from([200, 300, 70000]), label="n")
    shape = (n, 3) if order == "C" else (3, n)  # the long axis is the major one
    major = 0 if order == "C" else 1
    a = np.arange(3 * n, dtype="i4").reshape(shape, order=order)
    A = make_array(shape, "i4", order)
    A[...] = a
    size = data.draw(st.integers(1, 4), label="size")
    other = data.draw(
        _slices_of(3) | st.integers(-3, 2) | st.sampled_from([1, size]).flatmap(lambda m: _int_arrays(3, m)),
        label="other",
    )
    elems = [data.draw(_int_arrays(n, size), label="major"), other]
    idx = tuple(elems) if major == 0 else tuple(reversed(elems))

    kind, want = _outcome(lambda: a[idx])
    got_kind, got = _outcome(lambda: A[idx])
    assert got_kind == kind, (got, want)
    if kind != "ok":
        with pytest.raises(type(want)):
            A[idx] = 1
        return
    assert (got.shape, got.dtype) == (want.shape, want.dtype)
    np.testing.assert_array_equal(got, want)
    value = data.draw(values_for(a.dtype, want.shape), label="value")
    a[idx] = value
    A[idx] = value
    np.testing.assert_array_equal(A[...], a)


def test_small_integer_index_arrays_reach_past_their_dtype_range(make_array):
    A = make_array((300,), np.int32)
    A[:] = np.arange(300)
    np.testing.assert_array_equal(A[np.array([5, -1, -128], np.int8)], [5, 299, 172])
    A[np.array([5, 255], np.uint8)] = 7
    assert (A[5], A[255], A[4]) == (7, 7, 4)


@pytest.mark.parametrize(
    "idx",
    [
        np.array([2**64 - 1], np.uint64),  # wraps to -1 in intp, as in NumPy
        np.array([2**63], np.uint64),  # wraps to -2**63: out of bounds
        2**63, 2**64 - 1, -(2**63) - 1, 2**70, np.uint64(2**63), np.array(2**64 - 1, np.uint64),
        (slice(None), 2**63), (2**70, 0),
    ],
    ids=repr,
)
def test_indices_beyond_intp_as_numpy(idx):
    A = file_array((10, 2), "i8")
    a = np.arange(20).reshape(10, 2)
    A[...] = a
    try:
        want = a[idx]
    except (IndexError, OverflowError) as exc:
        with pytest.raises(type(exc)):
            A[idx]
        with pytest.raises(type(exc)):
            A[idx] = 0
    else:
        np.testing.assert_array_equal(A[idx], want)
        a[idx] = -1
        A[idx] = -1
        np.testing.assert_array_equal(A[...], a)

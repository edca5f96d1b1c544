"""ArrayRef: root + recipe of a view; picklable; deref re-creates it."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from tests.strategies import basic_indices, orders, shapes
from zbigarray.bigarray import ArrayRef, BigArray
from zbigarray.bigarray._memory import memory_owner

from .backends import file_array


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_deref_recreates_an_equal_view_of_the_root(make_array, data):
    shape, order = data.draw(shapes()), data.draw(orders())
    A = make_array(shape, "i4", order)
    A[...] = np.arange(A.size).reshape(shape)
    view = A[data.draw(basic_indices(shape), label="idx")]
    if not isinstance(view, np.ndarray):
        return
    ref = ArrayRef(view)
    if view.size:
        assert ref.root is A
    again = ref.deref()
    assert (again.shape, again.strides, again.dtype) == (view.shape, view.strides, view.dtype)
    np.testing.assert_array_equal(again, view)
    if view.size:
        # The same memory: a write through one shows in the other.
        again[...] = -1
        np.testing.assert_array_equal(view, -1)
        assert ArrayRef(again).root is A


def test_view_with_another_dtype_and_negative_strides():
    A = file_array((100, 10), "f8")
    A[:] = np.arange(1000.0).reshape(100, 10)
    view = A[90:3:-7].view("u1")[:, ::-5]
    ref = ArrayRef(view)
    assert ref.root is A and ref.dtype == np.uint8
    np.testing.assert_array_equal(ref.deref(), view)


class _Registry:
    """Pickles BigArrays by name, as ZODB pickles persistent objects by oid."""

    def __init__(self, **arrays: BigArray) -> None:
        self.by_name = arrays

    def dumps(self, obj: object) -> bytes:
        names = {id(a): n for n, a in self.by_name.items()}
        out = io.BytesIO()
        pickler = pickle.Pickler(out)
        pickler.persistent_id = lambda o: names.get(id(o)) if isinstance(o, BigArray) else None
        pickler.dump(obj)
        return out.getvalue()

    def loads(self, data: bytes) -> object:
        unpickler = pickle.Unpickler(io.BytesIO(data))
        unpickler.persistent_load = self.by_name.__getitem__
        return unpickler.load()


def test_pickle_stores_root_and_recipe():
    A = file_array((50, 40), "i2")
    A[:] = np.arange(2000).reshape(50, 40)
    registry = _Registry(A=A)
    ref = registry.loads(registry.dumps(ArrayRef(A[10:20, 5::2])))
    assert isinstance(ref, ArrayRef) and ref.root is A
    np.testing.assert_array_equal(ref.deref(), A[10:20, 5::2])


def test_plain_ndarray_root_is_the_basemost_ndarray():
    base = np.arange(60.0).reshape(6, 10).copy()
    view = base[1:5, ::-2].T
    ref = ArrayRef(view)
    assert ref.root is base
    again = ref.deref()
    np.testing.assert_array_equal(again, view)
    again[0, 0] = -5
    assert view[0, 0] == -5
    assert ArrayRef(again).root is base


def test_plain_ndarray_pickles_with_its_root():
    base = np.arange(24).reshape(4, 6).copy(order="F")
    r1, r2 = ArrayRef(base[1:3]), ArrayRef(base[:, 2])
    r1, r2 = pickle.loads(pickle.dumps((r1, r2)))
    assert r1.root is r2.root
    np.testing.assert_array_equal(r1.deref(), base[1:3])
    r1.deref()[1, 2] = 100  # aliases the unpickled root, not the original
    assert r2.deref()[2] == 100 and base[2, 2] == 14


def test_empty_view():
    A = file_array((10, 4), "f8")
    ref = ArrayRef(A[3:3])
    assert ref.deref().shape == (0, 4)


def test_non_ndarray_is_type_error():
    with pytest.raises(TypeError, match="ndarray"):
        ArrayRef([1, 2, 3])


def test_view_of_non_contiguous_base_is_value_error():
    strided = np.asarray(memoryview(bytearray(80)).cast("q")[::2])
    assert memory_owner(strided)[0] is strided
    with pytest.raises(ValueError, match="non-contiguous"):
        ArrayRef(strided[1:])


def test_view_reaching_outside_its_base_is_value_error():
    base = np.arange(10)
    with pytest.raises(ValueError, match="outside"):
        ArrayRef(as_strided(base[5:], (10,), (8,)))


def _assert_derefs_to(ref: ArrayRef, a: np.ndarray, root: np.ndarray) -> None:
    """``ref.deref()`` is ``a`` again: same class and layout, equal, and in
    the memory of the ndarray ``root``."""
    again = ref.deref()
    assert type(again) is type(a)
    assert (again.shape, again.strides, again.dtype) == (a.shape, a.strides, a.dtype)
    np.testing.assert_array_equal(again, a)
    if a.size:
        assert np.shares_memory(again, root)
        assert ArrayRef(again).root is ref.root


def _plain_roots() -> list[np.ndarray]:
    return [np.arange(60.0).reshape(6, 10), np.arange(60.0).reshape(6, 10, order="F")]


@pytest.mark.parametrize(
    "make_view",
    [
        lambda r: as_strided(r, (3, 4), (16, 8)),
        lambda r: as_strided(r[2:, 1:], (2, 3, 2), (8, r.strides[0], 0)),  # overlapping: stride 0
        lambda r: as_strided(r[::-1], (5,), (-r.itemsize,)),
        lambda r: sliding_window_view(r, (2, 3))[1:, ::2],
        lambda r: sliding_window_view(r[:, ::-1], 4, axis=1).T,
        lambda r: np.asarray(memoryview(r[1:3])).T,
    ],
    ids=["as_strided", "as_strided-overlap", "as_strided-reversed", "sliding", "sliding-reversed", "memoryview"],
)
@pytest.mark.parametrize("root", _plain_roots(), ids=["C", "F"])
def test_stride_tricks_views_find_their_ndarray_root(make_view, root):
    root = root.copy(order="A")
    view = make_view(root)
    ref = ArrayRef(view)
    assert ref.root is root
    _assert_derefs_to(ref, view, root)
    unpickled = pickle.loads(pickle.dumps(ref))
    _assert_derefs_to(unpickled, view, unpickled.root)


@pytest.mark.parametrize(
    "make_view",
    [
        lambda A: as_strided(A[10:], (5, 4), (A.strides[0] * 2, 8)),
        lambda A: sliding_window_view(A[3:9, 2], 3),
        lambda A: np.asarray(memoryview(A[40:])),
    ],
    ids=["as_strided", "sliding", "memoryview"],
)
def test_stride_tricks_views_find_their_bigarray_root(make_array, make_view):
    A = make_array((50, 4), "i8")
    A[...] = np.arange(200).reshape(50, 4)
    view = make_view(A)
    ref = ArrayRef(view)
    assert ref.root is A
    again = ref.deref()
    assert (again.shape, again.strides, again.dtype) == (view.shape, view.strides, view.dtype)
    np.testing.assert_array_equal(again, view)
    assert ArrayRef(again).root is A
    registry = _Registry(A=A)
    again = registry.loads(registry.dumps(ref)).deref()
    np.testing.assert_array_equal(again, view)


_RECORD = np.dtype([("a", "i4"), ("b", "f8")])


@pytest.mark.parametrize(
    "make_view",
    [
        lambda r: r.view(np.recarray),
        lambda r: r[1:7:2].view(np.recarray),
        lambda r: r[::-1].view(np.recarray)[2:],
        lambda r: np.rec.array(r, copy=False)[3:],
        lambda r: r["b"].reshape(2, 4).view(np.matrix)[:, ::-1],
    ],
    ids=["recarray", "recarray-slice", "recarray-reversed", "rec.array", "matrix"],
)
def test_subclass_derefs_to_the_same_subclass(make_view):
    root = np.zeros(8, _RECORD)
    root["a"], root["b"] = np.arange(8), np.arange(8) / 2
    view = make_view(root)
    ref = ArrayRef(view)
    assert ref.root is root and ref.cls is type(view)
    _assert_derefs_to(ref, view, root)
    unpickled = pickle.loads(pickle.dumps(ref))
    _assert_derefs_to(unpickled, view, unpickled.root)


def test_subclass_view_of_a_bigarray_derefs_to_the_same_subclass(make_array):
    A = make_array(20, _RECORD)
    A["a"] = np.arange(20)
    view = A[5:15:3].view(np.recarray)
    ref = ArrayRef(view)
    assert ref.root is A
    again = ref.deref()
    assert type(again) is np.recarray and again.dtype == view.dtype
    np.testing.assert_array_equal(again.a, [5, 8, 11, 14])
    again.b = 2.5  # writes through to the array
    np.testing.assert_array_equal(A["b"][5:15:3], 2.5)
    registry = _Registry(A=A)
    again = registry.loads(registry.dumps(ref)).deref()
    assert type(again) is np.recarray
    np.testing.assert_array_equal(again, view)


@st.composite
def _reversed_top_level_arrays(draw: st.DrawFn) -> np.ndarray:
    """An ndarray over a bytearray (so the base-most ndarray of its views)
    whose elements fill one byte range, with some axes reversed: negative
    strides."""
    shape = draw(shapes(max_dims=3, max_side=5).filter(lambda s: 0 not in s and len(s) > 0))
    forward = np.arange(math.prod(shape), dtype="i4").reshape(shape, order=draw(orders()))
    flips = tuple(slice(None, None, -1) if draw(st.booleans()) else slice(None) for _ in shape)
    layout = forward[flips]
    memory = bytearray(forward.tobytes(order="A"))
    offset = layout.__array_interface__["data"][0] - forward.__array_interface__["data"][0]
    return np.ndarray(shape, forward.dtype, buffer=memory, offset=offset, strides=layout.strides)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_views_of_a_reversed_top_level_ndarray(data):
    root = data.draw(_reversed_top_level_arrays(), label="root")
    view = root[data.draw(basic_indices(root.shape), label="idx")]
    if not isinstance(view, np.ndarray):
        return
    ref = ArrayRef(view)
    assert ref.root is root
    _assert_derefs_to(ref, view, root)
    unpickled = pickle.loads(pickle.dumps(ref))
    _assert_derefs_to(unpickled, view, unpickled.root)


def test_refs_to_a_reversed_root_pickled_together_share_it():
    root = np.ndarray((4, 5), "i8", buffer=bytearray(np.arange(20).tobytes()), offset=152, strides=(-40, -8))
    assert root[0, 0] == 19 and memory_owner(root)[0] is root
    r1, r2 = pickle.loads(pickle.dumps((ArrayRef(root[1:3, ::2]), ArrayRef(root.T))))
    assert r1.root is r2.root
    v1, v2 = r1.deref(), r2.deref()
    np.testing.assert_array_equal(v1, root[1:3, ::2])
    np.testing.assert_array_equal(v2, root.T)
    v1[0, 0] = -1
    assert v2[0, 1] == -1 and root[1, 0] == 14

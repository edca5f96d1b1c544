"""ArrayRef: root + recipe of a view; picklable; deref re-creates it."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    strided = np.asarray(memoryview(np.arange(10))[::2])
    assert memory_owner(strided)[0] is strided
    with pytest.raises(ValueError, match="non-contiguous"):
        ArrayRef(strided[1:])

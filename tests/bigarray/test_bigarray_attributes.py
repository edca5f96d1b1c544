"""BigArray construction and ndarray attributes, with NumPy as the oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import dtypes, orders, shapes

from zbigarray.bigarray import BigArray

from .backends import MemFile, file_array

ATTRS = ("shape", "dtype", "ndim", "size", "itemsize", "nbytes", "strides")


@settings(max_examples=150, deadline=None)
@given(shape=shapes(max_dims=4, max_side=5), dtype=dtypes(), order=orders())
def test_attributes_equal_ndarray(shape, dtype, order):
    A = file_array(shape, dtype, order)
    a = np.zeros(shape, dtype, order=order)
    for name in ATTRS:
        assert getattr(A, name) == getattr(a, name), name
    assert A.order == order
    if a.ndim:
        assert len(A) == len(a)
    else:
        with pytest.raises(TypeError, match="unsized"):
            len(A)


@pytest.mark.parametrize(
    "shape, expected",
    [(5, (5,)), ([2, 3], (2, 3)), ((), ()), (np.int64(4), (4,)), (range(1, 3), (1, 2))],
)
def test_shape_from_int_or_sequence(shape, expected):
    assert file_array(shape, "f8").shape == expected


@pytest.mark.parametrize("shape", [-1, (3, -2)])
def test_negative_dimension_is_value_error(shape):
    with pytest.raises(ValueError, match="negative"):
        file_array(shape, "f8")


# Booleans are ints to Python (and to operator.index), but not to NumPy.
_NON_INTEGER_SHAPES = [2.5, "3", (2, None), True, False, (2, True), [False], np.True_, (np.False_, 3)]


@pytest.mark.parametrize("shape", _NON_INTEGER_SHAPES, ids=repr)
def test_non_integer_shape_is_type_error_as_in_numpy(make_array, shape):
    with pytest.raises(TypeError):
        np.zeros(shape)
    with pytest.raises(TypeError, match="shape"):
        make_array(shape, "f8")


@pytest.mark.parametrize("shape", _NON_INTEGER_SHAPES, ids=repr)
def test_resize_to_non_integer_shape_is_type_error_as_in_numpy(make_array, shape):
    with pytest.raises(TypeError):
        np.zeros(3).resize(shape, refcheck=False)
    A = make_array(3, "f8")
    with pytest.raises(TypeError, match="shape"):
        A.resize(shape)
    assert A.shape == (3,)


@pytest.mark.parametrize(
    "dtype",
    [object, np.dtype([("a", "i4"), ("b", "O")]), np.dtype([("n", [("deep", "O")])]), np.dtype(("O", (2,)))],
    ids=["object", "field", "nested-field", "subarray"],
)
def test_dtype_with_objects_is_type_error(dtype):
    with pytest.raises(TypeError, match="Python objects"):
        file_array(3, dtype)


def test_dtype_without_size_is_type_error():
    with pytest.raises(TypeError, match="no size"):
        file_array(3, "V0")


@pytest.mark.parametrize("order", ["A", "K", "c", None, ""])
def test_unknown_order_is_value_error(order):
    with pytest.raises(ValueError, match="order"):
        file_array(3, "f8", order)


@pytest.mark.parametrize("fileh", [None, b"bytes", MemFile(4096)])
def test_fileh_that_is_not_a_file_handle_is_type_error(fileh):
    with pytest.raises(TypeError, match="file handle"):
        BigArray(3, "f8", fileh)


def test_too_big_is_value_error():
    with pytest.raises(ValueError, match="too big"):
        file_array((2**40, 2**40), "f8")


def test_subarray_dtype_expands_into_shape_as_numpy_does():
    dt = np.dtype(("i2", (2, 3)))
    A = file_array(4, dt)
    a = np.zeros(4, dt)
    assert (A.shape, A.dtype, A.strides) == (a.shape, a.dtype, a.strides)


def test_data_is_type_error():
    with pytest.raises(TypeError, match="no single buffer"):
        file_array(3, "f8").data


def test_repr_names_the_header():
    assert repr(file_array((2, 3), "i4", "F")) == "BigArray(shape=(2, 3), dtype=int32, order='F')"


@given(st.integers(0, 5))
def test_iteration_yields_rows(n):
    A = file_array((n, 3), "i8")
    A[:] = np.arange(3 * n).reshape(n, 3)
    rows = list(A)
    assert len(rows) == n
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(row, np.arange(3 * i, 3 * i + 3))


def test_iterating_0d_is_type_error():
    with pytest.raises(TypeError, match="0-d"):
        iter(file_array((), "f8")).__next__()

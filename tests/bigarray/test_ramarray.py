"""RAMArray: a BigArray whose file lives in page memory only."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from zbigarray.bigarray import BigArray
from zbigarray.bigarray.array_ram import RAMArray
from zbigarray.bigfile import WRITEOUT_STORE

MiB = 1024 * 1024


def test_is_a_bigarray_with_the_api_of_one():
    A = RAMArray((3, 4), "f4", order="F")
    assert isinstance(A, BigArray)
    assert (A.shape, A.dtype, A.strides) == ((3, 4), np.float32, (4, 12))
    np.testing.assert_array_equal(A[:], 0)


def test_ram_capacity_covers_the_array_and_only_grows():
    A = RAMArray((3, MiB), "u1")
    assert A._ram.capacity >= 3 * MiB
    A.append(np.ones((5, MiB), "u1"))
    assert A._ram.capacity >= 8 * MiB
    A.resize((1, MiB))
    assert A._ram.capacity >= 8 * MiB  # pages past the end may stay dirty


def test_written_data_survives_reclaim_of_clean_pages():
    A = RAMArray(16 * MiB, "u1")
    A[3 * MiB:5 * MiB] = 7
    assert A[:3 * MiB].sum() == 0  # loads clean zero pages too
    A._ram.reclaim()
    assert A._ram.stats()["used"] >= 2 * MiB
    np.testing.assert_array_equal(A[3 * MiB:5 * MiB], 7)
    assert A[:].sum() == 7 * 2 * MiB


def test_data_lives_in_its_own_ram_and_is_never_stored():
    A = RAMArray((8, MiB), "u1")
    A[:] = np.arange(8, dtype="u1")[:, None]
    stats = A._ram.stats()
    assert stats["used"] == 8 * MiB
    with pytest.raises(RuntimeError, match="RAM only"):
        A._fileh.dirty_writeout(WRITEOUT_STORE)
    np.testing.assert_array_equal(A[:, 0], np.arange(8))


def test_bad_arguments_are_refused_as_by_bigarray():
    with pytest.raises(TypeError, match="Python objects"):
        RAMArray(3, object)
    with pytest.raises(ValueError, match="negative"):
        RAMArray((2, -1), "f8")
    with pytest.raises(ValueError, match="order"):
        RAMArray(3, "f8", order="X")


def test_dropped_array_frees_its_ram_without_the_cyclic_collector():
    # Nothing refers back to the array from its mappings, so reference
    # counting alone frees it (and its page memory) when the last view goes.
    gc.disable()
    try:
        A = RAMArray(4 * MiB, "u1")
        A[:] = 1
        assert A[:].sum() == 4 * MiB
        view = A[MiB:2 * MiB]
        ram = weakref.ref(A._ram)
        del A
        assert ram() is not None and view.sum() == MiB
        del view
        assert ram() is None
    finally:
        gc.enable()

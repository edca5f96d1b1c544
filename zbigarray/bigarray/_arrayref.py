"""ArrayRef: a picklable reference to an ndarray view, as root + recipe.

A view of a BigArray is an ndarray over a mapping that exists only in this
process.  To store "rows 10..20 of array A" (in a database, or to send it
elsewhere), ArrayRef records the root object the view's memory belongs to and
how to carve the view out of it again: byte offset of element ``[0, ..., 0]``
from the root's first byte, shape, strides, dtype and class.  Pickling an
ArrayRef pickles the root and the recipe, so the pickler's own machinery
decides how the root travels (ZODB stores a persistent ZBigArray by reference).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ._memory import Mapping, address, byte_extent, memory_owner

__all__ = ["ArrayRef"]


def _in_memory_order(a: np.ndarray) -> np.ndarray:
    """``a`` as a plain ndarray view with its negative-stride axes reversed:
    the same bytes, starting at the lowest address.  It is C- or
    F-contiguous exactly when ``a``'s elements fill one byte range."""
    plain = a.view(np.ndarray)
    if not any(s < 0 for s in a.strides):
        return plain
    return plain[tuple(slice(None, None, -1) if s < 0 else slice(None) for s in a.strides)]


def _has_byte_range(a: np.ndarray) -> bool:
    """Whether ``a``'s elements fill one byte range in index order (C or F),
    so that pickling it keeps its memory order."""
    flags = a.flags
    return bool(flags.c_contiguous or flags.f_contiguous)


# Memory-order views of roots being pickled, by id of the root; an entry lives
# as long as its view, which keeps the root (and so its id) alive.
_pickled_memory: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


def _memory_to_pickle(root: np.ndarray) -> np.ndarray:
    """One memory-order view per root: ArrayRefs of one root pickled together
    then pickle one object (the pickler's memo keeps it alive to the end),
    and share one root again when loaded."""
    view = _pickled_memory.get(id(root))
    if view is None:
        view = _pickled_memory[id(root)] = _in_memory_order(root)
    return view


class ArrayRef:
    """Reference to an ndarray view: its root object and how to re-create it.

    Parameters
    ----------
    a
        A view of a BigArray (any ndarray whose memory comes from a mapping
        made by a BigArray), or any other ndarray; views made by
        ``numpy.lib.stride_tricks`` (``as_strided``, ``sliding_window_view``)
        and ndarray subclasses (``recarray``, ...) included.

    Attributes
    ----------
    root
        The BigArray the view's memory belongs to (found at the end of the
        view's ``.base`` chain); for an ordinary ndarray, the ndarray at the
        end of its ``.base`` chain.
    offset
        Bytes from the root's first byte (byte 0 of the file for a BigArray;
        the lowest address of an ndarray root, which is not its element
        ``[0, ..., 0]`` when it has negative strides) to element
        ``[0, ..., 0]`` of the view.
    shape, strides, dtype
        The view's layout.
    cls
        The view's class: ``numpy.ndarray`` or the subclass it was.

    Raises
    ------
    TypeError
        ``a`` is not an ndarray.
    ValueError
        ``a`` is a view of an ordinary ndarray whose base-most ndarray has no
        byte range (its elements are not adjacent in memory, e.g. an ndarray
        over a strided memoryview), or ``a`` reaches outside it (as
        ``as_strided`` allows).

    Notes
    -----
    The subclass is re-created with ``view(cls)``: what a subclass keeps
    outside the array's memory (a ``MaskedArray``'s mask) is not recorded.

    Pickling an ndarray stores its elements in index order, which for a root
    with negative strides is not their order in memory, where the recipe
    points.  Such a root is therefore pickled as its memory in memory order
    (itself with the reversed axes turned forward): after loading, ``root``
    is that ndarray, and ``deref()`` gives the same view as before.
    """

    root: Any
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: np.dtype
    cls: type[np.ndarray]

    def __init__(self, a: np.ndarray) -> None:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"ArrayRef needs an ndarray, not {type(a).__name__}")
        basemost, exporter = memory_owner(a)
        if isinstance(exporter, Mapping):
            self.root = exporter.root
            self.offset = exporter.file_offset(a)
        else:
            memory = _in_memory_order(basemost)
            if not _has_byte_range(memory):
                raise ValueError("ArrayRef cannot address a view of a non-contiguous base ndarray")
            self.root = basemost
            self.offset = address(a) - address(memory)
            lo, hi = byte_extent(a.shape, a.strides, a.itemsize)
            if lo != hi and not (0 <= self.offset + lo and self.offset + hi <= memory.nbytes):
                raise ValueError("ArrayRef cannot address a view reaching outside its base ndarray")
        self.shape = a.shape
        self.strides = a.strides
        self.dtype = a.dtype
        self.cls = type(a)

    def deref(self) -> np.ndarray:
        """Re-create the view on the root: an ndarray of the view's class,
        equal to the original, sharing memory with the root (a new mapping
        for a BigArray root)."""
        lo, hi = byte_extent(self.shape, self.strides, self.dtype.itemsize)
        if lo == hi:
            # No element, no memory: only the layout is re-created.
            view = np.ndarray(self.shape, self.dtype, buffer=bytearray(), strides=self.strides)
        else:
            if isinstance(self.root, np.ndarray):
                # Its bytes as one flat view (ravel of a contiguous array is a
                # view), whose base chain leads back to the root, so an
                # ArrayRef of the result finds it.
                buffer: Any = _in_memory_order(self.root).ravel(order="A").view(np.uint8)
                offset = self.offset
            else:
                buffer, start = self.root._mmap_bytes(self.offset + lo, self.offset + hi)
                offset = start - lo
            view = np.ndarray(self.shape, self.dtype, buffer=buffer, offset=offset, strides=self.strides)
        return view if self.cls is np.ndarray else view.view(self.cls)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        root = self.root
        if isinstance(root, np.ndarray) and not _has_byte_range(root):
            # Negative strides: see Notes.
            state["root"] = _memory_to_pickle(root)
        return state

    def __repr__(self) -> str:
        return (
            f"ArrayRef(root={type(self.root).__name__}, offset={self.offset}, shape={self.shape}, "
            f"strides={self.strides}, dtype={self.dtype}, cls={self.cls.__name__})"
        )

"""ArrayRef: a picklable reference to an ndarray view, as root + recipe.

A view of a BigArray is an ndarray over a mapping that exists only in this
process.  To store "rows 10..20 of array A" (in a database, or to send it
elsewhere), ArrayRef records the root object the view's memory belongs to and
how to carve the view out of it again: byte offset of element ``[0, ..., 0]``
from the root's first byte, shape, strides and dtype.  Pickling an ArrayRef
pickles the root and the recipe, so the pickler's own machinery decides how the
root travels (ZODB stores a persistent ZBigArray by reference).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._memory import Mapping, address, byte_extent, memory_owner

__all__ = ["ArrayRef"]


class ArrayRef:
    """Reference to an ndarray view: its root object and how to re-create it.

    Parameters
    ----------
    a
        A view of a BigArray (any ndarray whose memory comes from a mapping
        made by a BigArray), or any other ndarray.

    Attributes
    ----------
    root
        The BigArray the view's memory belongs to (found at the end of the
        view's ``.base`` chain); for an ordinary ndarray, the ndarray at the
        end of its ``.base`` chain.
    offset
        Bytes from the root's first byte (byte 0 of the file for a BigArray)
        to element ``[0, ..., 0]`` of the view.
    shape, strides, dtype
        The view's layout.

    Raises
    ------
    TypeError
        ``a`` is not an ndarray.
    ValueError
        ``a`` is a view of an ordinary ndarray whose base-most ndarray is not
        contiguous: there is no byte range to record offsets in.
    """

    root: Any
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: np.dtype

    def __init__(self, a: np.ndarray) -> None:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"ArrayRef needs an ndarray, not {type(a).__name__}")
        basemost, exporter = memory_owner(a)
        if isinstance(exporter, Mapping):
            self.root = exporter.root
            self.offset = exporter.file_offset(a)
        else:
            if not (basemost.flags.c_contiguous or basemost.flags.f_contiguous):
                raise ValueError("ArrayRef cannot address a view of a non-contiguous base ndarray")
            self.root = basemost
            self.offset = address(a) - address(basemost)
        self.shape = a.shape
        self.strides = a.strides
        self.dtype = a.dtype

    def deref(self) -> np.ndarray:
        """Re-create the view on the root: an ndarray equal to the original,
        sharing memory with the root (a new mapping for a BigArray root)."""
        lo, hi = byte_extent(self.shape, self.strides, self.dtype.itemsize)
        if lo == hi:
            # No element, no memory: only the layout is re-created.
            return np.ndarray(self.shape, self.dtype, buffer=bytearray(), strides=self.strides)
        if isinstance(self.root, np.ndarray):
            # ravel(order='A') of a contiguous array is a view; its base chain
            # leads back to the root, so an ArrayRef of the result finds it.
            buffer: Any = self.root.ravel(order="A").view(np.uint8)
            offset = self.offset
        else:
            buffer, start = self.root._mmap_bytes(self.offset + lo, self.offset + hi)
            offset = start - lo
        return np.ndarray(self.shape, self.dtype, buffer=buffer, offset=offset, strides=self.strides)

    def __repr__(self) -> str:
        return (
            f"ArrayRef(root={type(self.root).__name__}, offset={self.offset}, shape={self.shape}, "
            f"strides={self.strides}, dtype={self.dtype})"
        )

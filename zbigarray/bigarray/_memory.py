"""Where an ndarray's memory comes from: the owner chain and the byte extent.

Shared by BigArray (which makes its views over a ``Mapping``), ArrayRef (to
find a view's root and record it) and BigArray.__setitem__ (to see whether a
value aliases the destination through another mapping of the same file, which
NumPy cannot detect because the two mappings sit at different addresses).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Mapping", "address", "byte_extent", "file_span", "memory_owner"]


class Mapping:
    """Owner of the memory of BigArray views: a mapping (VMA) of the array's
    file handle, and the array it was made for.

    NumPy keeps the object whose ``__array_interface__`` it wraps as the
    ``.base`` of the array it makes, so every view's ``.base`` chain ends
    here: that is how ArrayRef finds a view's root.  The VMA's own ``pyuser``
    slot is not used for the root because BigArray keeps its last VMA:
    array -> VMA -> array would be a reference cycle, and the pages of an
    array that is dropped would be freed only when the cyclic garbage
    collector next happens to run.  Here views keep the array and the VMA
    alive; the array keeps the VMA alive; nothing points back.
    """

    __slots__ = ("root", "vma")

    def __init__(self, vma: Any, root: Any) -> None:
        self.vma = vma
        """The mapping (``zbigarray.bigfile.VMA``)."""
        self.root = root
        """The BigArray (or subclass instance) the mapping was made for."""

    @property
    def __array_interface__(self) -> dict[str, Any]:
        """The whole mapping as writable bytes."""
        vma = self.vma
        return {
            "version": 3,
            "shape": (vma.addr_stop - vma.addr_start,),
            "typestr": "|u1",
            "data": (vma.addr_start, False),
        }

    def file_offset(self, a: np.ndarray) -> int:
        """Offset in the file of element ``[0, ..., 0]`` of ``a``, a view of
        this mapping."""
        vma = self.vma
        pgoffset, _ = vma.filerange()
        return address(a) - vma.addr_start + pgoffset * vma.pagesize()

    def flat(self) -> np.ndarray:
        """A 1-D uint8 ndarray over the whole mapping, owned by ``self``."""
        return np.asarray(self)


def address(a: np.ndarray) -> int:
    """Address of element ``a[0, ..., 0]``."""
    return int(a.__array_interface__["data"][0])


def byte_extent(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """Bytes ``[lo, hi)`` relative to element ``[0, ..., 0]`` that an array of
    this layout touches; ``(0, 0)`` when it has no elements."""
    if 0 in shape:
        return 0, 0
    lo = hi = 0
    for n, s in zip(shape, strides):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + itemsize


def memory_owner(a: np.ndarray) -> tuple[np.ndarray, Any]:
    """Follow ``a``'s memory back to the last ndarray that views it.

    Steps from an ndarray to its ``.base``; through a memoryview to the
    object it views; and through an object that exports
    ``__array_interface__`` and keeps the ndarray it describes in ``.base``
    (the DummyArray by which ``numpy.lib.stride_tricks.as_strided`` and
    ``sliding_window_view`` make their views).

    Returns
    -------
    tuple
        ``(basemost, exporter)``: the last ndarray on the chain, and the
        non-ndarray object that exported its memory (a :class:`Mapping` for
        BigArray views), or None when ``basemost`` owns its memory.
    """
    while True:
        base: Any = a.base
        if isinstance(base, memoryview):
            base = base.obj
        elif (
            not isinstance(base, np.ndarray)
            and hasattr(base, "__array_interface__")
            and isinstance(getattr(base, "base", None), np.ndarray)
        ):
            base = base.base
        if not isinstance(base, np.ndarray):
            return a, base
        a = base


def file_span(a: np.ndarray, fileh: Any) -> tuple[int, int] | None:
    """File bytes ``[lo, hi)`` that ``a`` touches when it is a view of a
    mapping of ``fileh``, else None."""
    _, mapping = memory_owner(a)
    if not isinstance(mapping, Mapping) or mapping.vma.fileh is not fileh:
        return None
    lo, hi = byte_extent(a.shape, a.strides, a.itemsize)
    start = mapping.file_offset(a)
    return start + lo, start + hi

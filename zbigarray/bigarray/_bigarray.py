"""BigArray: ndarray semantics over a file handle (see DESIGN.md, "BigArray").

A BigArray is ``(shape, dtype, order)`` over a file handle.  Its elements lie
contiguously in C or Fortran order from byte 0 of the file.  Indexing works
out the rows of the *major* axis the index touches (axis 0 in C order, the
last axis in Fortran order: rows of that axis are contiguous bytes) and
returns a real ``numpy.ndarray`` over those bytes of a mapping of the file, so
NumPy, C and Cython code run on it unchanged and its pages load lazily on
first touch.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np

from ._indexing import major_range
from ._memory import Mapping, file_span

__all__ = ["BigArray"]

ShapeLike = int | Sequence[int]
Order = Literal["C", "F"]

# NumPy computes byte offsets in intp (int64 here).
_MAX_NBYTES = 2**63 - 1


def _dim(n: Any) -> int:
    """One dimension as an int; TypeError for anything NumPy refuses as one."""
    if isinstance(n, bool):
        # An int subclass, but NumPy refuses booleans in shapes.
        raise TypeError(f"a dimension must be an int, not {n!r}")
    return operator.index(n)


def _as_shape(shape: Any) -> tuple[int, ...]:
    """Normalise an int or a sequence of ints into a shape tuple."""
    dims: tuple[int, ...]
    try:
        dims = (_dim(shape),)
    except TypeError:
        try:
            dims = tuple(_dim(n) for n in shape)
        except TypeError:
            raise TypeError(f"shape must be an int or a sequence of ints, not {shape!r}") from None
    if any(n < 0 for n in dims):
        raise ValueError(f"negative dimensions are not allowed: shape {dims}")
    return dims


def _contiguous_strides(shape: tuple[int, ...], itemsize: int, order: Order) -> tuple[int, ...]:
    """Strides NumPy gives a fresh contiguous array of this layout."""
    if math.prod(shape) == 0:
        # NumPy's convention for arrays without elements differs between
        # versions; they cost nothing to create, so ask it.
        return np.empty(shape, np.dtype((np.void, itemsize)), order=order).strides
    strides = [0] * len(shape)
    step = itemsize
    axes = range(len(shape) - 1, -1, -1) if order == "C" else range(len(shape))
    for k in axes:
        strides[k] = step
        step *= shape[k]
    return tuple(strides)


def _format_size(nbytes: int) -> str:
    """``nbytes`` in binary units with two decimals, as NumPy's MemoryError
    message gives it (``4.00 EiB``)."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    k = 0
    while k + 1 < len(units) and nbytes >= 1024 ** (k + 1):
        k += 1
    return f"{nbytes} bytes" if k == 0 else f"{nbytes / 1024**k:.2f} {units[k]}"


MAP_WINDOW = 64 << 30
"""Bytes of address space a BigArray maps at most beyond what an access needs
(see ``BigArray._mmap_bytes``): the whole of any array up to this size.  A
larger array is bigger than any RAM its pages could stay in, so mapping
more of it would keep nothing warm."""


def _covers(vma: Any, fileh: Any, pgoffset: int, pgstop: int) -> bool:
    """Whether ``vma`` is an open mapping of ``fileh`` that covers pages
    ``[pgoffset, pgstop)``."""
    if vma is None or vma.closed or vma.fileh is not fileh:
        return False
    have, pglen = vma.filerange()
    return have <= pgoffset and pgstop <= have + pglen


class BigArray:
    """An array of fixed shape and dtype whose elements live in a file handle.

    ``A[idx]`` (basic indexing) returns an ``ndarray`` view over a mapping of
    the file: writes through it change the file, and a page is loaded only
    when first touched.  Advanced indexing reads a copy and writes in place, as in
    NumPy.  A view keeps its mapping, and so the file handle, alive: it stays
    valid after the BigArray itself is gone.

    Parameters
    ----------
    shape
        An int or a sequence of ints, none negative.
    dtype
        Anything ``numpy.dtype`` accepts, holding no Python objects.  A subarray
        dtype is expanded into the shape, as NumPy does.
    fileh
        A file handle (``zbigarray.bigfile.BigFileH``): the array's bytes are
        those of the file, from byte 0.
    order
        ``'C'`` (axis 0 is the major axis) or ``'F'`` (the last axis is).

    Raises
    ------
    TypeError
        A dimension that is not an int (a bool neither, as for NumPy); the
        dtype holds Python objects (anywhere, also inside a structured
        dtype), or has no size; ``fileh`` is not a file handle.
    ValueError
        A negative dimension, an unknown order, or an array too big to address.

    Notes
    -----
    **Subclassing contract** (how ZBigArray is built on it):

    - The array's state is three plain attributes, set only by
      :meth:`_init_header` (and ``_shape`` again by :meth:`resize`):
      ``_shape`` (tuple of ints), ``_dtype`` (``numpy.dtype``) and ``_order``
      (``'C'`` or ``'F'``).  Besides ``_v_vma`` (below) BigArray sets no
      other attribute on itself after construction and defines no
      ``__getstate__``, so a ``Persistent`` subclass stores exactly these and
      is marked changed only by :meth:`resize` / :meth:`append`.
    - The file handle is read as ``self._fileh`` each time memory is mapped.
      ``BigArray.__init__`` stores it as a plain attribute; a subclass may
      instead define ``_fileh`` as a property that opens its handle lazily and
      keeps it in a volatile attribute — such a subclass calls
      :meth:`_init_header` instead of ``BigArray.__init__``.
    - The block size is ``self._fileh.file.blksize``.
    - Views are made over a ``Mapping`` (in ``_memory``) that holds the VMA
      and the array, so that :class:`ArrayRef` finds the root of any view:
      the subclass instance itself, e.g. the persistent object.
    - The last VMA is kept for reuse in ``_v_vma``: named by ZODB's
      convention for volatile attributes, which ``Persistent`` neither stores
      nor counts as a change.  It is reused only while it belongs to the
      current ``self._fileh``.
    """

    _shape: tuple[int, ...]
    _dtype: np.dtype
    _order: Order
    _fileh: Any
    _v_vma: Any = None
    """The last VMA made (see _mmap_bytes); volatile."""

    def __init__(self, shape: ShapeLike, dtype: Any, fileh: Any, order: str = "C") -> None:
        self._init_header(shape, dtype, order)
        if not callable(getattr(fileh, "mmap", None)):
            raise TypeError(f"fileh must be a file handle (BigFileH), not {type(fileh).__name__}")
        self._fileh = fileh

    def _init_header(self, shape: ShapeLike, dtype: Any, order: str) -> None:
        """Validate and store ``_shape``, ``_dtype`` and ``_order``."""
        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C' or 'F', not {order!r}")
        dims = _as_shape(shape)
        dt = np.dtype(dtype)
        if dt.subdtype is not None:
            dt, subshape = dt.subdtype
            dims = dims + subshape
        if dt.hasobject:
            raise TypeError(f"dtype {dt} holds Python objects, which cannot live in a file")
        if dt.itemsize == 0:
            raise TypeError(f"dtype {dt} has no size")
        if math.prod(dims) * dt.itemsize > _MAX_NBYTES:
            raise ValueError(f"array of shape {dims} and dtype {dt} is too big")
        self._shape = dims
        self._dtype = dt
        self._order = "C" if order == "C" else "F"

    # ---------------------------------------------------------- attributes

    @property
    def shape(self) -> tuple[int, ...]:
        """Tuple of array dimensions."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """Data type of the elements."""
        return self._dtype

    @property
    def order(self) -> str:
        """Memory layout: ``'C'`` or ``'F'``."""
        return self._order

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self._shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self._shape)

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return self._dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of all elements."""
        return self.size * self.itemsize

    @property
    def strides(self) -> tuple[int, ...]:
        """Bytes to step in each dimension, as for a contiguous ndarray."""
        return _contiguous_strides(self._shape, self.itemsize, self._order)

    @property
    def data(self) -> memoryview:
        """Not available: a BigArray has no single buffer.

        Raises
        ------
        TypeError
            Always; take a view instead (``A[:]``, ``numpy.asarray(A)``).
        """
        raise TypeError("a BigArray has no single buffer; take a view (A[:] or numpy.asarray(A))")

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of unsized object")
        return self._shape[0]

    def __iter__(self) -> Iterator[Any]:
        if not self._shape:
            raise TypeError("iteration over a 0-d array")
        for i in range(self._shape[0]):
            yield self[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self._shape}, dtype={self._dtype}, order={self._order!r})"

    # ------------------------------------------------------------- mapping

    def _major_axis(self) -> int:
        return 0 if self._order == "C" else self.ndim - 1

    def _mmap_bytes(self, start: int, stop: int) -> tuple[np.ndarray, int]:
        """Bytes of a mapping covering file bytes ``[start, stop)``
        (non-empty), as a 1-D uint8 ndarray owned by a :class:`Mapping`, and
        the offset of byte ``start`` in it.

        The last VMA made is kept and reused while it covers the request: a
        page appears in a new mapping only through a fault, so re-mapping the
        same pages for every ``A[...]`` would fault each of them again.  For
        the same reason a new VMA covers the whole array when it is at most
        ``MAP_WINDOW`` bytes (else the window-aligned range around the
        request): address space costs nothing until touched, and a scan in
        slices, done again, then finds every page still in RAM already
        mapped, as ``numpy.memmap`` does, instead of faulting each page
        into each slice's new mapping.
        """
        fileh = self._fileh
        blksize = fileh.file.blksize
        pgoffset = start // blksize
        pgstop = -(-stop // blksize)
        vma = self._v_vma
        if not _covers(vma, fileh, pgoffset, pgstop):
            window = max(MAP_WINDOW // blksize, 1)
            pgend = -(-self.nbytes // blksize)
            maplo = pgoffset // window * window
            maphi = max(pgstop, min(pgend, maplo + window))
            try:
                try:
                    vma = fileh.mmap(maplo, maphi - maplo)
                except (OverflowError, MemoryError):
                    vma = fileh.mmap(pgoffset, pgstop - pgoffset)
            except (OverflowError, MemoryError) as exc:
                # A range the address space cannot hold (OverflowError from
                # the core) or mmap refuses (ENOMEM) is an array that cannot
                # be allocated: NumPy says MemoryError, naming the size.
                raise MemoryError(
                    f"Unable to map {_format_size(stop - start)} (file bytes [{start}, {stop})) "
                    f"of {self!r}: {exc}"
                ) from exc
            self._v_vma = vma
        return Mapping(vma, self).flat(), start - vma.filerange()[0] * blksize

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        """View of rows ``[lo, hi)`` of the major axis (the whole array when
        it is 0-d).  Maps nothing when they hold no bytes: the layer below
        cannot map zero pages, and NumPy needs no memory for them."""
        if not self._shape:
            flat, offset = self._mmap_bytes(0, self.itemsize)
            return np.ndarray((), self._dtype, buffer=flat, offset=offset)
        axis = self._major_axis()
        shape = self._shape[:axis] + (hi - lo,) + self._shape[axis + 1:]
        rowbytes = self.itemsize * math.prod(self._shape[:axis] + self._shape[axis + 1:])
        if math.prod(shape) == 0:
            return np.empty(shape, self._dtype, order=self._order)
        flat, offset = self._mmap_bytes(lo * rowbytes, hi * rowbytes)
        return np.ndarray(shape, self._dtype, buffer=flat, offset=offset, order=self._order)

    def _locate(self, idx: Any) -> tuple[np.ndarray, Any]:
        """The smallest mapped view ``idx`` needs, and the index to apply to it."""
        if not self._shape:
            return self._rows(0, 1), idx
        where = major_range(idx, self._shape, self._major_axis())
        return self._rows(where.lo, where.hi), where.index

    # ------------------------------------------------------------ indexing

    def __getitem__(self, idx: Any) -> Any:
        """``A[idx]`` as for an ndarray: basic indexing gives a view."""
        sub, rel = self._locate(idx)
        return sub[rel]

    def __setitem__(self, idx: Any, value: Any) -> None:
        """``A[idx] = value`` as for an ndarray, with broadcasting."""
        sub, rel = self._locate(idx)
        sub[rel] = self._detach(value, sub)

    def _detach(self, value: Any, dest: np.ndarray) -> Any:
        """Copy ``value`` if it reads the bytes ``dest`` covers in our file.

        NumPy buffers overlapping assignments itself, but it compares
        addresses: two mappings of one file page sit at different addresses,
        so an overlap between views made by two indexing operations is
        invisible to it, and copying element by element would read elements
        it has already overwritten.
        """
        if isinstance(value, BigArray):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray) or dest.size == 0 or value.size == 0:
            return value
        fileh = self._fileh
        span = file_span(value, fileh)
        if span is None:
            return value
        mine = file_span(dest, fileh)
        assert mine is not None  # dest is a non-empty mapping of our file
        if span[0] < mine[1] and mine[0] < span[1]:
            return value.copy()
        return value

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """The whole array as an ndarray view (NumPy's ``__array__`` protocol).

        Parameters
        ----------
        dtype
            Convert to this dtype (a copy when it differs).
        copy
            True: always copy.  False: never copy; raise if one is needed.
            None: copy only if needed.

        Raises
        ------
        ValueError
            ``copy=False`` with a ``dtype`` that needs a conversion.
        MemoryError
            The array cannot be mapped at once (e.g. it is bigger than the
            address space); index rows of it instead.
        """
        whole = self._rows(0, self._shape[self._major_axis()]) if self._shape else self._rows(0, 1)
        if dtype is not None and np.dtype(dtype) != self._dtype:
            if copy is False:
                raise ValueError(
                    f"converting a BigArray of dtype {self._dtype} to {np.dtype(dtype)} "
                    "needs a copy, and copy=False forbids it"
                )
            return whole.astype(dtype)
        return whole.copy() if copy else whole

    # --------------------------------------------------------------- growth

    def resize(self, new_shape: ShapeLike, refcheck: bool = True) -> None:
        """Change the shape; only the header changes, no data is touched.

        Every element present in both the old and the new shape keeps its
        value.  For an array with elements that means: same number of
        dimensions, and only the major axis changes size (or another axis,
        where the layout lets every common element keep its byte offset, e.g.
        the last axis of a C-order array of one row).  An array with no
        elements can take any shape.

        A region that grows reads as what the file holds there: zeros in a
        fresh file; after a shrink and a regrow, the elements that were cut
        off (shrinking does not erase them — that would write data).

        Parameters
        ----------
        new_shape
            An int or a sequence of ints, none negative.
        refcheck
            Accepted for compatibility with ``ndarray.resize`` and ignored:
            views taken before stay valid, as the data does not move.

        Raises
        ------
        TypeError
            A dimension that is not an int (a bool neither, as for NumPy).
        ValueError
            A negative dimension, a shape whose layout would move existing
            elements, or an array too big to address.
        """
        dims = _as_shape(new_shape)
        if math.prod(dims) * self.itemsize > _MAX_NBYTES:
            raise ValueError(f"array of shape {dims} and dtype {self._dtype} is too big")
        if self.size and not self._layout_keeps(dims):
            raise ValueError(
                f"cannot resize a {self._order}-order BigArray from shape {self._shape} to {dims}: "
                "only the major axis "
                f"(axis {self._major_axis()}) may change size, other axes would move the data"
            )
        self._shape = dims

    def _layout_keeps(self, dims: tuple[int, ...]) -> bool:
        """Whether every element common to the current shape and ``dims``
        keeps its byte offset."""
        if len(dims) != self.ndim:
            return False
        old = _contiguous_strides(self._shape, self.itemsize, self._order)
        new = _contiguous_strides(dims, self.itemsize, self._order)
        common = [min(a, b) for a, b in zip(self._shape, dims)]
        if 0 in common:
            return True
        return all(n == 1 or s == t for n, s, t in zip(common, old, new))

    def append(self, values: Any) -> None:
        """Grow the major axis by ``values`` and write them at the end.

        Only the new part is written (and only the blocks it lands in are
        loaded and changed).  Views taken before keep aliasing the same memory.

        Parameters
        ----------
        values
            Array-like with the same number of dimensions as the array and the
            same size on every axis but the major one; cast to the array's
            dtype as an assignment would.

        Raises
        ------
        ValueError
            A 0-d array, or ``values`` whose shape does not match.
        """
        if not self._shape:
            raise ValueError("cannot append to a 0-d BigArray: it has no major axis")
        values = np.asanyarray(values)
        axis = self._major_axis()
        rest = self._shape[:axis] + self._shape[axis + 1:]
        vrest = values.shape[:axis] + values.shape[axis + 1:] if values.ndim == self.ndim else None
        if vrest != rest:
            raise ValueError(
                f"cannot append values of shape {values.shape} to a {self._order}-order BigArray "
                f"of shape {self._shape}: all axes but axis {axis} must match"
            )
        old = self._shape
        n = old[axis]
        self.resize(old[:axis] + (n + values.shape[axis],) + old[axis + 1:])
        tail = (slice(n, None),) if axis == 0 else (Ellipsis, slice(n, None))
        try:
            self[tail] = values
        except BaseException:
            # Casting failed: nothing valid was added, keep the old shape.
            self._shape = old
            raise

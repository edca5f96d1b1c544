"""ZBigFile: a BigFile whose blocks are ZODB objects.  The on-disk format.

The classes here are stored in users' databases by module path and name, and
their state layouts are the persistence format (see ``docs/storage.md``):

=========  ============================================================
class      persistent state
=========  ============================================================
ZBigFile   ``(blksize, blktab)``; ``blktab`` is an ``LOBTree`` block
           number -> block object.  A missing entry is a hole (zeros).
ZBlk0      the block's bytes with trailing zero bytes stripped.
ZBlk1      an ``IOBTree`` chunk offset -> ZData, chunks of
           :data:`ZBLK1_CHUNKSIZE` bytes; all-zero chunks are absent.
ZData      one chunk's bytes with trailing zero bytes stripped.
=========  ============================================================

Neither these layouts nor these module paths may ever change.

This module imports without the virtual-memory extension: a tool that only
reads or repairs a database must not need it.  :meth:`ZBigFile.fileh_open`
brings the extension in.
"""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Any

import numpy as np
from BTrees.IOBTree import IOBTree
from BTrees.LOBTree import LOBTree
from persistent import Persistent

from zbigarray.storage import _btree, _records

if TYPE_CHECKING:
    from zbigarray.bigfile import RAM, BigFileH

ZBLK1_CHUNKSIZE: int = 4096
"""Bytes per ZData chunk of a ZBlk1 block (part of the format)."""

ZBLK_FMT_ENV: str = "ZBIGARRAY_ZBLK_FMT"
"""Environment variable naming the format new blocks are written in."""

_BLKSIZE_MAX = 1 << 30

_COPY_NOGIL_MIN = 1 << 16


def _zero(buf: memoryview, start: int, stop: int) -> None:
    """buf[start:stop] = zeros, unless `buf` held only zeros as the load
    began (:func:`zbigarray.bigfile.loadblk_buf_zeroed`): loads write each
    byte at most once, so the range is still zero.  Without the extension
    loaded (see above) no buffer is a page's."""
    blkbuf = sys.modules.get("zbigarray.bigfile._blkbuf")
    if blkbuf is None or not blkbuf.loadblk_buf_zeroed(buf):
        np.frombuffer(buf, np.uint8)[start:stop] = 0


def _nonzero(buf: memoryview) -> bool:
    """Whether `buf` holds a byte that is not zero (its last word first:
    data seldom ends in zeros)."""
    a = np.frombuffer(buf, np.uint8)
    return bool(a[-8:].any() or a.any())


def _copy(buf: memoryview, start: int, data: bytes | memoryview) -> None:
    """buf[start:start+len(data)] = data.  A big copy goes through NumPy,
    which releases the GIL meanwhile (a memoryview assignment holds it):
    ZEO's I/O thread receives the next blocks while a block is copied."""
    n = len(data)
    if n < _COPY_NOGIL_MIN:
        buf[start:start + n] = data
    else:
        np.frombuffer(buf, np.uint8)[start:start + n] = np.frombuffer(data, np.uint8)


class _BytesState(Persistent):
    """A persistent object whose whole state is one ``bytes``, ``data``.

    Not stored itself (databases record only the concrete classes below).
    """

    data: bytes

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def __getstate__(self) -> bytes:
        return self.data

    def __setstate__(self, state: bytes) -> None:
        self.data = state


class ZData(_BytesState):
    """One chunk of a :class:`ZBlk1` block.

    Parameters
    ----------
    data
        The chunk's bytes, trailing zeros already stripped.
    """


class ZBlk0(_BytesState):
    """A block stored as one object holding all its bytes.

    One object load per block: the fastest to read; any change rewrites the
    whole block.

    A new block object written at commit holds no copy of its bytes: it
    reads them from the page when ZODB pickles it (:meth:`setblkdata_later`).

    Parameters
    ----------
    data
        The block's bytes, trailing zeros already stripped.
    """

    _v_later: Callable[[], bytes] | None = None

    @property
    def data(self) -> bytes:
        """The block's bytes, trailing zeros stripped."""
        later = self._v_later
        return later() if later is not None else self._data

    @data.setter
    def data(self, value: bytes) -> None:
        self._data = value
        self._v_later = None

    def setblkdata_later(self, buf: memoryview, later: Callable[[], bytes]) -> bool:
        """Make this new object hold `buf`'s bytes as `later()` gives them
        when read; return False if `buf` is all zeros (then nothing is held).

        A commit stores its dirty pages into block objects before ZODB
        pickles any: a copy of each, made then, would hold as much memory
        again as the pages until the commit ends, all of it new memory the
        kernel must provide.  Read at pickling instead, one block's bytes
        live at a time, in memory the allocator reuses.  `later` must give
        the bytes `buf` holds now for as long as the object may be pickled:
        the page stays dirty until the commit is done, and anything that
        stores it again before (a spill) makes this object hold a copy
        (:meth:`setblkdata`).
        """
        if not _nonzero(buf):
            return False
        self._v_later = later
        self._p_changed = True
        return True

    def loadblkdata(self, buf: memoryview, deps: list[Persistent]) -> None:
        """Fill `buf` with the block; append the objects read to `deps`.

        A ghost is read from its record, without loading the object (see
        :mod:`zbigarray.storage._records`).  Call through the class: a
        method looked up on a ghost loads it.
        """
        deps.append(self)
        n = _records.bytes_state_into(self, buf)
        if n is None:
            data: bytes | memoryview | None = _records.bytes_state_of(self)
            if data is None:
                data = self.data
            n = len(data)
            if n > len(buf):
                raise ValueError(f"ZBlk0 {self._p_oid!r}: {n} bytes of data do not "
                                 f"fit a block of {len(buf)} bytes")
            _copy(buf, 0, data)
        _zero(buf, n, len(buf))

    def blkdeps(self, deps: list[Persistent]) -> None:
        """Append the objects the block's content is read from to `deps`."""
        deps.append(self)

    def ghostify(self) -> None:
        """Drop the block's data from the ZODB cache (unless changed)."""
        self._p_deactivate()

    def setblkdata(self, buf: memoryview, unchanged: Container[int] = ()) -> bool:
        """Make this object hold `buf`; return False if `buf` is all zeros.

        `unchanged` is for the ZBlk1 interface and ignored.
        """
        data = bytes(buf).rstrip(b"\0")
        # Assigning an equal value would still mark the object changed, and
        # the commit would rewrite it.  One holding its bytes for later holds
        # a copy from now on: its page may go once stored again.
        if self._v_later is not None or self.data != data:
            self.data = data
        return bool(data)


class ZBlk1(Persistent):
    """A block stored as fixed-size chunks, one ZData each.

    A small change to the block rewrites one chunk (:data:`ZBLK1_CHUNKSIZE`
    bytes) instead of the whole block; reading costs one load per chunk.
    """

    _ZData = ZData
    """Class of new chunks (a subclass storing another class path sets its own)."""

    def __init__(self) -> None:
        self.chunktab = IOBTree()

    def __getstate__(self) -> IOBTree:
        return self.chunktab

    def __setstate__(self, state: IOBTree) -> None:
        self.chunktab = state

    def loadblkdata(self, buf: memoryview, deps: list[Persistent]) -> None:
        """Fill `buf` with the block; append the objects read to `deps`.

        The chunks are read as :meth:`ZBlk0.loadblkdata` reads a block, and
        all of them are asked for first (one record each: over a network,
        one round trip each if asked for one by one).
        """
        deps.append(self)
        deps.extend(_btree.nodes(self.chunktab))
        chunks = list(self.chunktab.items())
        _records.prefetch([zdata for _, zdata in chunks])
        filled = 0      # buf[:filled] is written
        for off, zdata in chunks:
            deps.append(zdata)
            data = _records.bytes_state_of(zdata)
            if data is None:
                data = zdata.data
            if off < filled or off + len(data) > len(buf):
                raise ValueError(f"ZBlk1 {self._p_oid!r}: chunk at {off} of "
                                 f"{len(data)} bytes is outside a block of "
                                 f"{len(buf)} bytes")
            if off > filled:
                _zero(buf, filled, off)
            _copy(buf, off, data)
            filled = off + len(data)
            # Chunk data is a copy of what is now in the page.
            zdata._p_deactivate()
        _zero(buf, filled, len(buf))

    def blkdeps(self, deps: list[Persistent]) -> None:
        """Append the objects the block's content is read from to `deps`."""
        deps.append(self)
        deps.extend(_btree.nodes(self.chunktab))
        deps.extend(self.chunktab.values())

    def ghostify(self) -> None:
        """Drop the block's chunks from the ZODB cache (unless changed)."""
        if self._p_status == "ghost":
            return      # reaching the chunks would load the chunk tree
        for zdata in self.chunktab.values():
            zdata._p_deactivate()

    def setblkdata(self, buf: memoryview, unchanged: Container[int] = ()) -> bool:
        """Make this object hold `buf`, rewriting only the chunks that differ.

        Each chunk is compared with the stored one, except those at offsets
        in `unchanged`, which the caller knows hold the stored bytes already
        (comparing loads the chunk: one object load each).  Returns False if
        `buf` is all zeros.
        """
        chunktab = self.chunktab
        for off in range(0, len(buf), ZBLK1_CHUNKSIZE):
            if off in unchanged:
                continue
            data = bytes(buf[off:off + ZBLK1_CHUNKSIZE]).rstrip(b"\0")
            zdata = chunktab.get(off)
            if not data:
                if zdata is not None:
                    del chunktab[off]
            elif zdata is None:
                chunktab[off] = self._ZData(data)
            elif zdata.data != data:
                zdata.data = data
        return bool(chunktab)


_ZBLK_FORMATS: dict[str, type[ZBlk0] | type[ZBlk1]] = {"ZBlk0": ZBlk0, "ZBlk1": ZBlk1}


def zblk_writer_format() -> type[ZBlk0] | type[ZBlk1]:
    """Return the block class new block data is written as.

    Taken from ``$ZBIGARRAY_ZBLK_FMT`` at each call (``ZBlk0`` when unset).

    Raises
    ------
    ValueError
        The variable names no block format.
    """
    name = os.environ.get(ZBLK_FMT_ENV, "ZBlk0")
    try:
        return _ZBLK_FORMATS[name]
    except KeyError:
        raise ValueError(f"{ZBLK_FMT_ENV}={name!r}: expected one of "
                         f"{', '.join(sorted(_ZBLK_FORMATS))}") from None


class ZBigFile(Persistent):
    """A file of fixed-size blocks kept in ZODB.

    Parameters
    ----------
    blksize
        Block size in bytes: a positive multiple of the OS page size, at most
        1 GiB.

    Attributes
    ----------
    blksize : int
        Block size in bytes.
    blktab : BTrees.LOBTree.LOBTree
        Block number -> :class:`ZBlk0` or :class:`ZBlk1`; missing blocks are
        holes and read as zeros.

    Notes
    -----
    ZBigFile is a plain persistent object, not a subclass of
    :class:`zbigarray.bigfile.BigFile`: both bases are C types with their own
    instance layouts and cannot be combined.  Each handle from
    :meth:`fileh_open` gets its own small BigFile that reads and writes blocks
    through this object (see ``docs/storage.md``).
    """

    _zblk_classes: dict[type, type[ZBlk0] | type[ZBlk1]] = {ZBlk0: ZBlk0, ZBlk1: ZBlk1}
    """Writer's format -> class of new block objects (a subclass storing
    other class paths sets its own)."""

    def __init__(self, blksize: int) -> None:
        if isinstance(blksize, bool) or not isinstance(blksize, int):
            raise TypeError(f"blksize must be an int, not {type(blksize).__name__}")
        if blksize <= 0 or blksize % mmap.PAGESIZE or blksize > _BLKSIZE_MAX:
            raise ValueError(f"blksize={blksize}: must be a positive multiple of "
                             f"the OS page size ({mmap.PAGESIZE}) up to {_BLKSIZE_MAX}")
        self.blksize = blksize
        self.blktab = LOBTree()

    def __getstate__(self) -> tuple[int, LOBTree]:
        fileh = self.__dict__.get("_v_fileh")
        jar = self._p_jar
        if (fileh is not None and jar is not None and not fileh.closed and fileh.isdirty()
                and fileh.file.dm.transaction_manager is not jar.transaction_manager):
            # Written while new, under transaction.manager, and now stored by
            # a connection with another transaction manager: that commit
            # would not contain the data.
            raise ValueError(
                "a new ZBigArray/ZBigFile was written before it had a connection, and "
                "is now committed through a connection with another transaction "
                "manager than transaction.manager: add it to the connection "
                "(conn.add(obj)) before writing to it")
        return (self.blksize, self.blktab)

    def __setstate__(self, state: tuple[int, LOBTree]) -> None:
        self.blksize, self.blktab = state

    # -- block I/O, called by the handles' BigFiles --------------------------

    def loadblkdata(self, blk: int, buf: memoryview,
                    path: list[Persistent], deps: list[Persistent]) -> Any:
        """Fill `buf` with block `blk`; return its block object (None: hole).

        `path` receives this object and the blktab nodes that locate `blk`,
        `deps` the objects the block's content was read from.
        """
        path.append(self)
        zblk = _btree.lookup(self.blktab, blk, path)
        if zblk is None:
            _zero(buf, 0, len(buf))
        else:
            # Through the class: looking a method up on a ghost would load
            # it (the whole block), where its record can be read instead.
            type(zblk).loadblkdata(zblk, buf, deps)
            # The page now holds this data: do not keep a second copy in
            # the ZODB cache.
            zblk._p_deactivate()
        return zblk

    def blkdeps(self, blk: int, path: list[Persistent], deps: list[Persistent]) -> Any:
        """Like :meth:`loadblkdata`, collecting the objects without reading data."""
        path.append(self)
        zblk = _btree.lookup(self.blktab, blk, path)
        if zblk is not None:
            # Through the class: looking a method up on a ghost ZBlk0 would
            # load its whole block of data first.
            type(zblk).blkdeps(zblk, deps)
        return zblk

    def storeblkdata(self, blk: int, buf: memoryview, unchanged: Container[int] = (),
                     later: Callable[[], bytes] | None = None) -> Any:
        """Save `buf` as block `blk`; return its block object (None: hole).

        Written in the format :func:`zblk_writer_format` names; an existing
        block of the other format is replaced.  An all-zero block becomes a
        hole: it stores nothing.  `unchanged`: offsets of ZBlk1 chunks known
        to be stored as they are in `buf` already (see
        :meth:`ZBlk1.setblkdata`).  `later`: gives `buf`'s bytes when a new
        ZBlk0 is pickled (:meth:`ZBlk0.setblkdata_later`), so that none is
        copied now.
        """
        fmt = self._zblk_classes[zblk_writer_format()]
        zblk = self.blktab.get(blk)
        if type(zblk) is fmt:
            if zblk.setblkdata(buf, unchanged):
                return zblk
        else:
            new = fmt()
            if (new.setblkdata_later(buf, later) if later is not None and isinstance(new, ZBlk0)
                    else new.setblkdata(buf)):
                self.blktab[blk] = new
                return new
        if zblk is not None:
            del self.blktab[blk]
        return None

    def fileh_open(self, ram: RAM | None = None) -> BigFileH:
        """Open a file handle bound to the transactions of this object's connection.

        Parameters
        ----------
        ram
            RAM the handle takes its pages from (None: the process default).

        Returns
        -------
        zbigarray.bigfile.BigFileH
            A file handle that joins the transaction
            of this object's connection: commit saves its dirty pages, abort
            discards them.  Before this object is added to a connection, the
            handle follows ``transaction.manager``.

        Raises
        ------
        ValueError
            ``$ZBIGARRAY_ZBLK_FMT`` names no block format, or
            ``$ZBIGARRAY_RECONNECT_TIMEOUT`` is not a number of seconds.
        """
        from zbigarray.storage._datamanager import fileh_open
        from zbigarray.storage._reconnect import reconnect_timeout

        # Fail now rather than at the first commit, or during an outage.
        zblk_writer_format()
        reconnect_timeout()
        return fileh_open(self, ram)

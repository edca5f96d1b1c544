"""ZBigArray: a BigArray stored in ZODB, changed under transactions."""

from __future__ import annotations

from typing import Any

from persistent import Persistent
from ZODB.POSException import ConnectionStateError

from zbigarray.bigarray._bigarray import BigArray, ShapeLike
from zbigarray.bigfile import BigFileH
from zbigarray.storage._datamanager import default_fileh
from zbigarray.storage.file_zodb import ZBigFile


class ZBigArray(BigArray, Persistent):
    """A persistent BigArray: its header and its data live in ZODB.

    Parameters
    ----------
    shape
        An int or a sequence of ints, none negative.
    dtype
        Anything ``numpy.dtype`` accepts, holding no Python objects.
    order
        ``'C'`` or ``'F'``.
    blksize
        Bytes per block of its :class:`~zbigarray.storage.file_zodb.ZBigFile`:
        the unit of loading, of RAM use and (with ZBlk0) of storage writes.

    Notes
    -----
    Persistent state: a dict ``{'shape', 'dtype', 'order', 'zfile'}`` (the
    header and the :class:`ZBigFile` holding the bytes).  ``resize`` and
    ``append`` change the header and mark the object changed; writes to the
    elements change block objects of ``zfile`` at commit.

    The data is usable at once, before the array is added to a connection:
    ``root['A'] = A = ZBigArray(...); A[:] = 1; transaction.commit()``.  Until
    the commit that stores it, the array's file handle follows
    ``transaction.manager`` (the calling thread's transactions); once stored,
    the transactions of its connection.  All ZBigArrays over one ZBigFile in
    one connection share one file handle.
    """

    def __init__(self, shape: ShapeLike, dtype: Any, order: str = "C",
                 blksize: int = 2 * 1024 * 1024) -> None:
        self._init_header(shape, dtype, order)
        self.zfile = ZBigFile(blksize)

    def __getstate__(self) -> dict[str, Any]:
        return {"shape": self._shape, "dtype": self._dtype, "order": self._order,
                "zfile": self.zfile}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._shape = tuple(state["shape"])
        self._dtype = state["dtype"]
        self._order = state["order"]
        self.zfile = state["zfile"]

    @property
    def _fileh(self) -> BigFileH:
        jar = self._p_jar
        if jar is not None and jar.opened is None:
            # Mapping pages now would load them through a closed connection
            # inside a page fault, which is fatal.
            raise ConnectionStateError(
                f"{type(self).__name__} {self._p_oid!r}: its connection is closed")
        zfile = self.zfile
        if zfile._p_jar is None and self._p_jar is not None:
            # Added to a connection (conn.add) but not yet stored: give the
            # file the same connection, so that its handle follows that
            # connection's transactions from the first write.
            self._p_jar.add(zfile)
        fileh = default_fileh(zfile)
        # A transaction that began implicitly was announced to nobody: join
        # it before this access can write anything.
        fileh.file.dm.join_current()  # type: ignore[attr-defined]  # a ZBlkBigFile
        return fileh

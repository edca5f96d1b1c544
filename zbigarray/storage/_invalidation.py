"""Dropping cached pages whose blocks another client changed.

A file handle caches pages of a ZBigFile.  When another connection commits a
change to the file, the pages of the changed blocks must go at this
connection's next transaction boundary, whichever objects happen to be in the
ZODB cache.

How changes are seen.  At each boundary, ZODB's ``Connection.newTransaction``
asks its MVCC storage for the oids committed by others since the previous
boundary (``poll_invalidations()``: the full set, or None meaning "anything may
have changed") and then invalidates its cache with them.  :class:`ConnectionHook`
wraps that one call on the connection's storage, so that it sees the same set
at the same moment, independently of what the cache holds.

How oids map to blocks.  When a page is loaded, :class:`BlkDeps` records the
oids it was read from, in two roles:

- *data* objects: the block object and, for ZBlk1, its chunk tree nodes and
  ZData.  Any of them changed -> the page is stale, drop it.
- *path* objects: the ZBigFile and the blktab nodes visited to find the block
  (see :mod:`zbigarray.storage._btree`).  A change of one of them may or may
  not concern this block (a bucket also changes when a neighbour is added), so
  the block is looked up again at the new snapshot: a different block object
  (or a hole becoming a block, or the reverse) -> drop; the same -> keep the
  page and record the new path.

This is exact: as long as no object on the path changed, a lookup from the
same root finds the same block object, and as long as no data object changed
the block reads the same.  Pages of blocks the other side did not touch stay
cached, e.g. when it only appends.

Objects created in this process have no oid until they are committed; a block
read or written through such objects is kept *unanchored* and its dependencies
are recorded again at the first boundary after the commit.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from itertools import islice
from typing import TYPE_CHECKING

from persistent import Persistent

from zbigarray.storage._connlock import connection_lock
from zbigarray.storage._storeflow import bound_store_queue

if TYPE_CHECKING:
    from ZODB.Connection import Connection

    from zbigarray.bigfile import BigFileH
    from zbigarray.storage._datamanager import FileHDataManager

Oid = bytes


def _oids(objs: Iterable[Persistent]) -> tuple[Oid, ...] | None:
    """The oids of `objs`; None if one of them has none yet (not committed)."""
    oids = tuple(o._p_oid for o in objs)
    return None if None in oids else oids


class BlkDeps:
    """Which oids the cached pages of one file handle were read from."""

    def __init__(self) -> None:
        # blk -> (path oids, block object oid or None, data oids)
        self._blk: dict[int, tuple[tuple[Oid, ...], Oid | None, tuple[Oid, ...]]] = {}
        self._by_path: dict[Oid, set[int]] = {}
        self._by_data: dict[Oid, set[int]] = {}
        self.unanchored: set[int] = set()
        # blk -> digest of each ZBlk1 chunk as stored, while the page is
        # cached: lets storeblk skip unchanged chunks without loading them.
        self.digests: dict[int, list[bytes]] = {}

    def __len__(self) -> int:
        """Number of blocks with recorded dependencies."""
        return len(self._blk)

    def oldest(self, n: int) -> list[int]:
        """The `n` blocks recorded longest ago (recording again renews)."""
        return list(islice(self._blk, n))

    def blocks(self) -> set[int]:
        """Every block with a recorded or pending dependency."""
        return set(self._blk) | self.unanchored

    def record(self, blk: int, path: Iterable[Persistent], zblk: Persistent | None,
               data: Iterable[Persistent]) -> None:
        """Remember that block `blk`'s page was read from these objects."""
        self._unlink(blk)
        self.unanchored.discard(blk)
        path_oids, data_oids = _oids(path), _oids(data)
        zoid = None if zblk is None else zblk._p_oid
        if path_oids is None or data_oids is None or (zblk is not None and zoid is None):
            self.unanchored.add(blk)
            return
        self._link(blk, path_oids, zoid, data_oids)

    def repath(self, blk: int, path: Iterable[Persistent]) -> None:
        """Block `blk` still has the same block object, found through `path`."""
        _, zoid, data_oids = self._blk[blk]
        self._unlink(blk)
        path_oids = _oids(path)
        if path_oids is None:
            self.unanchored.add(blk)
            return
        self._link(blk, path_oids, zoid, data_oids)

    def unanchor(self, blk: int) -> None:
        """Block `blk` was written here: record its objects again later."""
        self._unlink(blk)
        self.unanchored.add(blk)

    def forget(self, blk: int) -> None:
        """Drop everything recorded for `blk`: its page is gone."""
        self._unlink(blk)
        self.unanchored.discard(blk)
        self.digests.pop(blk, None)

    def _link(self, blk: int, path_oids: tuple[Oid, ...], zoid: Oid | None,
              data_oids: tuple[Oid, ...]) -> None:
        self._blk[blk] = (path_oids, zoid, data_oids)
        for oid in path_oids:
            self._by_path.setdefault(oid, set()).add(blk)
        for oid in data_oids:
            self._by_data.setdefault(oid, set()).add(blk)

    def _unlink(self, blk: int) -> None:
        entry = self._blk.pop(blk, None)
        if entry is None:
            return
        path_oids, _, data_oids = entry
        for table, oids in ((self._by_path, path_oids), (self._by_data, data_oids)):
            for oid in oids:
                blks = table[oid]
                blks.discard(blk)
                if not blks:
                    del table[oid]

    def zblk_oid(self, blk: int) -> Oid | None:
        """The block object oid recorded for `blk` (None: it was a hole)."""
        return self._blk[blk][1]

    def affected(self, oids: Iterable[Oid]) -> tuple[set[int], set[int]]:
        """Blocks touched by a change of `oids`: (stale, to look up again)."""
        stale: set[int] = set()
        relook: set[int] = set()
        for oid in oids:
            stale |= self._by_data.get(oid, set())
            relook |= self._by_path.get(oid, set())
        return stale, relook - stale


class ConnectionHook:
    """What zbigarray attaches to one ZODB connection.

    - Sees each ``poll_invalidations()`` result (see the module docstring)
      and hands it to every file handle bound to the connection.
    - Keeps one default file handle per ZBigFile (what ZBigArray uses), so
      that all arrays over one file in one connection share one page cache
      and stay coherent, whatever ZODB does to the persistent objects
      (ghosting clears volatile attributes).
    - Keeps each handle registered with the connection's current
      transaction manager, which changes when the connection is closed and
      opened again, possibly in another thread.
    - Bounds what a ZEO client queues while a commit streams out
      (:mod:`zbigarray.storage._storeflow`).

    Use :func:`connection_hook` to get it.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._dms: weakref.WeakSet[FileHDataManager] = weakref.WeakSet()
        self.default_fileh: dict[int, BigFileH] = {}
        storage = conn._normal_storage
        self._poll: Callable[[], list[Oid] | None] = storage.poll_invalidations
        storage.poll_invalidations = self._poll_invalidations
        bound_store_queue(conn)

    def add(self, dm: FileHDataManager) -> None:
        """Bind a file handle's data manager to this connection."""
        self._dms.add(dm)

    def discard(self, dm: FileHDataManager) -> None:
        """Unbind a data manager (its handle was closed)."""
        self._dms.discard(dm)

    def siblings(self, dm: FileHDataManager) -> list[FileHDataManager]:
        """Other handles of the same ZBigFile object in this connection."""
        return [d for d in list(self._dms) if d is not dm and d.zfile is dm.zfile]

    def _poll_invalidations(self) -> list[Oid] | None:
        conn = self._conn
        # Loads in flight in other threads (page faults) finish first, and
        # later ones read the new snapshot from objects invalidated already.
        with connection_lock(conn):
            oids = self._poll()
            if oids is not None:
                # Connection.newTransaction does this right after we return;
                # do it first so that the lookups below read the new
                # snapshot.  (The cache empties a list it is given: give it
                # a copy.)
                conn._cache.invalidate(list(oids))
        changed = None if oids is None else frozenset(oids)
        tm = conn.transaction_manager
        for dm in list(self._dms):
            dm.invalidate(changed)
            if tm is not None:
                dm.follow(tm)
        return oids


def connection_hook(conn: Connection) -> ConnectionHook:
    """Return the :class:`ConnectionHook` of `conn`, attaching one if needed."""
    hook = conn.__dict__.get("_zbigarray_hook")
    if hook is None:
        # Threads using the connection's arrays for the first time at once
        # must not attach two hooks (each wrapping the poll).
        with connection_lock(conn):
            hook = conn.__dict__.get("_zbigarray_hook")
            if hook is None:
                hook = conn._zbigarray_hook = ConnectionHook(conn)
    return hook

"""The BigFile behind each handle of a ZBigFile: loadblk/storeblk on ZODB.

``ZBigFile`` cannot itself be a ``BigFile`` (see its Notes), so each handle
gets one of these.  Besides moving bytes between pages and block objects, it
records what each cached page was read from (:class:`BlkDeps`), which is what
invalidation works from, and keeps those records bounded.

loadblk and storeblk run in whichever thread faults (or spills, or commits):
each holds the connection's lock while it uses the connection (see
:mod:`zbigarray.storage._connlock`), and a load that fails because the
storage lost its server is retried while it reconnects (see
:mod:`zbigarray.storage._reconnect`).

It also takes part in the transaction from inside page faults: ``dirtied``
joins it before the handle's first change, and ``spill`` makes room when the
RAM is full of dirty pages by storing the oldest into their block objects
and moving those to the connection's savepoint storage (see
:mod:`zbigarray.storage._uncommitted`).

loadblk, dirtied and spill may run in a proxy thread of the fault layer,
serving a fault taken inside a system call for another thread: they act in
that thread's transaction (see
:meth:`~zbigarray.storage._datamanager.FileHDataManager.acting_for_thread`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

import numpy as np
from persistent import Persistent

from zbigarray.bigfile import BigFile, BigFileH, loadblk_buf_zeroed
from zbigarray.storage import _btree
from zbigarray.storage._connlock import object_lock
from zbigarray.storage._invalidation import BlkDeps
from zbigarray.storage._readahead import Readahead
from zbigarray.storage._reconnect import retry_while_disconnected
from zbigarray.storage._uncommitted import Uncommitted
from zbigarray.storage.file_zodb import ZBLK1_CHUNKSIZE, ZBigFile, ZBlk1

if TYPE_CHECKING:
    from zbigarray.storage._datamanager import FileHDataManager


def _chunk_digests(buf: memoryview) -> list[bytes]:
    """A 128-bit BLAKE2b digest of each ZBlk1 chunk of `buf`."""
    return [blake2b(buf[off:off + ZBLK1_CHUNKSIZE], digest_size=16).digest()
            for off in range(0, len(buf), ZBLK1_CHUNKSIZE)]


class _PageBytes:
    """Block `blk`'s bytes as its page holds them now, for a block object
    pickled after the store (:meth:`ZBlk0.setblkdata_later`).  The page is
    dirty until the commit ends; if it is gone all the same (the handle
    closed meanwhile), the commit fails rather than store something else."""

    def __init__(self, fileh: BigFileH, blk: int, describe: Callable[[str, int], str]) -> None:
        self.fileh = fileh
        self.blk = blk
        self.describe = describe

    def __call__(self) -> bytes:
        data = None if self.fileh.closed else self.fileh.page_bytes(self.blk)
        if data is None:
            raise RuntimeError(f"{self.describe('committing', self.blk)}: its page is gone "
                               "(the handle was closed during the commit)")
        return data


class ZBlkBigFile(BigFile):
    """The BigFile behind one handle of a ZBigFile.

    Parameters
    ----------
    zfile
        The persistent file whose blocks are read and written.
    """

    def __new__(cls, zfile: ZBigFile) -> ZBlkBigFile:
        return BigFile.__new__(cls, zfile.blksize)

    def __init__(self, zfile: ZBigFile) -> None:
        self.zfile = zfile
        self.deps = BlkDeps()
        # block -> block object (None: hole) written this transaction
        self.stored: dict[int, Persistent | None] = {}
        self.uncommitted = Uncommitted()
        # While a savepoint is taken: block -> snapshot offset, and storeblk
        # saves into the snapshot instead of the block objects.
        self.snapshot: dict[int, int] | None = None
        # While a spill runs: the block objects it stored.
        self._spilled: list[Persistent] | None = None
        # While the commit stores the handle's dirty pages (FileHDataManager
        # ._store): new ZBlk0 objects read their page when pickled.
        self.storing_for_commit = False
        self.dm: FileHDataManager | None = None
        # The sequential run of loads; used under the connection's lock.
        self._readahead = Readahead(zfile.blksize)
        # Records beyond this are pruned (see _prune); set by fileh_open.
        self.max_deps = 1 << 62
        # The records are also changed without the connection's lock (page
        # drops at abort and after our own commit, pruning): keep them
        # consistent.  Never held while waiting for anything else.
        self._lock = threading.Lock()

    def _describe(self, doing: str, blk: int) -> str:
        return f"{doing} block {blk} of ZBigFile {self.zfile._p_oid!r}"

    def _read(self, blk: int, buf: memoryview) -> tuple[Any, list[Persistent], list[Persistent]]:
        """Load block `blk` into `buf`; the connection's lock is held.

        When the loads walk the file forward, the next blocks are asked for
        first (see :mod:`zbigarray.storage._readahead`).
        """
        path: list[Persistent] = []
        data: list[Persistent] = []
        fileh = None if self.dm is None else self.dm.fileh
        if fileh is not None and not fileh.closed:
            self._readahead.loading(self.zfile, blk, fileh.ram.capacity)
        zblk = self.zfile.loadblkdata(blk, buf, path, data)
        return zblk, path, data

    def _acting_for_thread(self) -> AbstractContextManager[None]:
        """Around a callback: in the transaction of the thread it acts for."""
        return nullcontext() if self.dm is None else self.dm.acting_for_thread()

    def loadblk(self, blk: int, buf: memoryview) -> None:
        # In the faulting thread's transaction (this may be a proxy thread):
        # restoring a block rolled back to a savepoint changes its block
        # object, which may make the Connection join the transaction.
        with self._acting_for_thread():
            self._loadblk(blk, buf)

    def _loadblk(self, blk: int, buf: memoryview) -> None:
        with object_lock(self.zfile):
            off = self.uncommitted.overlay.pop(blk, None)
            if off is not None:
                # Rolled back to a savepoint at which the block was dirty:
                # its content then, stored again so that the page is clean.
                try:
                    self.uncommitted.restore(off, buf)
                    self._store(blk, buf)
                except BaseException:
                    self.uncommitted.overlay[blk] = off
                    raise
                return
            tries = 0

            def read() -> tuple[Any, list[Persistent], list[Persistent]]:
                nonlocal tries
                if tries and loadblk_buf_zeroed(buf):
                    # Loads leave alone what they would write zeros into
                    # when the page's memory held only zeros (file_zodb's
                    # _zero): make it so again after a try that failed.
                    np.frombuffer(buf, np.uint8)[:] = 0
                tries += 1
                return self._read(blk, buf)

            zblk, path, data = retry_while_disconnected(
                read, lambda: self._describe("loading", blk))
            digests = _chunk_digests(buf) if type(zblk) is ZBlk1 else None
            # Recorded before the connection is released: a transaction
            # boundary taken meanwhile (stale_blocks) must see this page,
            # read at the old snapshot.
            with self._lock:
                self.deps.record(blk, path, zblk, data)
                if digests is not None:
                    self.deps.digests[blk] = digests
                else:
                    self.deps.digests.pop(blk, None)
        if len(self.deps) > self.max_deps:
            # Outside the connection's lock: it drops pages.
            self._prune()

    def _prune(self) -> None:
        """Bound what is recorded to about twice the pages RAM can hold.

        RAM reclaims clean pages without telling us, so records of pages
        long gone would pile up (a scan of a file bigger than RAM records
        every block).  Dropping the oldest records is safe only together
        with their pages (a page without a record would miss
        invalidations), and dropping a page is safe only when it is clean:
        so prune only while the handle has no dirty page.  Reading is what
        makes records pile up, so this bounds them where it matters.
        """
        fileh = None if self.dm is None else self.dm.fileh
        if fileh is None or fileh.closed or fileh.isdirty():
            return
        with self._lock:
            victims = self.deps.oldest(len(self.deps) - self.max_deps * 3 // 4)
            for blk in victims:
                self.deps.forget(blk)
        for blk in victims:
            fileh.invalidate_page(blk)

    def storeblk(self, blk: int, buf: memoryview) -> None:
        if self.snapshot is not None:
            self.snapshot[blk] = self.uncommitted.save(buf)
            return
        self._store(blk, buf)

    def _store(self, blk: int, buf: memoryview) -> None:
        # Chunks whose digest is the one loaded (at this transaction's
        # snapshot, or stored by our last commit) are stored as they are.
        known = self.deps.digests.get(blk)
        new = None
        unchanged: set[int] = set()
        if known is not None:
            new = _chunk_digests(buf)
            unchanged = {i * ZBLK1_CHUNKSIZE for i, (a, b) in enumerate(zip(known, new))
                         if a == b}
        # The lock for this block only, not for the whole writeout that
        # calls us: this is all the connection use, the pages being stored
        # are dirty (so no thread loads them meanwhile), and the writeout
        # itself runs in the fault layer, which must not be entered with
        # the lock held (see _connlock).
        with object_lock(self.zfile):
            # Storing reads the block objects it changes: ride through a
            # reconnect as loads do (storing again after a failure part-way
            # is idempotent).
            later = None
            if self.storing_for_commit and self._spilled is None and self.dm is not None:
                later = _PageBytes(self.dm.fileh, blk, self._describe)
            zblk = self.stored[blk] = retry_while_disconnected(
                lambda: self.zfile.storeblkdata(blk, buf, unchanged, later),
                lambda: self._describe("storing", blk))
            self.uncommitted.note_stored(blk)
            if zblk is not None and self._spilled is not None:
                self._spilled.append(zblk)
            with self._lock:
                self.deps.unanchor(blk)
                if type(zblk) is ZBlk1:
                    self.deps.digests[blk] = new if new is not None else _chunk_digests(buf)
                else:
                    self.deps.digests.pop(blk, None)

    def dirtied(self) -> None:
        """Called inside the page fault before the handle's first change:
        join the transaction now, whichever thread writes (for a proxy
        thread: the faulting thread's transaction)."""
        jar = self.zfile._p_jar
        if jar is not None and jar.isReadOnly():
            # A past snapshot or a read-only database: the change could
            # never be committed, so it is refused at once rather than lost.
            raise TypeError(f"ZBigFile {self.zfile._p_oid!r} is read-only here: its connection "
                            f"reads a past snapshot or a read-only database")
        if self.dm is not None:
            self.dm.join_current()

    def spill(self) -> None:
        """Called inside a page fault that found the RAM full of dirty
        pages: store the older half of ours into their block objects and move
        those to the connection's savepoint storage, so that neither the
        pages nor the objects stay in memory (see _uncommitted).

        ``Connection.savepoint()`` itself uses no transaction manager, but
        storing changes block objects, and the first change of a transaction
        makes the Connection join its manager's current transaction: in a
        proxy thread, that must be the faulting thread's, or the faulting
        thread's commit would not have the Connection (it fails).
        """
        with self._acting_for_thread():
            self._spill()

    def _spill(self) -> None:
        fileh = None if self.dm is None else self.dm.fileh
        if fileh is None or fileh.closed:
            return
        spilled: list[Persistent] = []
        self._spilled = spilled
        try:
            fileh.dirty_writeout_oldest(max(1, fileh.stats()["ndirty"] // 2))
        finally:
            self._spilled = None
        with object_lock(self.zfile):
            jar = self.zfile._p_jar
            if jar is None:
                return      # a new file, in no connection yet: objects stay in memory
            # Pages that held what their blocks hold (zeros over holes, data
            # written back unchanged) change no object: then the connection
            # may not have joined the transaction, and a savepoint would
            # switch it to a savepoint storage that no abort of this
            # transaction clears (its next transaction fails).
            if getattr(jar, "_registered_objects", True):
                jar.savepoint()
            # Unchanged now (in the savepoint storage): the cache may drop them.
            for zblk in spilled:
                type(zblk).ghostify(zblk)    # a ghost stays one: no load

    def stale_blocks(self, changed: frozenset[bytes] | None) -> set[int]:
        """Blocks whose cached page `changed` oids make stale (None: all).

        Runs at a transaction boundary, after the ZODB cache was invalidated,
        so that the lookups read the new snapshot.  Holds the connection's
        lock: a load in flight in another thread finishes, and is recorded,
        first.
        """
        with object_lock(self.zfile), self._lock:
            deps = self.deps
            if changed is None:
                stale = deps.blocks()
            else:
                stale, relook = deps.affected(changed)
                for blk in relook:
                    path: list[Persistent] = [self.zfile]
                    zblk = _btree.lookup(self.zfile.blktab, blk, path)
                    if (None if zblk is None else zblk._p_oid) != deps.zblk_oid(blk):
                        stale.add(blk)
                    else:
                        deps.repath(blk, path)
                for blk in deps.unanchored - stale:
                    path = []
                    data: list[Persistent] = []
                    zblk = self.zfile.blkdeps(blk, path, data)
                    deps.record(blk, path, zblk, data)
                    if not changed.isdisjoint(o._p_oid for o in path + data):
                        stale.add(blk)
            for blk in stale:
                deps.forget(blk)
            return stale

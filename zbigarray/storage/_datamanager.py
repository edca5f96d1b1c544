"""A ZBigFile's file handle as a participant in ZODB transactions.

Each handle from :meth:`ZBigFile.fileh_open` is a plain
:class:`zbigarray.bigfile.BigFileH` over its own
:class:`~zbigarray.storage._zblkfile.ZBlkBigFile` (the BigFile whose
loadblk/storeblk read and write the ZBigFile's block objects).
That BigFile holds the handle's :class:`FileHDataManager`, so the data manager
lives exactly as long as the handle: while any mapping (and so any NumPy view)
of the handle is alive, its writes still reach the transaction.

The protocol, in transaction order (see ``docs/storage.md``):

1. Join every transaction of the connection's transaction manager that
   changes the handle, with a before-commit hook: from ``newTransaction``
   (ISynchronizer) when the manager announces one, from
   :meth:`FileHDataManager.join_current` on each ZBigArray access, and --
   the one that matters for writes through NumPy views, which only the
   page-fault handler sees -- from the fault layer's ``dirtied`` callback,
   before a write makes the handle's first page dirty, in whichever thread.
   A connection opened without a manager has a plain (not thread-local) one,
   so its current transaction is the connection's from any thread.  A handle
   that joins after a savepoint was taken gets ``transaction``'s own abort
   savepoint for it: it was clean then, so discarding is the rollback.
2. The before-commit hook runs ``dirty_writeout(WRITEOUT_STORE)``: dirty pages
   become block objects.  It must happen before the Connection stores the
   objects it has registered, and before-commit hooks run before any data
   manager's two-phase commit, whatever the sort keys.  ``beforeCompletion``
   catches a dirty handle that was not joined and stores then.
3. ``tpc_finish``: ``dirty_writeout(WRITEOUT_MARKSTORED)``: only now, once the
   storage committed, are the pages clean.
4. ``abort`` / ``tpc_abort``: ``dirty_discard()``, and drop the pages of the
   blocks stored during the transaction (spilled ones are clean, but hold
   what is not committed); ZODB reverts the block objects, the next touch
   reloads them.
5. ``afterCompletion``: after an abort, as 4 (a handle unjoined by a
   savepoint's rollback was never asked to abort); after a commit, ghostify
   the block objects just written, so that their data is not kept twice
   (page + ZODB cache).

Beyond RAM, and savepoints (see :mod:`zbigarray.storage._uncommitted`): a
fault that finds the RAM full of dirty pages spills the oldest into the
transaction (``ZBlkBigFile.spill``); ``savepoint()`` saves the dirty pages'
content to a temporary file and rolling back restores it lazily, at the next
load of each block, so that it does not matter whether ``transaction`` rolls
the connection back before or after us.

A page fault of the handle that failed (a :class:`~zbigarray.bigfile.PageFaultError`
was raised) dooms the transaction: its changes may hold values computed from
the stand-in the failed access saw.  The before-commit hook refuses the commit
(:class:`DoomedTransaction`); a handle that had not joined joins in
``beforeCompletion`` (which runs for an abort too, so it only dooms there) and
refuses in ``tpc_begin``.  The abort discards the dirty pages, which makes the
handle usable again.

Threads: page faults, and so loadblk/storeblk, may come from any thread; they
serialize their use of the connection themselves (see
:mod:`zbigarray.storage._connlock`).  The transaction protocol itself (the
calls above) runs in the thread that ends or begins the connection's
transaction, as ZODB requires.

A page fault taken inside a system call (``os.write(fd, view)``,
``f.readinto(view)``) is served by a *proxy* thread of the fault layer, which
runs loadblk, dirtied and spill on behalf of the thread that made the call
(:func:`zbigarray.bigfile.fault_proxy_thread` names it).  With a plain
transaction manager that changes nothing.  With a thread-local one
(``db.open(transaction.manager)``), the proxy thread would resolve it to a
manager of its own, whose transaction nobody commits: the handle would join
it (and stay in it), and the Connection too when its first changed object
is stored there (a spill: the faulting thread's commit then fails, the
Connection still on its savepoint storage; a block restored after a
rollback: left out of the commit, silently).  So the data manager records, for each thread that acts for the handle, which manager the
thread-local one resolves to there (:class:`_ThreadManagers`), and the
callbacks run in a proxy with the faulting thread's
(:meth:`FileHDataManager.acting_for_thread`).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from operator import attrgetter
from typing import Any

import transaction
from transaction.interfaces import (DoomedTransaction, IDataManager, IDataManagerSavepoint,
                                    ISynchronizer, NoTransaction, TransactionFailedError)
from zope.interface import implementer

from zbigarray.bigfile import WRITEOUT_MARKSTORED, WRITEOUT_STORE, RAM, BigFileH
from zbigarray.storage._connlock import object_lock
from zbigarray.storage._invalidation import ConnectionHook, connection_hook
from zbigarray.storage._zblkfile import ZBlkBigFile
from zbigarray.storage.file_zodb import ZBigFile


def fileh_open(zfile: ZBigFile, ram: RAM | None) -> BigFileH:
    """Open a handle on `zfile` bound to its connection's transactions."""
    file = ZBlkBigFile(zfile)
    fileh = file.fileh_open(ram)
    file.max_deps = max(64, 2 * fileh.ram.capacity // zfile.blksize)
    file.dm = FileHDataManager(file, fileh)
    file.dm.bind()
    return fileh


def default_fileh(zfile: ZBigFile) -> BigFileH:
    """The handle all ZBigArrays over `zfile` in its connection share.

    Opened on first use.  Kept by the connection (see
    :class:`~zbigarray.storage._invalidation.ConnectionHook`), or, while
    `zfile` is new and has no connection, by `zfile` itself: an object
    without a connection is never ghosted.
    """
    jar = zfile._p_jar
    if jar is None:
        fileh = getattr(zfile, "_v_fileh", None)
        if fileh is None or fileh.closed:
            fileh = zfile._v_fileh = zfile.fileh_open()
        return fileh
    registry = connection_hook(jar).default_fileh
    fileh = registry.get(id(zfile))
    if fileh is None or fileh.closed:
        # The registry holds the handle, the handle its BigFile, the BigFile
        # zfile: id(zfile) cannot be reused while the entry exists.
        fileh = registry[id(zfile)] = zfile.fileh_open()
    return fileh


class _Savepoint:
    """A savepoint of one handle: the epoch it closed and where the content
    of the pages dirty then was saved (see _uncommitted)."""

    def __init__(self, dm: FileHDataManager, epoch: int, snapshot: dict[int, int]) -> None:
        self._dm = dm
        self._epoch = epoch
        self._snapshot = snapshot

    def rollback(self) -> None:
        self._dm._rollback(self._epoch, self._snapshot)


class _ThreadEntry:
    """What one thread's thread-local transaction manager resolves to."""

    __slots__ = ("manager", "seq", "__weakref__")

    def __init__(self, manager: transaction.TransactionManager) -> None:
        self.manager = manager
        self.seq = 0        # order of the thread's latest registration


class _ThreadManagers:
    """Which manager a thread-local transaction manager resolves to in each
    thread that acted for a handle, for the proxy threads that serve those
    threads' page faults (see the module docstring).

    Parameters
    ----------
    tm
        The thread-local manager the handle follows.

    Notes
    -----
    A thread's entry is held by the thread itself (a ``threading.local``),
    the registry keeps it weakly: it goes when the thread ends, whoever else
    holds the thread's manager (a connection opened in the thread without a
    manager does), so that nothing piles up and a native id reused by a
    later thread never finds an ended thread's manager.
    """

    def __init__(self, tm: transaction.ThreadTransactionManager) -> None:
        self._tm = tm
        self._mine = threading.local()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._by_thread: weakref.WeakValueDictionary[int, _ThreadEntry] = \
            weakref.WeakValueDictionary()

    def note(self) -> None:
        """Record the calling thread's manager (it acts for the handle)."""
        manager = self._tm.manager
        entry = getattr(self._mine, "entry", None)
        if entry is None or entry.manager is not manager:
            entry = self._mine.entry = _ThreadEntry(manager)
            with self._lock:
                self._by_thread[threading.get_native_id()] = entry
        entry.seq = next(self._seq)

    def manager_of(self, tid: int) -> transaction.TransactionManager | None:
        """The manager of the thread of native id `tid`.

        A thread that never acted for the handle gets the manager of the
        thread that did last: a view was handed to it by a thread that used
        the array, and a system call on it is the first thing it does with
        the handle (its own faults would have registered it), so the thread
        that handed it over is the best guess at whose transaction the
        write belongs to.  None when no thread is registered.
        """
        with self._lock:
            entry = self._by_thread.get(tid)
            if entry is None:
                entry = max(self._by_thread.values(), key=attrgetter("seq"), default=None)
        return None if entry is None else entry.manager

    @contextmanager
    def acting(self) -> Iterator[None]:
        """Around code acting for the handle: in a thread of the user,
        register it; in a proxy thread, make the thread-local manager
        resolve to the faulting thread's meanwhile, for the data manager and
        for the Connection, which joins ``transaction_manager.get()`` when
        the first object of a transaction changes (a spill, a block restored
        from a savepoint).  Only the proxy thread sees the change: it is
        its thread-local state."""
        # Looked up at each call: tests substitute it.
        from zbigarray.bigfile import fault_proxy_thread
        tid = fault_proxy_thread()
        if tid is None:
            self.note()
            yield
            return
        manager = self.manager_of(tid)
        if manager is None:
            yield
            return
        saved = self._tm.manager
        self._tm.manager = manager
        try:
            yield
        finally:
            self._tm.manager = saved


@implementer(IDataManager, IDataManagerSavepoint, ISynchronizer)
class FileHDataManager:
    """Ties one file handle of a ZBigFile to transactions.

    Parameters
    ----------
    file
        The handle's BigFile; it keeps this object alive.
    fileh
        The handle.
    """

    def __init__(self, file: ZBlkBigFile, fileh: BigFileH) -> None:
        self.zfile = file.zfile
        self._file = file
        self.fileh = fileh
        self.transaction_manager: Any = None
        # Set while transaction_manager is thread-local (see the module docstring).
        self._threads: _ThreadManagers | None = None
        self._txn: Any = None
        # Joining is check-then-join, from any thread that writes (and the
        # proxy threads serving their faults): join each transaction once.
        self._join_lock = threading.Lock()
        self._committed = False     # tpc_finish ran; afterCompletion resets it
        self._hook: ConnectionHook | None = None

    def bind(self) -> None:
        """Follow the ZBigFile's connection, or the thread's default
        transaction manager while the ZBigFile has none yet."""
        jar = self.zfile._p_jar
        if jar is None:
            self.follow(transaction.manager.manager)
            return
        if self._hook is None:
            self._hook = connection_hook(jar)
            self._hook.add(self)
            if getattr(self.zfile, "_v_fileh", None) is self.fileh:
                # The default handle of a ZBigFile that was new: keep it the
                # default now that ghosting may clear volatile attributes.
                self._hook.default_fileh.setdefault(id(self.zfile), self.fileh)
        if jar.transaction_manager is not None:
            self.follow(jar.transaction_manager)

    def follow(self, tm: Any) -> None:
        """Take part in the transactions of `tm` from now on.

        Called in a thread of the user acting for the handle (opening it,
        or at a transaction boundary of its connection), which is registered
        as such.
        """
        if tm is not self.transaction_manager:
            self._leave_manager()
            self.transaction_manager = tm
            self._threads = (_ThreadManagers(tm)
                             if isinstance(tm, transaction.ThreadTransactionManager) else None)
            self._txn = None
            tm.registerSynch(self)       # calls newTransaction with its current one
        if self._threads is not None:
            self._threads.note()

    def acting_for_thread(self) -> AbstractContextManager[None]:
        """Run the block in the transaction of the thread it acts for.

        In a thread of the user, that is the thread itself, which is
        registered as acting for the handle.  In a proxy thread of the fault
        layer (a fault taken inside a system call), it is the faulting
        thread: with a thread-local manager, the block sees that thread's
        manager (see the module docstring).  Wraps the fault layer's
        callbacks and :meth:`join_current`.
        """
        threads = self._threads
        if threads is None:
            return nullcontext()    # a plain manager: every thread sees the same
        return threads.acting()

    def _leave_manager(self) -> None:
        tm = self.transaction_manager
        if tm is not None:
            try:
                tm.unregisterSynch(self)
            except KeyError:
                pass        # its synchronizers were cleared (clearSynchs)

    def _closed(self) -> bool:
        if not self.fileh.closed:
            return False
        # Closed by its user: leave the transaction machinery for good.
        self._leave_manager()
        self.transaction_manager = None
        if self._hook is not None:
            self._hook.discard(self)
        return True

    def _join(self, txn: Any) -> None:
        with self._join_lock:
            if self._txn is txn:
                return
            try:
                txn.join(self)
            except (ValueError, TransactionFailedError):
                return      # committing or already completed: nothing to take part in
            txn.addBeforeCommitHook(self._store)
            self._txn = txn

    def join_current(self) -> None:
        """Join the current transaction of our manager, if there is one.

        Called on each access by ZBigArray, so that a transaction which began
        implicitly is joined before anything is written in it, and by the
        fault layer's ``dirtied`` callback.  In a proxy thread serving a
        fault, the transaction is the faulting thread's
        (:meth:`acting_for_thread`).
        """
        tm = self.transaction_manager
        if tm is None or self.fileh.closed:
            return
        with self.acting_for_thread():
            try:
                txn = tm.get()
            except NoTransaction:
                return
            self._join(txn)

    def _discard(self) -> None:
        """The transaction's changes are thrown away: dirty pages, and the
        pages of blocks stored during it (by spills or a commit that did not
        happen), which are clean but hold what was not committed."""
        file = self._file
        stored = set(file.stored) | file.uncommitted.stored()
        file.uncommitted.clear()
        file.stored.clear()
        self._drop_pages(stored)

    def _rollback(self, epoch: int, snapshot: dict[int, int]) -> None:
        """Back to the savepoint that closed `epoch`: dirty pages go, and
        the pages of blocks stored after it or saved in its snapshot (the
        next load of those restores them, see _uncommitted)."""
        file = self._file
        drop = file.uncommitted.rollback(epoch, snapshot)
        still_stored = file.uncommitted.stored()
        for blk in drop - still_stored:
            file.stored.pop(blk, None)
        self._drop_pages(drop)

    def _drop_pages(self, blks: set[int]) -> None:
        """Drop the dirty pages and the pages of `blks`, with what was
        recorded about them (digests of a store describe nothing stored)."""
        file = self._file
        with file._lock:
            for blk in blks:
                file.deps.forget(blk)
        if not self.fileh.closed:
            self.fileh.dirty_discard()
            for blk in blks:
                self.fileh.invalidate_page(blk)

    def _fault_failed(self) -> bool:
        return not self.fileh.closed and self.fileh.fault_failed

    def _refuse_if_fault_failed(self, txn: Any) -> None:
        """Refuse to commit `txn` if a page fault of the handle failed in it."""
        if not self._fault_failed():
            return
        if txn is not None and not txn.isDoomed():
            txn.doom()
        raise DoomedTransaction(
            f"a page fault of {self.zfile!r} failed in this transaction (a PageFaultError "
            "was raised), so its changes may hold values computed from the zeros the "
            "failed access saw: abort the transaction and redo it")

    def _store(self) -> None:
        """Before-commit hook: dirty pages, and blocks a rollback left to
        restore from a savepoint's snapshot, -> block objects."""
        self._refuse_if_fault_failed(self._txn)
        file = self._file
        if file.uncommitted.overlay:
            buf = memoryview(bytearray(self.zfile.blksize))
            for blk, off in sorted(file.uncommitted.overlay.items()):
                file.uncommitted.restore(off, buf)
                file.storeblk(blk, buf)
            file.uncommitted.overlay.clear()
        if not self.fileh.closed and self.fileh.isdirty():
            file.storing_for_commit = True
            try:
                self.fileh.dirty_writeout(WRITEOUT_STORE)
            finally:
                file.storing_for_commit = False

    def invalidate(self, changed: frozenset[bytes] | None) -> None:
        """Drop the pages that oids `changed` by others make stale (None: all)."""
        if self._closed():
            return
        try:
            stale = self._file.stale_blocks(changed)
        except Exception:
            # Could not tell which blocks changed (e.g. a load failed): the
            # safe answer is that all of them may have.
            stale = self._file.stale_blocks(None)
        for blk in stale:
            self.fileh.invalidate_page(blk)

    # ISynchronizer
    ##########################################################################

    def newTransaction(self, txn: Any) -> None:
        if not self._closed():
            self._join(txn)

    def beforeCompletion(self, txn: Any) -> None:
        if self._closed():
            return
        if self._fault_failed():
            # Commit or abort: doom, and join so that a commit reaches
            # tpc_begin, which refuses it, and an abort discards.
            if not txn.isDoomed():
                txn.doom()
            self._join(txn)
            return
        if self._txn is txn or not self.fileh.isdirty():
            return
        # Dirty but not joined: a transaction that began implicitly (after a
        # commit, TransactionManager.get() starts one without telling
        # synchronizers) and was not joined through join_current().  Commit
        # hooks have already run and this may be a commit or an abort: store
        # now, as a commit needs; an abort reverts the block objects and
        # discards the pages.
        self._join(txn)
        self._store()

    def afterCompletion(self, txn: Any) -> None:
        self._txn = None
        committed, self._committed = self._committed, False
        if self._closed():
            return
        if not committed:
            # Aborted (abort() may not have been called: a handle that
            # joined after a savepoint is unjoined by its rollback).
            self._discard()
            return
        with object_lock(self.zfile):     # ghostify may load (ZBlk1's chunk tree)
            for zblk in self._file.stored.values():
                if zblk is not None:
                    type(zblk).ghostify(zblk)    # a ghost stays one: no load
        self._file.stored.clear()
        self._file.uncommitted.clear()

    # IDataManager
    ##########################################################################

    def abort(self, txn: Any) -> None:
        self._txn = None
        self._discard()

    def tpc_begin(self, txn: Any) -> None:
        self._refuse_if_fault_failed(txn)

    def commit(self, txn: Any) -> None:
        # Done in the before-commit hook (_store), before any data manager
        # commits: the Connection must find the block objects changed.
        pass

    def tpc_vote(self, txn: Any) -> None:
        pass

    def tpc_finish(self, txn: Any) -> None:
        self._txn = None
        self._committed = True
        if self.fileh.closed:
            return
        self.fileh.dirty_writeout(WRITEOUT_MARKSTORED)
        # A new ZBigFile got its connection in this commit: from now on, see
        # that connection's invalidations (before it polls them next).
        if self._hook is None and self.zfile._p_jar is not None:
            self.bind()
        if self._hook is not None and self._file.stored:
            # Other handles of this file in this connection cache the old
            # content; the connection reports no invalidation for its own
            # commit.
            for sibling in self._hook.siblings(self):
                sibling.drop_blocks(self._file.stored)

    def tpc_abort(self, txn: Any) -> None:
        self._txn = None
        self._discard()

    def sortKey(self) -> str:
        return f"zbigarray.fileh:{id(self):x}"

    def drop_blocks(self, blks: Any) -> None:
        """Drop the cached pages of `blks`: their content changed here."""
        if self.fileh.closed:
            return
        with self._file._lock:
            for blk in blks:
                self._file.deps.forget(blk)
        for blk in blks:
            self.fileh.invalidate_page(blk)

    # IDataManagerSavepoint
    ##########################################################################

    def savepoint(self) -> _Savepoint:
        """A savepoint: the content of the dirty pages is saved, so that a
        rollback restores it (see _uncommitted).

        Raises
        ------
        DoomedTransaction
            A page fault of the handle failed: its pages may hold values
            computed from a stand-in, nothing to save.
        """
        self._refuse_if_fault_failed(self._txn)
        file = self._file
        snapshot = dict(file.uncommitted.overlay)
        if not self.fileh.closed and self.fileh.isdirty():
            file.snapshot = snapshot
            try:
                self.fileh.dirty_writeout(WRITEOUT_STORE)
            finally:
                file.snapshot = None
        return _Savepoint(self, file.uncommitted.close_epoch(), snapshot)

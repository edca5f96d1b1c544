"""A ZBigFile's file handle as a participant in ZODB transactions.

Each handle from :meth:`ZBigFile.fileh_open` is a plain
:class:`zbigarray.bigfile.BigFileH` over its own
:class:`~zbigarray.storage._zblkfile.ZBlkBigFile` (the BigFile whose
loadblk/storeblk read and write the ZBigFile's block objects).
That BigFile holds the handle's :class:`FileHDataManager`, so the data manager
lives exactly as long as the handle: while any mapping (and so any NumPy view)
of the handle is alive, its writes still reach the transaction.

The protocol, in transaction order (see ``docs/storage.md``):

1. Join every transaction of the connection's transaction manager, with a
   before-commit hook: from ``newTransaction`` (ISynchronizer) when the
   manager announces one, and from :meth:`FileHDataManager.join_current` on
   each ZBigArray access for transactions that begin implicitly (which
   ``TransactionManager.get()`` does not announce), and from
   ``Transaction.savepoint`` (see :func:`_join_at_savepoints`): a write
   through a NumPy view is seen only by the page-fault handler, so a handle
   may be dirty, or become dirty after the savepoint, without having joined,
   and only a joined data manager is asked for its savepoint.
2. The before-commit hook runs ``dirty_writeout(WRITEOUT_STORE)``: dirty pages
   become block objects.  It must happen before the Connection stores the
   objects it has registered, and before-commit hooks run before any data
   manager's two-phase commit, whatever the sort keys.  ``beforeCompletion``
   catches a dirty handle that was not joined and stores then.
3. ``tpc_finish``: ``dirty_writeout(WRITEOUT_MARKSTORED)``: only now, once the
   storage committed, are the pages clean.
4. ``abort`` / ``tpc_abort``: ``dirty_discard()``; ZODB reverts the block
   objects, the next touch reloads them.
5. ``afterCompletion``: anything still dirty was never part of a transaction
   that committed: discard it.  Ghostify the block objects just written, so
   that their data is not kept twice (page + ZODB cache).

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
"""

from __future__ import annotations

import functools
from typing import Any

import transaction
from transaction import Transaction
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
    """Rolling back discards the pages written since the savepoint: there
    were no dirty pages when it was taken (see FileHDataManager.savepoint)."""

    def __init__(self, dm: FileHDataManager) -> None:
        self._dm = dm

    def rollback(self) -> None:
        self._dm._discard()


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
        self._txn: Any = None
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
        """Take part in the transactions of `tm` from now on."""
        if tm is self.transaction_manager:
            return
        self._leave_manager()
        self.transaction_manager = tm
        self._txn = None
        tm.registerSynch(self)       # calls newTransaction with its current one

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
        if self._txn is txn:
            return
        try:
            txn.join(self)
        except (ValueError, TransactionFailedError):
            return      # committing or already completed: nothing to take part in
        txn.addBeforeCommitHook(self._store)
        self._txn = txn

    def join_savepoint(self, txn: Any) -> None:
        """Join `txn`, whose savepoint is being taken.

        Called when we are a synchronizer of `txn`'s manager, just before the
        savepoint asks the joined data managers for theirs.
        """
        if not self._closed():
            self._join(txn)

    def join_current(self) -> None:
        """Join the current transaction of our manager, if there is one.

        Called on each access by ZBigArray, so that a transaction which began
        implicitly is joined before anything is written in it.
        """
        tm = self.transaction_manager
        if tm is None or self.fileh.closed:
            return
        try:
            txn = tm.get()
        except NoTransaction:
            return
        self._join(txn)

    def _discard(self) -> None:
        if not self.fileh.closed:
            self.fileh.dirty_discard()
        # Blocks stored by a commit that did not happen: what was recorded
        # about them at the store (digests) describes nothing stored.
        with self._file._lock:
            for blk in self._file.stored:
                self._file.deps.forget(blk)
        self._file.stored.clear()

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
        """Before-commit hook: dirty pages -> block objects."""
        self._refuse_if_fault_failed(self._txn)
        self._file.stored.clear()
        if not self.fileh.closed and self.fileh.isdirty():
            self.fileh.dirty_writeout(WRITEOUT_STORE)

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
        if self._closed():
            return
        if self.fileh.isdirty() or self.fileh.fault_failed:
            self.fileh.dirty_discard()
        with object_lock(self.zfile):     # ghostify may load (ZBlk1's chunk tree)
            for zblk in self._file.stored.values():
                if zblk is not None:
                    zblk.ghostify()
        self._file.stored.clear()

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
        """A savepoint, when no page is dirty.

        Raises
        ------
        TypeError
            A page is dirty: its content cannot be restored on rollback.
        """
        if not self.fileh.closed and self.fileh.isdirty():
            raise TypeError(
                "savepoint(): a ZBigFile file handle has uncommitted changes, which "
                "savepoints cannot roll back; commit or abort before taking a savepoint")
        return _Savepoint(self)


def _join_at_savepoints() -> None:
    """Let file handles join a transaction when its savepoint is taken.

    A transaction that begins implicitly (``TransactionManager.get()`` after a
    commit or abort) is announced to no synchronizer (``newTransaction`` is
    called by ``begin()`` only, as ``ITransactionManager.begin`` documents),
    and ``Transaction.savepoint`` asks only the data managers that joined.  A
    handle written only through a NumPy view kept from an earlier transaction
    has not joined (nothing in Python saw the write), so without this the
    rollback would keep the write; and a handle still clean would not roll
    back writes made after the savepoint.  Wrapping ``Transaction.savepoint``
    makes every handle following the transaction's manager (its
    synchronizers) join first: a dirty one then refuses the savepoint
    (TypeError), a clean one rolls back what is written after it.  The
    wrapper is installed once per process, on this module's import, and does
    nothing for transactions without such handles.
    """
    original = Transaction.savepoint
    if getattr(original, "_zbigarray_joins", False):
        return
    if not hasattr(Transaction(), "_synchronizers"):
        # Without the synchronizers the wrapper could not find the handles
        # and a savepoint could silently keep writes: refuse to work instead.
        raise ImportError(
            "zbigarray.storage: this version of the transaction package keeps a "
            "transaction's synchronizers elsewhere than Transaction._synchronizers; "
            "savepoints of transactions with ZBigArray changes could not be made safe")

    @functools.wraps(original)
    def savepoint(self: Transaction, optimistic: bool = False) -> Any:
        def join(synch: Any) -> None:
            if isinstance(synch, FileHDataManager):
                synch.join_savepoint(self)
        self._synchronizers.map(join)
        return original(self, optimistic)

    savepoint._zbigarray_joins = True   # type: ignore[attr-defined]
    Transaction.savepoint = savepoint   # type: ignore[method-assign]


_join_at_savepoints()

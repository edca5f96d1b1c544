"""ZBigArray: a BigArray stored in ZODB, changed under transactions."""

from __future__ import annotations

import uuid
from functools import cache
from typing import Any

from persistent import GHOST, Persistent
from ZODB.POSException import ConnectionStateError

from zbigarray.bigarray._attrs import Attrs
from zbigarray.bigarray._bigarray import BigArray, ShapeLike
from zbigarray.bigfile import BigFileH
from zbigarray.storage._connlock import object_lock
from zbigarray.storage._datamanager import default_fileh
from zbigarray.storage._reconnect import retry_while_disconnected
from zbigarray.storage._write_relay import relayed_array
from zbigarray.storage.file_zodb import ZBigFile
from zbigarray.storage.snapshot import SnapshotRef, snapshot_ref


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

    Raises
    ------
    AttributeError
        Setting an attribute the class does not know (``A.units = "m"``):
        it would not be stored.  Metadata goes into :attr:`attrs`.  Known
        are the array's own state, ZODB's ``_p_`` and volatile ``_v_``
        attributes, and what a subclass declares: a class attribute
        (property, slot, default value) or a class-level annotation.  A
        subclass's declared attributes set on an instance are stored with
        the array.

    Notes
    -----
    Persistent state: a dict ``{'shape', 'dtype', 'order', 'zfile'}`` (the
    header and the :class:`ZBigFile` holding the bytes), and ``'attrs'``
    when :attr:`attrs` is not empty (arrays written before attrs existed
    read as empty).  ``resize`` and ``append`` change the header and mark
    the object changed; writes to the elements change block objects of
    ``zfile`` at commit.

    The data is usable at once, before the array is added to a connection:
    ``root['A'] = A = ZBigArray(...); A[:] = 1; transaction.commit()``.  Until
    the commit that stores it, the array's file handle follows
    ``transaction.manager`` (the calling thread's transactions); once stored,
    the transactions of its connection.  All ZBigArrays over one ZBigFile in
    one connection share one file handle.

    Threads: the array and its views may be used from several threads at
    once (indexing, assignment, ``numpy.asarray``, ``resize``, and any code
    touching the views' memory), also when the array is a ghost (after
    ``conn.cacheMinimize()``): everything that uses the connection takes its
    lock (see :mod:`zbigarray.storage._connlock`).  ``append`` is not atomic
    (it resizes, then writes the tail): append from one thread at a time.
    The connection's own operations (commit, abort, begin, ``sync``,
    ``cacheMinimize``, close) stay with one thread at a time, while no other
    thread is using its arrays, as ZODB requires.
    """

    # Persistent's attribute hook loads a ghost's state in whichever thread
    # reads it first, without our lock, and marks it loaded before the state
    # arrives: another thread reading meanwhile sees no attributes.  Plain
    # attribute reads instead find a ghost empty and land in __getattr__,
    # which loads under the connection's lock.  (Writes still go through
    # persistent's hook, which records changes; BigArray writes its
    # attributes only after reading them.)  Loaded attributes read at
    # object's speed.
    __getattribute__ = object.__getattribute__

    zfile: ZBigFile
    _attrs: dict[str, Any]
    """The values of :attr:`attrs`: replaced, never changed in place, so
    that each change is an assignment ZODB sees."""

    def __getattr__(self, name: str) -> Any:
        """Load the state of a ghost, under its connection's lock.

        Only called when `name` is missing: the object is a ghost, or
        another thread is loading it (then its lock is held until it is
        done), or it has no such attribute.
        """
        with object_lock(self):
            if self._p_state == GHOST:
                retry_while_disconnected(
                    lambda: self._p_getattr(name),      # persistent's loader
                    lambda: f"loading {type(self).__name__} {self._p_oid!r}")
            return object.__getattribute__(self, name)

    def __init__(self, shape: ShapeLike, dtype: Any, order: str = "C",
                 blksize: int = 2 * 1024 * 1024) -> None:
        self._init_header(shape, dtype, order)
        self.zfile = ZBigFile(blksize)
        self._attrs = {}

    def __getstate__(self) -> dict[str, Any]:
        state = {"shape": self._shape, "dtype": self._dtype, "order": self._order,
                 "zfile": self.zfile}
        if self._attrs:
            # Only when set: the state of an array without metadata stays
            # what every earlier version wrote and reads.
            state["attrs"] = self._attrs
        # What a subclass declared and set (see __setattr__), under its name.
        state.update(self._declared_state())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._shape = tuple(state["shape"])
        self._dtype = state["dtype"]
        self._order = state["order"]
        self.zfile = state["zfile"]
        self._attrs = state.get("attrs") or {}
        # A subclass's attributes, set directly: loading must not depend on
        # the class still declaring them.
        self.__dict__.update((k, v) for k, v in state.items() if k not in _STATE_KEYS)

    def _declared_state(self) -> dict[str, Any]:
        """Instance attributes beyond the array's own state: those a
        subclass declared and set."""
        return {k: v for k, v in self.__dict__.items()
                if k not in _OWN_ATTRIBUTES and not k.startswith(("_v_", "_p_"))}

    def __setattr__(self, name: str, value: Any) -> None:
        # Persistent stores what __getstate__ returns: an attribute it does
        # not know would be accepted, committed and gone after reopening.
        # Refuse it here, by name only (no load of a ghost).
        # (mypy takes a class for its instances when checking Hashable.)
        if not (name.startswith(("_v_", "_p_")) or name in _declared(type(self))):  # type: ignore[arg-type]
            raise AttributeError(
                f"{type(self).__name__} has no attribute {name!r}, and one set would not be "
                f"stored: put metadata in .attrs (A.attrs[{name!r}] = ...), or declare it "
                f"in a subclass")
        Persistent.__setattr__(self, name, value)

    @property
    def attrs(self) -> Attrs:
        """Metadata stored with the array: a mutable mapping of str keys to
        JSON-compatible values (like h5py's and zarr's ``attrs``).

        Changes are part of the transaction (commit saves them, abort undoes
        them); other processes see them after their next transaction
        boundary.  See :class:`zbigarray.bigarray._attrs.Attrs`.
        """
        return Attrs(self)

    def _get_attrs(self) -> dict[str, Any]:
        with object_lock(self):         # loads a ghost, as __getattr__
            return self._attrs

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        with object_lock(self):
            self._attrs = attrs         # Persistent marks the array changed

    @property
    def _fileh(self) -> BigFileH:
        jar = self._p_jar
        if jar is not None and jar.opened is None:
            # Mapping pages now would only fail later, inside a page fault:
            # say so here, where the view is asked for.
            raise ConnectionStateError(
                f"{type(self).__name__} {self._p_oid!r}: its connection is closed")
        # Under the lock: the handle is opened, and the transaction joined,
        # once, whichever threads come first; opening reads the ZBigFile.
        with object_lock(self):
            return retry_while_disconnected(
                self._open_fileh,
                lambda: f"opening the file of {type(self).__name__} {self._p_oid!r}")

    def _open_fileh(self) -> BigFileH:
        zfile = self.zfile
        # Attribute reads do not tell ZODB's cache that the array is in use
        # (see __getattribute__): each access to the data does.
        self._p_getattr("zfile")
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

    def resize(self, new_shape: ShapeLike, refcheck: bool = True) -> None:
        """As :meth:`BigArray.resize`, under the connection's lock: resizes
        from several threads apply one after the other, and the change is
        registered with the connection once."""
        with object_lock(self):
            BigArray.resize(self, new_shape, refcheck)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled outside ZODB (multiprocessing, dask, ...), a ZBigArray is a
        reference to it -- database URI, oid, and the snapshot its connection
        reads -- a few hundred bytes, never its content.  Unpickled, it opens
        that database (once per process) and is the array read-only at that
        snapshot.  (ZODB itself stores references to it by oid and never
        calls this.)

        Pickled where a ``dask.distributed`` client is active, with a
        connection that can write, the reference also names a relay in this
        process: writing to the array unpickled in a worker of that client
        (``dask.array.store``) writes into this array, under the current
        transaction, and returns once it is written (see
        :mod:`zbigarray.storage._write_relay`).

        Raises
        ------
        TypeError
            Not stored yet.
        ValueError
            Its database is not reachable from other processes.
        """
        ref = snapshot_ref(self)
        relayed = relayed_array(self, ref)
        if relayed is not None:
            return relayed.__reduce__()
        return (_open_snapshot, (ref,))

    def __setitem__(self, idx: Any, value: Any) -> None:
        jar = self._p_jar
        if jar is not None and jar.isReadOnly():
            raise TypeError(_read_only_message(self))
        BigArray.__setitem__(self, idx, value)

    def to_dask(self, chunks: Any = None) -> Any:
        """This array as a ``dask.array.Array`` at the snapshot the calling
        transaction reads (see :func:`zbigarray.dask.to_dask`; needs dask)."""
        from zbigarray.dask import to_dask

        return to_dask(self, chunks)

    def __dask_tokenize__(self) -> str:
        """A new token at each call: dask must not take two readings of a
        changing array for the same data.

        Without this, dask would pickle the array to tokenize it, which
        loads every block object of the file through ZODB.
        """
        return uuid.uuid4().hex


def _read_only_message(A: Any) -> str:
    return (f"{type(A).__name__} {A._p_oid!r} is read-only here: its connection reads a "
            f"past snapshot or a read-only database (an array unpickled in another process, "
            f"e.g. a dask worker, is one).  Write from the process whose transaction will "
            f"commit it: zbigarray.dask.store(x, A) computes on workers and writes here, and "
            f"so does dask.array.store(x, A) with a dask.distributed client active where A "
            f"is pickled")


def _open_snapshot(ref: SnapshotRef) -> ZBigArray:
    """Unpickling a ZBigArray: the array at `ref`'s snapshot."""
    return ref.open()


_STATE_KEYS = frozenset({"shape", "dtype", "order", "zfile", "attrs"})
"""Keys of a ZBigArray's persistent state; others are a subclass's attributes."""

_OWN_ATTRIBUTES = frozenset({"_shape", "_dtype", "_order", "zfile", "_attrs"})
"""Instance attributes holding that state."""


@cache
def _declared(cls: type) -> frozenset[str]:
    """Attribute names instances of `cls` may set: annotated in a class of
    its MRO, or present on the class (methods, properties, slots, values)."""
    names = {name for klass in cls.__mro__ for name in vars(klass).get("__annotations__", {})}
    names.update(dir(cls))
    return frozenset(names)

"""Reading block data below the object layer: records parsed, not unpickled.

Loading a block the ordinary way (``zblk.data``) makes the connection read
the object's record (one 2 MiB ``bytes``), unpickle it (a second one), and
keep that in the ZODB cache until the page is filled (a copy into a third
piece of fresh memory).  The kernel has to provide and zero each of them,
which costs several times the copy itself: a cold read ran at ≈ 0.05× a
plain ``storage.load`` loop over the same records (``benchmarks/RESULTS.md``).

The state of a :class:`~zbigarray.storage.file_zodb.ZBlk0` or
:class:`~zbigarray.storage.file_zodb.ZData` record is a pickled ``bytes``: a
fixed class pickle, then ``PROTO``, one ``BINBYTES`` opcode with its length,
the raw bytes, a memo put and ``STOP``.  :func:`bytes_state_of` reads the
record exactly as the connection would, and hands out a view of the bytes
inside it, which the caller copies straight into the page.

When this is the same as the object path, and when it is not:

- The record is read with ``conn._storage.load(oid)``, the call
  ``Connection.setstate`` makes to load a ghost: the connection's own
  storage view, i.e. its MVCC snapshot (``loadBefore`` the transaction's
  start for FileStorage and ZEO, RelStorage's own per-connection instance),
  or, after a savepoint, ZODB's ``TmpStore`` over it, which returns the
  savepoint's data for objects changed in this transaction.  So the bytes
  are those the object path would unpickle, whatever the storage.
- Only a *ghost* is read this way.  An object with state in memory (loaded,
  or changed in this transaction and not yet in a savepoint) is read through
  its attributes: its state is the truth, and a record would not have it.
  Invalidation makes changed objects ghosts again, so the next read of those
  fetches the new snapshot's record, as the object path would.
- Objects without an oid or a connection, a closed connection, and
  records in any other form (another class, pickle protocol, a
  compressing storage wrapper) return None: the caller takes the object
  path, which knows how to read (or to fail on) them.
"""

from __future__ import annotations

import pickletools
from collections.abc import Iterable

from persistent import Persistent

_PROTO, _FRAME, _STOP = 0x80, 0x95, ord(".")
_BINBYTES, _SHORT_BINBYTES, _BINBYTES8 = ord("B"), ord("C"), 0x8E
_BINPUT, _LONG_BINPUT, _MEMOIZE = ord("q"), ord("r"), 0x94

_classmeta: dict[type, bytes] = {}


def classmeta(cls: type) -> bytes:
    """The first pickle ZODB writes in a record of `cls` (which class it is).

    `cls` is built as ``cls(b"")``: a class whose state is one ``bytes``.
    """
    meta = _classmeta.get(cls)
    if meta is None:
        from ZODB.serialize import ObjectWriter

        record = ObjectWriter().serialize(cls(b""))
        # genops gives None for pos only on streams without tell().
        stop: int = next(pos for op, _, pos in pickletools.genops(record)  # type: ignore[assignment]
                         if op.name == "STOP")
        meta = _classmeta[cls] = record[:stop + 1]
    return meta


def bytes_state(record: bytes | memoryview, meta: bytes) -> memoryview | None:
    """A view of the ``bytes`` pickled as the state of `record`, or None.

    `record` must start with class pickle `meta` and hold nothing after the
    one ``bytes`` but a memo put and ``STOP``; anything else is None (the
    caller unpickles it instead).
    """
    record = memoryview(record)     # RelStorage may hand out a buffer
    i = len(meta)
    end = len(record)
    if record[:i] != meta:
        return None
    if end < i + 3 or record[i] != _PROTO:
        return None
    i += 2
    if record[i] == _FRAME:
        i += 9
        if i >= end:
            return None
    op = record[i]
    if op == _BINBYTES:
        n, i = int.from_bytes(record[i + 1:i + 5], "little"), i + 5
    elif op == _SHORT_BINBYTES:
        n, i = record[i + 1], i + 2
    elif op == _BINBYTES8:
        n, i = int.from_bytes(record[i + 1:i + 9], "little"), i + 9
    else:
        return None
    start = i
    i += n
    if i < end:
        op = record[i]
        if op == _BINPUT:
            i += 2
        elif op == _LONG_BINPUT:
            i += 5
        elif op == _MEMOIZE:
            i += 1
    if i != end - 1 or record[i] != _STOP:
        return None
    return record[start:start + n]


def bytes_state_of(obj: Persistent) -> memoryview | None:
    """The ``bytes`` ghost `obj` would unpickle to, read from its record
    without unpickling (see the module docstring); None: read it through
    the object instead.

    `obj`'s class must have one ``bytes`` as its whole state (``ZBlk0``,
    ``ZData``).  The caller holds the connection's lock, as for any load
    (:mod:`zbigarray.storage._connlock`).

    Raises
    ------
    Exception
        What loading the object would raise (the storage's errors:
        disconnection, a snapshot that no longer exists).
    """
    jar = obj._p_jar
    oid = obj._p_oid
    if jar is None or oid is None or obj._p_status != "ghost" or jar.opened is None:
        return None
    record, _ = jar._storage.load(oid)
    return bytes_state(record, classmeta(type(obj)))


def prefetch(objs: Iterable[Persistent]) -> None:
    """Ask the storage for the records of the ghosts among `objs` ahead of
    their loads (all of one connection).

    ZEO sends the requests at once, and a later load of the same record
    waits for its answer (or finds it in ZEO's cache); RelStorage loads them
    in one query into its cache; FileStorage does nothing.  Only through the
    connection's normal storage view: after a savepoint its storage is
    ZODB's ``TmpStore``, which has no ``prefetch``, and
    ``Connection.prefetch`` would then turn itself off for good.  A
    prefetch is a hint: a failing one is ignored, the loads will say.
    """
    jar = None
    oids = []
    for obj in objs:
        if obj._p_oid is not None and obj._p_status == "ghost" and obj._p_jar is not None:
            jar = obj._p_jar
            oids.append(obj._p_oid)
    if jar is None or jar.opened is None or jar._storage is not jar._normal_storage:
        return
    try:
        jar.prefetch(oids)
    except Exception:   # noqa: BLE001 - a hint; the loads report errors
        pass

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
inside it, which the caller copies straight into the page;
:func:`bytes_state_into` has the kernel copy them from a FileStorage's file
into the page, with no record in memory at all.

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

import os
import pickletools
from collections.abc import Iterable
from typing import Any

from persistent import Persistent
from ZODB.FileStorage import FileStorage as _FileStorage
from ZODB.FileStorage.format import DATA_HDR_LEN as _DATA_HDR_LEN
from ZODB.mvccadapter import MVCCAdapterInstance as _MVCCAdapterInstance

_PROTO, _FRAME, _STOP = 0x80, 0x95, ord(".")
_BINBYTES, _SHORT_BINBYTES, _BINBYTES8 = ord("B"), ord("C"), 0x8E
_BINPUT, _LONG_BINPUT, _MEMOIZE = ord("q"), ord("r"), 0x94

# What follows the class pickle up to a bytes' data at most: PROTO, FRAME
# with its length, BINBYTES8 with its length.
_HEAD_MORE = 2 + 9 + 9

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


def _state_span(head: memoryview, meta: bytes) -> tuple[int, int] | None:
    """Where the one ``bytes`` of a record starting with `head` is: (offset,
    length), or None if `head` (enough of the record: the class pickle
    `meta` and 20 bytes more) starts anything else."""
    i = len(meta)
    end = len(head)
    if head[:i] != meta:
        return None
    if end < i + 3 or head[i] != _PROTO:
        return None
    i += 2
    if head[i] == _FRAME:
        i += 9
        if i >= end:
            return None
    op = head[i]
    if op == _BINBYTES and i + 5 <= end:
        return i + 5, int.from_bytes(head[i + 1:i + 5], "little")
    if op == _SHORT_BINBYTES and i + 2 <= end:
        return i + 2, head[i + 1]
    if op == _BINBYTES8 and i + 9 <= end:
        return i + 9, int.from_bytes(head[i + 1:i + 9], "little")
    return None


def _tail_ok(tail: memoryview) -> bool:
    """Whether `tail`, what follows the ``bytes``, is a memo put and ``STOP``."""
    i = 0
    if len(tail) > 1:
        op = tail[0]
        if op == _BINPUT:
            i = 2
        elif op == _LONG_BINPUT:
            i = 5
        elif op == _MEMOIZE:
            i = 1
    return i == len(tail) - 1 and tail[i] == _STOP


def bytes_state(record: bytes | memoryview, meta: bytes) -> memoryview | None:
    """A view of the ``bytes`` pickled as the state of `record`, or None.

    `record` must start with class pickle `meta` and hold nothing after the
    one ``bytes`` but a memo put and ``STOP``; anything else is None (the
    caller unpickles it instead).
    """
    record = memoryview(record)     # RelStorage may hand out a buffer
    span = _state_span(record[:len(meta) + _HEAD_MORE], meta)
    if span is None:
        return None
    start, n = span
    if start + n >= len(record) or not _tail_ok(record[start + n:]):
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


def bytes_state_into(obj: Persistent, buf: memoryview) -> int | None:
    """Read the ``bytes`` ghost `obj` would unpickle to straight into `buf`
    from its FileStorage record; return its length, or None: read it with
    :func:`bytes_state_of` instead (another storage, a record in another
    form, too long for `buf`).

    A ``storage.load`` reads a 2 MiB record into a new ``bytes``, which is
    then copied into the page: here the kernel copies it from its page
    cache into the page (``preadv``), one copy and no ``bytes``, ≈ 7 % of a
    cold read.  It reads what ``load`` would: the connection's storage view
    is ZODB's MVCC adapter over a plain ``FileStorage``, and this walks the
    object's revisions as ``FileStorage.loadBefore`` does for the adapter's
    snapshot, holding a file of the storage's pool meanwhile, as
    ``loadBefore`` does (a pack swaps the file only once every file is
    back).  A record that is a back pointer (left by an undo), a snapshot
    the object did not exist in, a savepoint's storage: None, and the
    object path answers.  Same preconditions as :func:`bytes_state_of`.
    """
    jar = obj._p_jar
    oid = obj._p_oid
    if jar is None or oid is None or obj._p_status != "ghost" or jar.opened is None:
        return None
    view = jar._storage
    fs: Any = getattr(view, "_storage", None)
    if type(view) is not _MVCCAdapterInstance or type(fs) is not _FileStorage:
        return None
    meta = classmeta(type(obj))
    with fs._files.get() as file:
        pos = fs._lookup_pos(oid)
        while True:
            h = fs._read_data_header(pos, oid, file)
            if h.tid < view._start:
                break
            pos = h.prev
            if not pos:
                return None
        if not h.plen:
            return None
        fd = file.fileno()
        data = pos + _DATA_HDR_LEN
        span = _state_span(memoryview(os.pread(fd, min(h.plen, len(meta) + _HEAD_MORE), data)),
                           meta)
        if span is None:
            return None
        start, n = span
        if n > len(buf) or start + n >= h.plen or not _tail_ok(
                memoryview(os.pread(fd, h.plen - start - n, data + start + n))):
            return None
        done = 0
        while done < n:
            got = os.preadv(fd, [buf[done:n]], data + start + done)
            if got <= 0:
                return None     # the file is shorter: load says how it fails
            done += got
    return n


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

"""``python -m zbigarray migrate``: rewrite a wendelin.core database's arrays
as zbigarray's own classes, in one transaction.

After it, the database opens with plain ``ZODB.DB`` (no stand-ins from
:mod:`zbigarray.storage.wendelin_compat`), and wendelin.core no longer reads
its arrays.

How.  Every object reachable from the root is read as a raw record, at the
storage level (so that objects of classes this process cannot import --
an application's containers holding arrays -- are handled as well):

- the class of a record, and the class named in each reference, are renamed
  from wendelin.core's paths (or the ``(module, name)`` pairs zbigarray's
  compatibility layer writes) to zbigarray's.  The rename edits only those
  pickle opcodes, found by following the pickle's stack: data is copied
  byte for byte.
- a ZBigArray's header is converted from wendelin.core's layout to
  zbigarray's (``{'shape', 'dtype', 'order', 'zfile'}``).

The rewritten records are stored with the serial they were read at, in one
transaction committed at the end: until then the database is unchanged (an
interruption aborts it), and a concurrent change to one of them fails the
commit (``ConflictError``) instead of being lost.  Records that need no
change are not written, so a second run finds nothing to do.
"""

from __future__ import annotations

import io
import os
import pickletools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zodburi
from ZODB._compat import PersistentPickler, PersistentUnpickler, _protocol
from ZODB.Connection import TransactionMetaData
from ZODB.FileStorage import FileStorage
from ZODB.serialize import referencesf
from ZODB.utils import u64, z64

from zbigarray.storage.file_zodb import ZBigFile
from zbigarray.storage.wendelin_compat import (
    STANDINS,
    WENDELIN_ARRAY_MODULE,
    WENDELIN_FILE_MODULE,
    wendelin_header,
)

_FILE = "zbigarray.storage.file_zodb"
_ARRAY = "zbigarray.bigarray.array_zodb"

# Class paths rewritten -> zbigarray's.  Besides wendelin.core's own, the
# module paths of zbigarray's stand-ins, which a writer other than
# WendelinCompatDB's (a cross-database reference) would have recorded.
RENAMES: dict[tuple[str, str], tuple[str, str]] = {}
for (_module, _name), _standin in STANDINS.items():
    _new = (_ARRAY if _module == WENDELIN_ARRAY_MODULE else _FILE,
            "ZBlk0" if _name == "ZBlk" else _name)
    RENAMES[(_module, _name)] = _new
    RENAMES[tuple(_standin.split(":"))] = _new  # type: ignore[index]
del _module, _name, _standin, _new

_ZBIGARRAYS = {old for old, new in RENAMES.items() if new == (_ARRAY, "ZBigArray")}
_ZBIGARRAY_CLASSES = {(_ARRAY, "ZBigArray"), (_FILE, "ZBigFile")}


@dataclass
class MigrationSummary:
    """What :func:`migrate` found and rewrote."""

    scanned: int = 0
    """Objects read (all those reachable from the root)."""
    rewritten: Counter[str] = field(default_factory=Counter)
    """Class name (as written after the migration) -> objects rewritten."""
    zbigarray_objects: int = 0
    """Objects of zbigarray's own array and file classes found unchanged."""
    committed: bool = False
    """Whether a transaction was committed (not for a dry run, nor when
    there was nothing to rewrite)."""

    def describe(self, dry_run: bool) -> str:
        """A human-readable report."""
        total = sum(self.rewritten.values())
        verb = "would rewrite" if dry_run else "rewrote"
        if not total:
            return (f"scanned {self.scanned} objects: nothing to rewrite, the database "
                    f"holds no wendelin.core objects ({self.zbigarray_objects} zbigarray "
                    f"array and file objects: already migrated)")
        lines = [f"scanned {self.scanned} objects; {verb} {total}:"]
        lines += [f"  {n:10d}  {name}" for name, n in sorted(self.rewritten.items())]
        if dry_run:
            lines.append("dry run: nothing was written")
        return "\n".join(lines)


def migrate(uri: str, dry_run: bool = False,
            progress: Callable[[int, int | None], None] | None = None) -> MigrationSummary:
    """Rewrite the wendelin.core arrays of database `uri` as zbigarray's classes.

    Parameters
    ----------
    uri
        As for :func:`zbigarray.storage.open_db`; a FileStorage path must
        exist.  Stop every process writing to the database first (a
        FileStorage in use is refused; over ZEO or RelStorage a concurrent
        change makes the commit fail, and nothing is written).
    dry_run
        Read and report only; nothing is written.
    progress
        Called now and then with (objects scanned, objects in the storage
        or None when it cannot tell).

    Returns
    -------
    MigrationSummary

    Raises
    ------
    FileNotFoundError
        No FileStorage at that path.
    RuntimeError
        The FileStorage is in use by another process, or the database
        changed during the migration (nothing was written).
    ValueError
        The database holds neither wendelin.core nor zbigarray arrays, or a
        wendelin.core record is not in a layout zbigarray knows.
    """
    storage = _open_storage(uri, read_only=dry_run)
    try:
        return _migrate(storage, uri, dry_run, progress)
    finally:
        storage.close()


def _open_storage(uri: str, read_only: bool) -> Any:
    path = None
    if "://" not in uri:
        path = uri
    elif uri.startswith("file://"):
        path = uri[len("file://"):].partition("?")[0]
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(f"{uri}: no such database file")
    try:
        if "://" not in uri:
            return FileStorage(uri, read_only=read_only)
        factory, _ = zodburi.resolve_uri(uri)
        return factory()
    except Exception as e:
        # zc.lockfile's LockError; not imported: ZODB may change its locker.
        if type(e).__name__ == "LockError":
            raise RuntimeError(f"{uri}: the database is in use by another process "
                               f"(it holds the lock {path}.lock); stop it first") from e
        raise


def _migrate(storage: Any, uri: str, dry_run: bool,
             progress: Callable[[int, int | None], None] | None) -> MigrationSummary:
    summary = MigrationSummary()
    try:
        total: int | None = len(storage)
    except TypeError:
        total = None
    txn = None
    seen = _OidSet()
    seen.add(z64)
    todo = [z64]        # depth first: the list stays as short as the tree is deep
    try:
        while todo:
            oid = todo.pop()
            data, serial = storage.load(oid)
            summary.scanned += 1
            for ref in referencesf(data):
                if ref not in seen:
                    seen.add(ref)
                    todo.append(ref)
            new, klass = rewrite_record(data, oid)
            if new is None:
                summary.zbigarray_objects += klass in _ZBIGARRAY_CLASSES
            else:
                summary.rewritten[".".join(klass)] += 1
                if not dry_run:
                    if txn is None:
                        txn = TransactionMetaData(
                            description="zbigarray migrate: wendelin.core arrays "
                                        "-> zbigarray classes")
                        storage.tpc_begin(txn)
                    storage.store(oid, serial, new, "", txn)
            if progress is not None and (summary.scanned % 1000 == 0 or not todo):
                progress(summary.scanned, total)
        if not summary.rewritten and not summary.zbigarray_objects:
            raise ValueError(f"{uri}: holds neither wendelin.core nor zbigarray arrays "
                             f"({summary.scanned} objects scanned): nothing to migrate")
        if txn is not None:
            try:
                storage.tpc_vote(txn)
            except Exception as e:
                if type(e).__name__ in ("ConflictError", "ReadConflictError"):
                    raise RuntimeError(
                        f"{uri}: the database changed during the migration; nothing "
                        f"was written.  Stop the processes writing to it and run "
                        f"again") from e
                raise
            storage.tpc_finish(txn)
            txn = None
            summary.committed = True
    finally:
        if txn is not None:
            storage.tpc_abort(txn)
    return summary


class _OidSet:
    """A set of oids: a bitmap for the sequential oids storages hand out
    (a bit each, where a set of bytes costs ~90 bytes), a set beyond."""

    _BITMAP_MAX = 1 << 33       # oids below this: 1 GiB of bitmap at most

    def __init__(self) -> None:
        self._bits = bytearray()
        self._others: set[bytes] = set()

    def add(self, oid: bytes) -> None:
        n = u64(oid)
        if n >= self._BITMAP_MAX:
            self._others.add(oid)
            return
        byte = n >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
        self._bits[byte] |= 1 << (n & 7)

    def __contains__(self, oid: bytes) -> bool:
        n = u64(oid)
        if n >= self._BITMAP_MAX:
            return oid in self._others
        byte = n >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (n & 7)))


# -- pickle rewriting ---------------------------------------------------------

class _Str:
    """A string on the pickle stack, with where its opcode lies."""

    __slots__ = ("value", "start", "end")

    def __init__(self, value: str, start: int, end: int) -> None:
        self.value, self.start, self.end = value, start, end


class _Global:
    """A class pushed by a GLOBAL opcode."""

    __slots__ = ("module", "name", "start", "end")

    def __init__(self, module: str, name: str, start: int, end: int) -> None:
        self.module, self.name, self.start, self.end = module, name, start, end


_MARK = object()
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
               "SHORT_BINSTRING", "BINSTRING", "STRING"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}


def _unicode_op(value: str) -> bytes:
    # BINUNICODE: protocol 3, as ZODB writes (zodbpickle's unpickler does
    # not know protocol 4's SHORT_BINUNICODE).
    raw = value.encode("utf-8")
    return b"X" + len(raw).to_bytes(4, "little") + raw


def _class_pair(value: Any) -> tuple[_Str, _Str] | None:
    """`value` as a (module, name) pair of strings, else None."""
    if (isinstance(value, tuple) and len(value) == 2
            and isinstance(value[0], _Str) and isinstance(value[1], _Str)):
        return value[0], value[1]
    return None


def _scan(data: bytes, start: int, oid: bytes,
          edits: dict[int, tuple[int, bytes]]) -> tuple[Any, int, bool]:
    """Follow the pickle at `data[start:]`, adding to `edits` (opcode start
    -> (end, replacement)) the renames of class paths of :data:`RENAMES` in
    its GLOBAL opcodes and in (module, name) pairs naming a class (in a
    reference, or as the whole of a record's class part).

    Returns the pickle's value as far as followed (strings, tuples and
    classes; anything else opaque), where the pickle ends, and whether it
    has protocol 4 frames (whose lengths an edit would break; ZODB writes
    protocol 3).
    """
    framed = False
    stack: list[Any] = []
    memo: dict[int, Any] = {}

    def rename_pair(pair: tuple[_Str, _Str]) -> None:
        new = RENAMES.get((pair[0].value, pair[1].value))
        if new is not None:
            for s, v in zip(pair, new):
                if s.value != v:
                    edits[s.start] = (s.end, _unicode_op(v))

    f = io.BytesIO(data)
    f.seek(start)
    arg: Any
    pos: Any        # an int: genops gives None only for a stream without tell()
    for op, arg, pos in pickletools.genops(f):
        end = f.tell()
        name = op.name
        if name == "STOP":
            return (stack[-1] if stack else None), end, framed
        if name == "FRAME":
            framed = True
        elif name in _STRING_OPS:
            value = arg.decode("latin-1") if isinstance(arg, bytes) else arg
            stack.append(_Str(value, pos, end))
        elif name == "GLOBAL":
            module, _, gname = arg.partition(" ")
            new = RENAMES.get((module, gname))
            if new is not None:
                edits[pos] = (end, f"c{new[0]}\n{new[1]}\n".encode())
            stack.append(_Global(module, gname, pos, end))
        elif name in _PUT_OPS:
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in _GET_OPS:
            stack.append(memo.get(arg))
        elif name == "MARK":
            stack.append(_MARK)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            i = len(stack) - 1 - stack[::-1].index(_MARK)
            items = tuple(stack[i + 1:])
            del stack[i:]
            stack.append(items)
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "BINPERSID":
            ref = stack.pop()
            # (oid, (module, name)): a reference naming its class by path.
            if isinstance(ref, tuple) and len(ref) == 2:
                pair = _class_pair(ref[1])
                if pair is not None:
                    rename_pair(pair)
            stack.append(None)
        else:
            _generic(op, stack)
    raise ValueError(f"oid {u64(oid)}: pickle without STOP")


def _generic(op: Any, stack: list[Any]) -> None:
    """Apply an opcode not followed in detail: pop what it takes, push
    opaque values for what it gives."""
    before = op.stack_before
    if pickletools.markobject in before:
        i = len(stack) - 1 - stack[::-1].index(_MARK)
        del stack[i:]
        nbefore = before.index(pickletools.markobject)
    else:
        nbefore = len(before)
    if nbefore:
        del stack[-nbefore:]
    for item in op.stack_after:
        stack.append(_MARK if item is pickletools.markobject else None)


def rewrite_record(data: bytes, oid: bytes = z64) -> tuple[bytes | None, tuple[str, str]]:
    """Rewrite one object record (class pickle + state pickle) to zbigarray's
    class paths.

    Returns
    -------
    (new record or None when nothing changes, the record's class as
    ``(module, name)`` after the rewrite)
    """
    edits: dict[int, tuple[int, bytes]] = {}
    meta, meta_end, framed = _scan(data, 0, oid, edits)
    klass = _meta_class(meta, edits)
    _, state_end, state_framed = _scan(data, meta_end, oid, edits)
    if edits and (framed or state_framed):
        raise ValueError(f"oid {u64(oid)}: a protocol 4 pickle naming wendelin.core "
                         f"classes; zbigarray rewrites only the protocol ZODB writes (3)")
    old = klass
    klass = RENAMES.get(klass, klass)
    if old in _ZBIGARRAYS:
        meta_edits = {k: v for k, v in edits.items() if k < meta_end}
        return (_apply(data[:meta_end], meta_edits)
                + _zbigarray_state(data[meta_end:state_end], oid)), klass
    if not edits:
        return None, klass
    return _apply(data, edits), klass


def _meta_class(meta: Any, edits: dict[int, tuple[int, bytes]]) -> tuple[str, str]:
    """The class of a record from its class pickle: a class (GLOBAL), or
    ``(class, args)``, or ``((module, name), args)`` (the pair is renamed)."""
    if isinstance(meta, tuple) and len(meta) == 2:
        pair = _class_pair(meta[0])
        if pair is not None:
            new = RENAMES.get((pair[0].value, pair[1].value))
            if new is not None:
                for s, v in zip(pair, new):
                    if s.value != v:
                        edits[s.start] = (s.end, _unicode_op(v))
            return pair[0].value, pair[1].value
        meta = meta[0]
    if isinstance(meta, _Global):
        return meta.module, meta.name
    return ("", "")


def _apply(data: bytes, edits: dict[int, tuple[int, bytes]]) -> bytes:
    out = []
    pos = 0
    for start in sorted(k for k in edits if k < len(data)):
        end, replacement = edits[start]
        out += [data[pos:start], replacement]
        pos = end
    out.append(data[pos:])
    return b"".join(out)


class _Ref:
    """A persistent reference carried over from the old state."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref


def _zbigarray_state(state: bytes, oid: bytes) -> bytes:
    """zbigarray's ZBigArray state from a wendelin.core one."""

    def find_global(module: str, name: str) -> Any:
        if (module, name) in RENAMES:
            return RENAMES[(module, name)]
        if module.split(".")[0] == "numpy":     # the dtype
            return getattr(__import__(module, fromlist=[name]), name)
        raise ValueError(f"oid {u64(oid)}: a ZBigArray header holding {module}.{name}")

    unpickler = PersistentUnpickler(find_global, _Ref, io.BytesIO(state))
    old = unpickler.load()
    shape, dtype, order, zfile = wendelin_header(old)
    # Metadata zbigarray stored in wendelin.core's layout (ZBigArray.attrs).
    attrs = ((old[0] if isinstance(old, tuple) else old) or {}).get("attrs")
    if not isinstance(zfile, _Ref) or not isinstance(dtype, np.dtype):
        raise ValueError(f"oid {u64(oid)}: a ZBigArray header of unexpected types")

    def persistent_id(obj: Any) -> Any:
        if isinstance(obj, _Ref):
            # (oid, class) -> (oid, zbigarray's ZBigFile); a bare oid stays.
            ref = obj.ref
            return (ref[0], ZBigFile) if isinstance(ref, tuple) else ref
        return None

    out = io.BytesIO()
    pickler = PersistentPickler(persistent_id, out, _protocol)
    header = {"shape": shape, "dtype": dtype, "order": order, "zfile": zfile}
    if attrs:
        header["attrs"] = attrs
    pickler.dump(header)
    return out.getvalue()


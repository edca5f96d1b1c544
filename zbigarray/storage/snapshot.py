"""References to stored objects at a snapshot, that any process can open.

A ``SnapshotRef`` names a persistent object by what another process needs to
read it exactly as this one sees it: the database (a URI), the object's oid,
and the snapshot (ZODB's ``before``: the state as of just before that
transaction id).  It pickles to a few hundred bytes, so a task sent to a
process or another machine carries it instead of the object's content; there,
:meth:`SnapshotRef.open` opens the database (once per process) and a
read-only historical connection at that snapshot (kept for the next task).

What makes a database reachable from elsewhere:

- ``open_db`` remembers the URI it was given (:func:`remember_uri`);
- a ``FileStorage`` is found by its path, a ZEO ``ClientStorage`` by its
  server address, when the database was opened without ``open_db``;
- a ``memory://`` database lives in one process: refused, as are storages
  whose address we cannot tell (RelStorage opened without ``open_db``: its
  DSN may hold credentials we do not go looking for).

Another process opens a FileStorage path read-only (no lock: the writer keeps
its own), ZEO and RelStorage as ``open_db`` does.  A read-only FileStorage
sees the transactions committed before it was opened: one opened earlier
than a snapshot it is asked for is opened again.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import ZODB
from ZODB.Connection import Connection
from ZODB.FileStorage import FileStorage
from ZODB.utils import p64, u64

__all__ = ["SnapshotRef", "snapshot_ref", "database_uri", "remember_uri"]

_MAX_CONNECTIONS = 8
"""Historical connections a process keeps open (the most recently used)."""

_uris: weakref.WeakKeyDictionary[ZODB.DB, str] = weakref.WeakKeyDictionary()
_dbs_here: weakref.WeakValueDictionary[str, ZODB.DB] = weakref.WeakValueDictionary()


def remember_uri(db: ZODB.DB, uri: str) -> None:
    """Record that `db` was opened from `uri` (``open_db`` calls this), so
    that references to its objects name it, and this process reuses `db`
    for them rather than opening the database a second time."""
    _uris[db] = uri
    _dbs_here[uri] = db


def database_uri(db: ZODB.DB) -> str:
    """The URI another process opens to reach `db`.

    Raises
    ------
    ValueError
        `db` is a ``memory://`` database, or one whose storage gives no
        address (open it with ``open_db(uri)`` instead).
    """
    uri = _uris.get(db)
    storage = db.storage
    if uri is None:
        if isinstance(storage, FileStorage):
            uri = storage._file_name
        else:
            addr = getattr(storage, "_addr", None)      # ZEO's ClientStorage
            if isinstance(addr, list) and addr and isinstance(addr[0], tuple):
                host, port = addr[0]
                uri = f"zeo://{host}:{port}"
            elif isinstance(addr, str):
                uri = f"zeo://{addr}"
    if uri is None:
        raise ValueError(
            f"cannot tell how another process reaches the database of storage "
            f"{type(storage).__name__} {storage.getName()!r}: open it with "
            f"zbigarray.open_db(uri)")
    if uri.startswith("memory:") or type(storage).__name__ == "MappingStorage":
        raise ValueError(
            f"the database {uri!r} lives in this process's memory: other processes "
            f"cannot read it (use a FileStorage on a shared filesystem, ZEO or "
            f"RelStorage)")
    return uri


def snapshot_of(conn: Connection) -> bytes:
    """The ``before`` of the snapshot `conn` reads now: the tid just after the
    last transaction its current transaction sees."""
    if conn.before is not None:
        return conn.before
    view = conn._storage
    start = getattr(view, "_start", None)   # ZODB's MVCC adapter: set on open
    if start is not None:
        return start
    # A storage that is its own MVCC view (RelStorage): its last transaction
    # is the newest its snapshot sees.
    return p64(u64(view.lastTransaction()) + 1)


@dataclass(frozen=True)
class SnapshotRef:
    """A persistent object, by database URI, oid and snapshot."""

    uri: str
    """Where the database is (a path or a URI ``open_db`` takes)."""
    oid: bytes
    """The object's oid."""
    before: bytes
    """The snapshot: the object as of just before this transaction id."""

    @property
    def tid(self) -> bytes:
        """The last transaction the snapshot includes."""
        return p64(u64(self.before) - 1)

    def open(self) -> Any:
        """The object, read-only at the snapshot, from a historical connection
        of this process (opened on first use and kept)."""
        with _lock:
            # Connection.get is not thread-safe: two threads missing the
            # cache at once would both add the object.
            return _connection(self.uri, self.before).get(self.oid)


def snapshot_ref(obj: Any) -> SnapshotRef:
    """A reference to stored object `obj` at the snapshot its connection reads.

    Raises
    ------
    TypeError
        `obj` is not stored in a database yet (commit it first).
    ValueError
        Other processes cannot reach its database (see :func:`database_uri`).
    """
    jar = getattr(obj, "_p_jar", None)
    if jar is None or getattr(obj, "_p_oid", None) is None:
        raise TypeError(
            f"{type(obj).__name__} is not stored in a database yet: add it to one and "
            f"commit before sharing it with other processes")
    return SnapshotRef(database_uri(jar.db()), obj._p_oid, snapshot_of(jar))


# ------------------------------------------------------- this process's cache

_lock = threading.Lock()
_dbs: dict[str, ZODB.DB] = {}
_connections: OrderedDict[tuple[str, bytes], Connection] = OrderedDict()


def _open_database(uri: str) -> ZODB.DB:
    from zbigarray.storage.db import open_db
    from zbigarray.storage.wendelin_compat import WendelinCompatDB

    if "://" not in uri or uri.startswith("file://"):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        path = path.split("?", 1)[0]
        return WendelinCompatDB(FileStorage(path, read_only=True))
    return open_db(uri)


def _connection(uri: str, before: bytes) -> Connection:
    """A historical connection at `before` to `uri`.  Called with _lock held."""
    key = (uri, before)
    conn = _connections.get(key)
    if conn is not None:
        if conn.opened is not None:
            _connections.move_to_end(key)
            return conn
        del _connections[key]       # its database was closed (by its owner)
    db = _dbs_here.get(uri)
    if db is None or not _is_open(db):
        db = _dbs.get(uri)
    if db is not None and u64(db.storage.lastTransaction()) < u64(before) - 1:
        # A read-only FileStorage opened before the snapshot was taken.
        if db is _dbs.get(uri):
            _forget_database(uri)
        db = None
    if db is None:
        db = _dbs[uri] = _open_database(uri)
    conn = db.open(before=before)
    _connections[key] = conn
    while len(_connections) > _MAX_CONNECTIONS:
        _, old = _connections.popitem(last=False)
        old.close()
    return conn


def _is_open(db: ZODB.DB) -> bool:
    """Whether `db` can still open connections: ``DB.close()`` drops its
    MVCC storage."""
    return getattr(db, "_mvcc_storage", None) is not None


def _forget_database(uri: str) -> None:
    """Close the database this process opened for `uri`, and its
    connections.  Called with _lock held."""
    for key in [k for k in _connections if k[0] == uri]:
        _connections.pop(key).close()
    _dbs.pop(uri).close()

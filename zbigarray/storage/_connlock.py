"""One lock per ZODB connection: zbigarray's uses of a connection, serialized.

Page faults are served in whichever thread touches the memory (NumPy's and
BLAS's threads, dask's scheduler, the user's own), so "one thread per
connection" is not a rule users can keep for memory accesses.  A ZODB
connection, though, is not thread-safe, and neither are the objects loaded
through it: to load an object, ``persistent`` marks it loaded *before* its
state arrives, and the storage read in between releases the GIL.  Another
thread reading the object meanwhile sees it empty: an AttributeError, or a
BTree bucket that reads as empty, i.e. a block of zeros.

So zbigarray uses a connection only while holding that connection's lock
(:func:`connection_lock`, a re-entrant lock): loads and stores of blocks,
the lookups that decide which pages a commit by others made stale, and the
loading of a ZBigArray's own state, whichever thread triggers them.  Objects
not yet in a connection share one process-wide lock instead (see
:func:`object_lock`).

Deadlocks.  The lock is taken inside page faults: a thread can wait for it
while the fault layer counts it as loading a page.  So whoever holds the lock
must never wait for something a page load needs: it never touches mapped
memory (a fault on a page another thread is loading waits for that load,
which waits for the lock) and never calls into the fault layer for anything
that may wait for loads in flight (writeout, dropping pages).  It is held
around Python code that reads or writes persistent objects, and released
before the page cache is touched.  ``RLock.acquire`` releases the GIL while
it waits.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from persistent import Persistent

if TYPE_CHECKING:
    from ZODB.Connection import Connection

_CREATE = threading.Lock()

_UNCONNECTED = threading.RLock()


def connection_lock(conn: Connection) -> threading.RLock:
    """The lock that serializes zbigarray's uses of `conn`, made on first use.

    Kept on the connection itself, so that it lives as long as the connection
    and is shared by everything that uses it (connections are pooled and
    reused by the DB: the lock outlives a close and reopen, as the objects
    loaded through the connection do).
    """
    lock = conn.__dict__.get("_zbigarray_lock")
    if lock is None:
        with _CREATE:       # two threads first using a connection at once
            lock = conn.__dict__.get("_zbigarray_lock")
            if lock is None:
                lock = conn._zbigarray_lock = threading.RLock()
    return lock


def object_lock(obj: Persistent) -> threading.RLock:
    """The lock to hold while using persistent object `obj` and its subobjects.

    Its connection's lock; for an object not added to a connection yet, one
    process-wide lock: such an object loads nothing, but a ZBigArray still
    opens its file handle once, whichever threads use it first.
    """
    jar = obj._p_jar
    return _UNCONNECTED if jar is None else connection_lock(jar)

"""Keeping a ZEO client's send queue bounded while a big commit streams out.

ZEO's client hands every ``store`` of a commit to its I/O thread, which queues
it without limit while the socket is busy.  A transaction bigger than RAM is
committed by ZODB copying its savepoint storage into the storage record by
record (``Connection._commit_savepoint``), much faster than the server takes
them: the whole transaction ends up queued in memory (measured: 690 MiB of a
1 GiB commit), which is what spilling was to avoid.

So, for a connection to a ZEO server, every :data:`FLUSH_BYTES` stored wait
for one round trip to the server (``ClientStorage.ping``): its answer comes
after everything queued before it was sent and read.  The wrapper sits on the
connection's own storage instance, like the invalidation hook
(:mod:`zbigarray.storage._invalidation`); nothing of ZEO or ZODB changes for
other connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ZEO.ClientStorage import ClientStorage

if TYPE_CHECKING:
    from ZODB.Connection import Connection

FLUSH_BYTES: int = 32 << 20
"""Bytes stored between two waits for the server."""


class StoreFlow:
    """Wraps ``store`` of `conn`'s storage instance (see the module docstring)."""

    def __init__(self, conn: Connection, server: ClientStorage) -> None:
        storage = conn._normal_storage
        self._store = storage.store
        self._server = server
        self._unflushed = 0
        storage.store = self.store

    def store(self, oid: bytes, serial: bytes, data: bytes, version: str,
              transaction: Any) -> None:
        self._store(oid, serial, data, version, transaction)
        self._unflushed += len(data)
        if self._unflushed >= FLUSH_BYTES:
            self._unflushed = 0
            self._server.ping()


def bound_store_queue(conn: Connection) -> None:
    """Attach a :class:`StoreFlow` to `conn` if its database is a ZEO client."""
    storage = conn.db().storage
    if isinstance(storage, ClientStorage):
        StoreFlow(conn, storage)

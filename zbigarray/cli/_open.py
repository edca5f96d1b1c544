"""Opening the database a command names: a path or a URI, as ``open_db``
takes it, with the failures users meet as one-line errors."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import transaction
import ZODB
from ZODB.Connection import Connection
from ZODB.DB import getTID
from ZODB.FileStorage import FileStorage
from ZODB.POSException import POSKeyError

from zbigarray.cli._errors import CliError
from zbigarray.storage import open_db
from zbigarray.storage.wendelin_compat import WendelinCompatDB


def open_database(uri: str, *, write: bool, create: bool = False) -> ZODB.DB:
    """Open database `uri`.

    A FileStorage path must exist unless `create`.  Without `write` it is
    opened read-only, which takes no lock: reading works while another
    process (a demo, a server) has it open.  With `write`, a file another
    process holds is an error, not a wait.

    Raises
    ------
    CliError
        No such file, a directory, the file is locked, or `uri` does not
        parse.
    """
    is_path = "://" not in uri
    if is_path:
        if os.path.isdir(uri):
            raise CliError(f"{uri}: is a directory, not a database file")
        if not create and not os.path.exists(uri):
            raise CliError(f"{uri}: no such database file")
    try:
        if is_path and not write:
            return WendelinCompatDB(FileStorage(uri, read_only=True))
        return open_db(uri)
    except ValueError as e:
        raise CliError(str(e)) from None
    except Exception as e:
        # zc.lockfile's LockError; not imported: ZODB may change its locker.
        if type(e).__name__ == "LockError":
            raise CliError(f"{uri}: the database is in use by another process (it holds "
                           f"{uri}.lock); stop it, or share the database through a ZEO "
                           f"server") from None
        raise


@contextmanager
def connection(uri: str, *, write: bool = False, create: bool = False,
               at: bytes | datetime.datetime | None = None) -> Iterator[Connection]:
    """A connection to `uri` (see :func:`open_database`), at the past
    revision `at` when given (read-only then); aborted and closed at the end.

    Raises
    ------
    CliError
        As :func:`open_database`; `at` is before the database held anything.
    """
    db = open_database(uri, write=write, create=create)
    try:
        tm = transaction.TransactionManager()
        conn = _open_at(db, tm, at)
        try:
            try:
                conn.root()
            except POSKeyError:
                raise CliError(f"{uri}: nothing is kept at {_describe(at)} (nothing stored "
                               f"yet then, or packed away since)") from None
            yield conn
        finally:
            tm.abort()
            conn.close()
    finally:
        db.close()


def _open_at(db: ZODB.DB, tm: transaction.TransactionManager,
             at: bytes | datetime.datetime | None) -> Connection:
    if at is not None:
        try:
            return db.open(tm, at=at)
        except ValueError:
            # "an historical connection in the future": what the database
            # holds as of a time to come is what it holds now.
            if getTID(at, None) <= getTID(db.lastTransaction(), None):
                raise
    return db.open(tm)


def _describe(at: Any) -> str:
    return at.hex() if isinstance(at, bytes) else str(at)

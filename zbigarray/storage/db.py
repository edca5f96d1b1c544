"""Opening a ZODB database from a path or a URI."""

from __future__ import annotations

import os
from typing import Any

import zodburi
from ZODB.FileStorage import FileStorage

from zbigarray.storage.snapshot import remember_uri
from zbigarray.storage.wendelin_compat import WendelinCompatDB


def open_db(uri: str | os.PathLike[str], **dbkw: Any) -> WendelinCompatDB:
    """Open a ZODB database.

    Databases written by wendelin.core open as they are: their arrays are
    ZBigArrays, and what is written into them stays readable by
    wendelin.core (see :mod:`zbigarray.storage.wendelin_compat`).

    Parameters
    ----------
    uri
        A path to a FileStorage file, as a str or a ``pathlib.Path``
        (created if missing, with its directory; the embedded default),
        or a zodburi URI: ``file:///path/Data.fs``, ``memory://``,
        ``zeo://host:port`` (or ``zeo:///path/to/socket``), and the schemes
        of other installed storages (RelStorage's ``postgres://``, ...).
        URI query parameters are those of zodburi, e.g.
        ``zeo://127.0.0.1:8100?wait_timeout=5`` or ``?connection_cache_size=1000``.
    **dbkw
        Keyword arguments for :class:`ZODB.DB`, overriding those from the URI.

    Returns
    -------
    WendelinCompatDB
        A ``ZODB.DB``.

    Raises
    ------
    TypeError
        `uri` is neither a string nor a path.
    ValueError
        `uri` is empty, has a scheme no installed storage handles, or does
        not parse.
    """
    if isinstance(uri, os.PathLike):
        # A path: pathlib folds "//", so it never reads as a URI below.
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise TypeError(f"open_db: uri must be a str or a path, not {type(uri).__name__}")
    if not uri:
        raise ValueError("open_db: empty uri")
    if "://" not in uri:
        parent = os.path.dirname(uri)
        if parent:
            os.makedirs(parent, exist_ok=True)
        db = WendelinCompatDB(FileStorage(uri), **dbkw)
        remember_uri(db, os.path.abspath(uri))
        return db
    try:
        factory, kw = zodburi.resolve_uri(uri)
    except KeyError as e:       # zodburi's "no resolver" and "unknown keyword"
        raise ValueError(f"open_db({uri!r}): {e.args[0]}") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"open_db({uri!r}): {e}") from e
    kw.update(dbkw)
    db = WendelinCompatDB(factory(), **kw)
    # Other processes reach it by the same URI (zbigarray.storage.snapshot).
    remember_uri(db, uri)
    return db

"""ZODB storage of big files: ZBigFile (blocks as ZODB objects) and open_db.

The persistent classes live in :mod:`zbigarray.storage.file_zodb`, at module
paths that never move (databases store them).  See ``docs/storage.md``.
"""

from zbigarray.storage.db import open_db
from zbigarray.storage.file_zodb import ZBigFile

__all__ = ["ZBigFile", "open_db"]

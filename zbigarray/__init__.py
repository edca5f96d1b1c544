"""zbigarray: NumPy arrays bigger than RAM, stored in ZODB, changed under transactions.

The package has three layers, each importable on its own:

- :mod:`zbigarray.bigfile` — the virtual-memory core: files of blocks mapped
  into memory, loaded on first touch, written out on demand;
- :mod:`zbigarray.bigarray` — :class:`BigArray` / :class:`RAMArray`: ndarray
  semantics over a file handle;
- :mod:`zbigarray.storage` — :class:`ZBigFile` and :func:`open_db`: files whose
  blocks live in a ZODB database, under transactions; with
  :class:`ZBigArray` (in :mod:`zbigarray.bigarray.array_zodb`) on top.

The names below are imported on first use, so that ``import zbigarray.bigfile``
does not pull in ZODB.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BigArray", "RAMArray", "ZBigArray", "ZBigFile", "open_db"]

_WHERE = {
    "BigArray": "zbigarray.bigarray",
    "RAMArray": "zbigarray.bigarray.array_ram",
    "ZBigArray": "zbigarray.bigarray.array_zodb",
    "ZBigFile": "zbigarray.storage.file_zodb",
    "open_db": "zbigarray.storage.db",
}


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'zbigarray' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

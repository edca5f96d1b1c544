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
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"
"""The package's version: the one place it is written (pyproject.toml reads
it from here; PEP 440)."""

__all__ = ["BigArray", "RAMArray", "ZBigArray", "ZBigFile", "open_db"]

if TYPE_CHECKING:
    # What the lazy __getattr__ below returns, spelled out for type checkers:
    # without it `from zbigarray import ZBigArray` is an error under mypy.
    from zbigarray.bigarray import BigArray
    from zbigarray.bigarray.array_ram import RAMArray
    from zbigarray.bigarray.array_zodb import ZBigArray
    from zbigarray.storage.db import open_db
    from zbigarray.storage.file_zodb import ZBigFile

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

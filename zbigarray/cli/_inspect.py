"""What ``ls`` and ``info`` tell about an array: its blocks and their
formats, the bytes its records take, and the transactions that changed it.

Sizes and revisions come from the storage's history of each record
(``IStorage.history``: transaction id, time, description and record size,
newest first), which reads record headers, not the block data.  So listing
costs one history look-up per object of the array (block objects, and for
ZBlk1 its chunks), and nothing of the array is loaded into the page RAM.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from persistent import Persistent

from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.storage import _btree
from zbigarray.storage.file_zodb import ZBlk0, ZBlk1


def _objects(A: ZBigArray, data: bool) -> Iterator[Persistent]:
    """Every persistent object holding part of `A`: the array, its file, the
    block table's nodes, and -- with `data` -- the block objects (with a
    ZBlk1's chunk tree and chunks)."""
    yield A
    zfile = A.zfile
    yield zfile
    yield from _btree.nodes(zfile.blktab)
    if not data:
        return
    for zblk in zfile.blktab.values():
        yield zblk
        if isinstance(zblk, ZBlk1):
            yield from _btree.nodes(zblk.chunktab)
            yield from zblk.chunktab.values()


def revisions(db: Any, oid: bytes, n: int, before: bytes | None) -> list[dict[str, Any]]:
    """The newest `n` revisions of record `oid` committed before transaction
    `before` (all when None), newest first, as ``IStorage.history`` gives
    them; fewer when the storage keeps fewer (after a pack; history-free
    storages keep one)."""
    size = n
    while True:
        got = db.history(oid, size=size) or []
        kept = [h for h in got if before is None or h["tid"] < before]
        if len(kept) >= n or len(got) < size:
            return kept[:n]
        size *= 4


@dataclass
class ArrayStats:
    """Blocks, formats and stored bytes of one array."""

    blocks: int = 0
    """Blocks stored (the others are holes, reading as zeros)."""
    formats: Counter[str] = field(default_factory=Counter)
    """Block class name -> blocks stored in it."""
    stored: int = 0
    """Bytes of the current records of the block objects and chunks."""

    @property
    def format(self) -> str:
        """``ZBlk0``, ``ZBlk1``, both joined by ``+``, or ``-`` without blocks."""
        return "+".join(sorted(self.formats)) or "-"


def _block_format(zblk: Persistent) -> str:
    for klass in (ZBlk1, ZBlk0):
        if isinstance(zblk, klass):
            return klass.__name__
    return type(zblk).__name__


def array_stats(A: ZBigArray, db: Any, before: bytes | None) -> ArrayStats:
    """:class:`ArrayStats` of `A` as its connection sees it; record sizes
    as of `before` (exclusive; None: the newest)."""
    stats = ArrayStats()
    for zblk in A.zfile.blktab.values():
        stats.blocks += 1
        stats.formats[_block_format(zblk)] += 1
        data = [zblk]
        if isinstance(zblk, ZBlk1):
            data = list(zblk.chunktab.values())
        for obj in data:
            rev = revisions(db, obj._p_oid, 1, before)
            stats.stored += rev[0]["size"] if rev else 0
    return stats


def array_history(A: ZBigArray, db: Any, n: int, before: bytes | None) -> list[dict[str, Any]]:
    """The newest `n` transactions that changed `A` (its header, attrs or
    any block), newest first: ``IStorage.history`` entries, one per
    transaction.

    The transactions that changed any object of the array: the newest `n`
    of the union are among the newest `n` of each object.
    """
    by_tid: dict[bytes, dict[str, Any]] = {}
    for obj in _objects(A, data=True):
        for h in revisions(db, obj._p_oid, n, before):
            by_tid.setdefault(h["tid"], h)
    return [by_tid[tid] for tid in sorted(by_tid, reverse=True)[:n]]

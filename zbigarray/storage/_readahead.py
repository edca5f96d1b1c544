"""Readahead: when page faults walk a file forward, ask for the next blocks early.

Over a network every block is a round trip, and a scan that asks for one
block after the other waits for each in turn: through a ZEO server on the
same machine a ZBigArray read ran at half the speed of a serial
``ClientStorage.load`` loop.  The fault layer asks for one block per fault,
so the ZODB layer is the one that can see a scan coming and ask ahead.

Only where ``prefetch`` is asynchronous, i.e. ZEO (:data:`ASYNC_PREFETCH`).
RelStorage's ``prefetch`` loads the records in the calling thread into its
local cache, which by default keeps no record over 16 KiB
(``cache_local_object_max``): block records were fetched twice, and a
scan of 2 MiB ZBlk0 blocks ran at 53–59 MiB/s with readahead against
75–103 without; with a cache that keeps them, no faster than without (80–110
against 97–143: the query saved costs less than the data).  FileStorage has
no ``prefetch``.  A ZBlk1 block still asks for all its chunks first on every
storage (:meth:`~zbigarray.storage.file_zodb.ZBlk1.loadblkdata`): there one
query or one pipeline replaces 512 round trips, and 4 KiB chunks fit
RelStorage's cache (15–33 MiB/s without, 22–62 with).

How.  Each load of a handle tells :class:`Readahead` its block.  A load of
the block right after the previous one continues a sequential run; from the
second block of a run on, the block objects of the next blocks are looked up
(through ``blktab``, as a load would) and their records requested from the
storage with ``Connection.prefetch`` (see
:func:`~zbigarray.storage._records.prefetch`): ZEO sends the
requests at once, and the later load of each record waits for the answer
already on its way (or finds it in ZEO's cache).  The window starts
at two blocks and doubles while the run goes on, up to
:data:`READAHEAD_BYTES`; more is asked only when half the window was used,
so requests go out in batches.

Why ``Connection.prefetch`` rather than a thread loading ahead: measured
through a ZEO server on the same machine (``docs/storage.md``), both gain
about the same over no readahead, and a thread costs one per handle, a lock
hand-off per block (it must hold the connection's lock: RelStorage's
instance and ZODB's TmpStore are not thread-safe), and for FileStorage only
moves the same read to another core.  ``prefetch`` is each storage's own
way of asking ahead.

What it costs and what it does not:

- Random access pays nothing: a load that does not continue a run resets it
  and asks for nothing else.
- No page memory is used: records arrive in the storage's own cache (ZEO's
  client cache, bounded by its size), never in the RAM, so the RAM capacity
  holds as before.  A record evicted there before its load is simply asked
  for again.  Still, what is asked for waits somewhere until read: the
  window stays under a quarter of the handle's RAM capacity, and a RAM of
  fewer than eight blocks, which says memory is short, turns readahead off.
- It runs inside ``loadblk``, under the connection's lock like every other
  use of the connection (issue 5's rules), and adds no thread.  A prefetch
  is a hint: its failures are ignored, the loads themselves report errors.
- The snapshot: ``prefetch`` asks for the records of the connection's
  current transaction (``loadBefore`` its start), as the loads do; after a
  transaction boundary the loads ask for the new snapshot, and a record
  fetched for the old one serves them only where ZEO's cache knows it is
  still current.  After a savepoint nothing is prefetched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persistent import Persistent
from ZEO.ClientStorage import ClientStorage

from zbigarray.storage import _btree, _records

if TYPE_CHECKING:
    from zbigarray.storage.file_zodb import ZBigFile

READAHEAD_BYTES: int = 8 << 20
"""Most bytes of blocks requested ahead of a sequential scan."""

READAHEAD_BLOCKS_MAX: int = 64
"""Most blocks requested ahead (small blocks: bound the lookups per fault)."""

RAM_SHARE: int = 4
"""Blocks requested ahead stay under 1/RAM_SHARE of the handle's RAM."""

ASYNC_PREFETCH: tuple[type, ...] = (ClientStorage,)
"""Storages whose ``prefetch`` sends requests and returns: the only ones
asked ahead for whole blocks (see the module docstring)."""


class Readahead:
    """The sequential run of one handle's loads, and what was asked ahead.

    Parameters
    ----------
    blksize
        Bytes per block of the file.

    Notes
    -----
    Not thread-safe by itself: :meth:`loading` is called with the
    connection's lock held, like the load it precedes.
    """

    def __init__(self, blksize: int) -> None:
        self._blksize = blksize
        self._next: int | None = None    # the block a sequential run loads next
        self._window = 0                 # blocks to keep asked ahead of the run
        self._ahead = 0                  # blocks below this were asked for
        self._async: bool | None = None  # the storage prefetches asynchronously

    def max_window(self, ram_capacity: int) -> int:
        """Most blocks asked for ahead, for a handle whose RAM holds
        `ram_capacity` bytes (below 2: no readahead)."""
        return min(READAHEAD_BLOCKS_MAX, READAHEAD_BYTES // self._blksize,
                   ram_capacity // RAM_SHARE // self._blksize)

    def loading(self, zfile: ZBigFile, blk: int, ram_capacity: int) -> None:
        """Block `blk` of `zfile` is being loaded into a RAM of
        `ram_capacity` bytes: if that continues a sequential run, ask the
        storage for the blocks ahead of it."""
        if self._async is None:
            jar = zfile._p_jar
            if jar is None:
                return
            self._async = isinstance(jar.db().storage, ASYNC_PREFETCH)
        if not self._async:
            return
        if blk != self._next:
            self._next = blk + 1
            self._window = 0
            self._ahead = blk + 1
            return
        self._next = blk + 1
        if self._window and self._ahead - self._next > self._window // 2:
            return      # enough asked for still ahead
        max_window = self.max_window(ram_capacity)
        if max_window < 2:
            return
        self._window = min(max_window, max(2, 2 * self._window))
        start = max(self._ahead, self._next)
        stop = self._next + self._window
        if start >= stop:
            return
        objs: list[Persistent] = []
        for b in range(start, stop):
            zblk = _btree.lookup(zfile.blktab, b, [])
            if zblk is not None:
                objs.append(zblk)
        self._ahead = stop
        _records.prefetch(objs)

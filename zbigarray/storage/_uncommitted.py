"""What a handle's transaction changed outside its dirty pages.

A transaction's changes to a ZBigFile live in three places:

- dirty pages (the fault layer's);
- block objects changed in the connection: written by a *spill* (RAM full
  of dirty pages: the oldest are stored into their block objects, which a
  connection savepoint then moves to ZODB's savepoint storage, so that both
  the pages and the objects can leave memory), or by replaying a savepoint
  snapshot (below).  Their pages may be clean yet hold uncommitted data, so
  an abort must drop them;
- savepoint snapshots: at ``transaction.savepoint()`` the dirty pages'
  content is copied to a temporary file.  Rolling back to the savepoint
  restores it *lazily*: the block is recorded in :attr:`Uncommitted.overlay`
  and its page dropped; the next load of the block reads the snapshot and
  stores it into the block object again.  Restoring lazily is what makes the
  rollback independent of the order in which ``transaction`` rolls back its
  data managers (the connection's rollback reverts block objects; doing our
  restore into them before that would be undone).

Savepoints are numbered by *epochs*: each savepoint closes one, and a block
stored in a later epoch was stored after that savepoint (its object is
reverted by the connection's rollback, so its page must go).
"""

from __future__ import annotations

import os
import tempfile
from typing import IO


class Uncommitted:
    """The stored blocks, epochs and savepoint snapshots of one handle's
    transaction.  Not thread-safe: its owner serializes the calls."""

    def __init__(self) -> None:
        self.epoch = 0
        # blk -> [first, last] epoch it was stored in, this transaction
        self._stored: dict[int, list[int]] = {}
        # blk -> offset in the snapshot file of its content: a block to
        # restore at its next load (after a rollback)
        self.overlay: dict[int, int] = {}
        self._file: IO[bytes] | None = None
        self._size = 0

    def note_stored(self, blk: int) -> None:
        """Block `blk` was stored into its block object now."""
        epochs = self._stored.get(blk)
        if epochs is None:
            self._stored[blk] = [self.epoch, self.epoch]
        else:
            epochs[1] = self.epoch

    def stored(self) -> set[int]:
        """Blocks stored into block objects this transaction."""
        return set(self._stored)

    def save(self, data: memoryview) -> int:
        """Append `data` (a block of a snapshot) to the snapshot file; its
        offset."""
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="zbigarray-savepoint-")
        off = self._size
        os.pwrite(self._file.fileno(), data, off)
        self._size += len(data)
        return off

    def restore(self, off: int, buf: memoryview) -> None:
        """Read the snapshot block at `off` into `buf`."""
        assert self._file is not None
        n = os.preadv(self._file.fileno(), [buf], off)
        if n != len(buf):
            raise OSError(f"savepoint snapshot: read {n} of {len(buf)} bytes at {off}")

    def close_epoch(self) -> int:
        """A savepoint is taken now: the epoch it closes."""
        epoch = self.epoch
        self.epoch += 1
        return epoch

    def rollback(self, epoch: int, snapshot: dict[int, int]) -> set[int]:
        """Go back to the savepoint that closed `epoch`, whose dirty pages
        were saved as `snapshot` (blk -> offset).  Returns the blocks whose
        cached pages must be dropped besides the dirty ones: stored after the
        savepoint, or to be restored from the snapshot."""
        drop = set(snapshot)
        for blk, epochs in list(self._stored.items()):
            if epochs[1] > epoch:
                drop.add(blk)
                if epochs[0] > epoch:
                    del self._stored[blk]     # its object is back to the committed state
                else:
                    epochs[1] = epoch
        self.overlay = dict(snapshot)
        self.epoch = epoch + 1
        return drop

    def clear(self) -> None:
        """The transaction ended: forget everything, free the snapshot file."""
        self._stored.clear()
        self.overlay.clear()
        self.epoch = 0
        if self._file is not None:
            self._file.close()
            self._file = None
        self._size = 0

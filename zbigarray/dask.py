"""Dask arrays over ZBigArrays: one computation on many processes or machines.

``to_dask(A)`` makes a dask array whose tasks carry a small reference to
``A`` -- database URI, oid and the snapshot the calling transaction reads
(:class:`zbigarray.storage.snapshot.SnapshotRef`) -- never its content.  A
worker, in this process or another one, opens the database once, and a
read-only historical connection at that snapshot which it keeps between
tasks, and reads its chunk from there: every chunk comes from the same
snapshot whatever other clients commit meanwhile, and the database is the
only thing the workers share (ZEO, RelStorage, or a FileStorage on a
filesystem they all see).

Writing back is the client's, and the commit the caller's, whichever of
two ways writes:

- ``store(x, A)`` computes ``x``'s chunks wherever the current dask
  scheduler runs them and writes each into ``A`` in this process, under this
  thread's transaction, a bounded number at a time.  Any scheduler.
- ``dask.array.store(x, A)`` works with the schedulers that run in this
  process (threads, synchronous), which write into ``A`` itself, and on a
  ``dask.distributed`` cluster: ``A``, pickled into the graph while the
  client is active, names a relay in this process, and each task's
  ``A[index] = chunk`` on a worker is written here, under the transaction
  of the thread that computes the graph, before the task ends (see
  :mod:`zbigarray.storage._write_relay`).  The cluster holds about a chunk
  per worker thread, this process one at a time.  With
  ``scheduler="processes"`` (or ``multiprocessing``) nothing relays: the
  tasks' writes reach a read-only snapshot, which refuses with a
  ``TypeError`` naming ``store``.  ``return_stored=True`` on a cluster reads
  back the snapshot, not the values just written.

dask is an optional dependency: import this module only with it installed.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import dask
import dask.array as da
import numpy as np

from zbigarray.storage.snapshot import SnapshotRef, snapshot_ref

__all__ = ["to_dask", "store", "default_chunks"]


class SnapshotArray:
    """What ``dask.array.from_array`` reads chunks from: a ZBigArray's
    shape and dtype, and the reference that opens it at its snapshot where
    the chunk is read.  Pickles to the reference's size."""

    def __init__(self, ref: SnapshotRef, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.ref = ref
        self.shape = shape
        self.dtype = dtype
        self.ndim = len(shape)

    def __getitem__(self, idx: Any) -> np.ndarray:
        # A view of the snapshot's pages: loaded on touch, no copy here.
        return self.ref.open()[idx]


def _uncommitted(A: Any) -> str | None:
    """What of `A` the current transaction changed, if anything: a snapshot
    other processes can read holds only committed data."""
    if A._p_changed:
        return "its header (shape)"
    zfile = A.zfile
    if zfile._p_changed:
        return "its file"
    from zbigarray.storage._invalidation import connection_hook

    fileh = connection_hook(A._p_jar).default_fileh.get(id(zfile))
    if fileh is not None and not fileh.closed and fileh.isdirty():
        return "pages written in this transaction"
    for obj in A._p_jar._registered_objects:
        # Blocks spilled out of RAM, and the block table's nodes.
        module = type(obj).__module__
        if module.startswith(("zbigarray.storage", "BTrees")):
            return "blocks stored but not committed (spilled out of RAM)"
    return None


def default_chunks(A: Any) -> tuple[int, ...]:
    """Chunks of whole blocks along `A`'s major axis, about dask's
    ``array.chunk-size`` each (at least one block, one row), the other axes
    whole: a chunk then loads exactly the blocks it needs, once."""
    shape = A.shape
    if not shape:
        return ()
    axis = 0 if A.order == "C" else len(shape) - 1
    rowbytes = A.itemsize * math.prod(shape[:axis] + shape[axis + 1:])
    blksize = A.zfile.blksize
    want = dask.utils.parse_bytes(dask.config.get("array.chunk-size"))
    nbytes = max(want // blksize, 1) * blksize
    rows = max(nbytes // rowbytes, 1) if rowbytes else max(shape[axis], 1)
    chunks = list(shape)
    chunks[axis] = min(rows, max(shape[axis], 1))
    return tuple(chunks)


def to_dask(A: Any, chunks: Any = None, name: str | None = None) -> da.Array:
    """A dask array of stored ZBigArray `A` as the calling transaction sees
    it.

    Parameters
    ----------
    A
        A ZBigArray stored in a database other processes can reach (opened
        with ``open_db``; not ``memory://``).
    chunks
        As for ``dask.array.from_array``; default :func:`default_chunks`.
    name
        The dask key prefix; default one made from the snapshot.

    Raises
    ------
    TypeError
        `A` is not stored yet.
    ValueError
        `A` has changes not committed (the snapshot would not hold them:
        commit or abort first), or its database cannot be reached from
        other processes.
    """
    ref = snapshot_ref(A)
    changed = _uncommitted(A)
    if changed is not None:
        raise ValueError(
            f"{type(A).__name__} {A._p_oid!r} has changes not committed ({changed}): "
            f"other processes read committed data only; commit or abort first")
    if chunks is None:
        chunks = default_chunks(A)
    if name is None:
        name = f"zbigarray-{ref.oid.hex()}-{ref.before.hex()}"
    return da.from_array(SnapshotArray(ref, A.shape, A.dtype), chunks=chunks, name=name,
                         asarray=False, lock=False, meta=np.empty((0,) * A.ndim, A.dtype))


def store(x: da.Array, A: Any, region: tuple[slice, ...] | None = None,
          in_flight: int | None = None) -> None:
    """Compute dask array `x` and write it into `A` (or ``A[region]``) in
    this process, under this thread's transaction: the chunks are computed
    wherever the current scheduler runs tasks, and written here as they
    arrive, at most `in_flight` chunks held at once (default: twice the
    number of chunks the scheduler computes at a time, at least 4).  The
    commit is the caller's.

    Unlike ``dask.array.store``, which does the same on a distributed
    cluster by relaying each task's write, this works with every scheduler
    (processes too) and sends the chunks back as results: no relay thread,
    no messages per chunk through the scheduler.

    Raises
    ------
    ValueError
        `x`'s shape differs from the destination's.
    """
    if region is not None and any(
            not isinstance(s, slice) or s.step not in (None, 1) for s in region):
        raise ValueError(f"store: region must be slices with step 1, not {region!r}")
    dest = A[region] if region is not None else A[...]
    if dest.shape != x.shape:
        raise ValueError(f"store: x has shape {x.shape}, the destination {dest.shape}")
    del dest
    offsets = [np.cumsum((0,) + c) for c in x.chunks]
    blocks = list(np.ndindex(*x.numblocks))
    delayed = x.to_delayed().ravel()
    base = (tuple(s.indices(n)[0] for s, n in zip(region, A.shape)) if region is not None
            else (0,) * x.ndim)

    def destination(ix: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(b + o[i], b + o[i + 1]) for b, o, i in zip(base, offsets, ix))

    client = _distributed_client()
    if in_flight is None:
        nthreads = sum(client.nthreads().values()) if client else (dask.config.get(
            "num_workers", None) or 4)
        in_flight = max(2 * nthreads, 4)
    if client is not None:
        from distributed import as_completed

        pending = deque(range(len(blocks)))
        futures: dict[Any, int] = {}     # future -> block index
        while pending and len(futures) < in_flight:
            k = pending.popleft()
            futures[client.compute(delayed[k])] = k
        ac = as_completed(list(futures))
        for fut in ac:
            k = futures.pop(fut)
            A[destination(blocks[k])] = fut.result()
            fut.release()
            if pending:
                k2 = pending.popleft()
                nxt = client.compute(delayed[k2])
                futures[nxt] = k2
                ac.add(nxt)
        return
    # Schedulers of this process: compute a batch at a time.
    for lo in range(0, len(blocks), in_flight):
        batch = list(range(lo, min(lo + in_flight, len(blocks))))
        results = dask.compute(*[delayed[k] for k in batch])
        for k, value in zip(batch, results):
            A[destination(blocks[k])] = value


def _distributed_client() -> Any:
    """The dask.distributed client in use, if any."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None

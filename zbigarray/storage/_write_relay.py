"""Writes into a ZBigArray from dask.distributed workers, relayed to the client.

``dask.array.store(x, A)`` on a cluster runs ``A[index] = chunk`` in the
worker that computed the chunk, on ``A`` as pickled into the task graph.  An
array unpickled in another process is read-only at a snapshot (see
:mod:`zbigarray.storage.snapshot`): a change made there could never be
committed.  The change belongs to the transaction of the client that
submitted the graph, so it is made there, by relaying it:

- Pickled in a process where a ``dask.distributed`` client is active (and
  which is not itself a worker), an array whose connection can write
  becomes a :class:`RelayedArray`: the snapshot reference, the name of the
  :class:`WriteRelay` this process runs for the array (one per array and
  transaction manager, a daemon thread, started on first use) and which
  transaction the writes are for.
- In a worker, ``RelayedArray.__setitem__`` scatters ``(index, chunk)`` to
  that worker under a fresh key, puts the future on the
  ``distributed.Queue`` named after the relay, logs an event of the topic of
  that name (the client, subscribed, wakes the relay) and waits for the
  ``distributed.Event`` named by the key; the answer is then in the
  ``distributed.Variable`` of that name: nothing, or the exception the
  write raised, raised again in the task and so from ``da.store``.  (Both
  sides wait on events: a queue's or a variable's get that times out is
  logged by the scheduler as an error.)
- The relay thread takes the queued requests and, one at a time, gathers
  the chunk and writes ``A[index] = chunk`` in the transaction the client
  was in when it pickled the array.  With a thread-local transaction
  manager that is the pickling thread's: distributed pickles the graph in
  the thread that computes it, the caller of ``da.store``.

Reads of a RelayedArray (``__getitem__``, attributes) are the snapshot's,
committed data only: ``da.store(..., return_stored=True)`` reads back the
snapshot, not what was just written.

Why relay rather than refuse: ``da.store`` is what dask users write, and
every other target of it works on a cluster.  Why this shape: a worker's
task waits for its answer, so the cluster holds a chunk only while its task
runs (one per worker thread) and the client only while the relay writes it
(one at a time); every chunk is written when ``da.store`` returns; the data
goes from worker to client directly, only small messages through the
scheduler.  The price is a few scheduler messages per chunk, negligible
beside chunks of megabytes; :func:`zbigarray.dask.store`, which returns the
chunks as results, needs none.

Transactions.  Writes are accepted only for the transaction they were
pickled in: the relay is a synchronizer of the transaction manager, and from
that transaction's ``beforeCompletion`` on (commit or abort; it waits for a
write in progress) refuses the rest with an error.  After a ``da.store``
that failed, tasks still running must not write into the transaction that
follows the caller's abort.

Lifetime.  The relay thread stops once the array is gone, its connection
closed or the client closed; its last act is to answer pending requests with
an error and to set the ``<name>-stopped`` event, which a waiting worker
checks every second, as it checks whether its task was cancelled (its
client gone).  Not relayed, writing keeps raising ``TypeError``: an array
pickled with no client active, unpickled outside a worker of that client
(``scheduler="processes"``, ``multiprocessing``), or pickled by a thread that
holds the array's connection lock (the relay's write would wait for that
lock while the thread waits for the write).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import queue
import sys
import threading
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import transaction
from transaction.interfaces import NoTransaction

from zbigarray.storage._connlock import object_lock
from zbigarray.storage.snapshot import SnapshotRef

__all__ = ["RelayedArray", "WriteRelay", "relayed_array"]

_log = logging.getLogger(__name__)

_POLL_SECONDS = 1.0
"""How long the relay and a waiting worker wait for a message before they
check whether the other side is still there."""


def relayed_array(A: Any, ref: SnapshotRef) -> RelayedArray | None:
    """What pickling ZBigArray `A` (at reference `ref`) gives when its writes
    can be relayed to this process: a :class:`RelayedArray` naming the
    array's running relay (started on first use); None when they cannot
    (see the module docstring)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None             # never imported: no client can be active
    jar = A._p_jar
    if jar is None or jar.opened is None or jar.isReadOnly():
        return None
    try:
        distributed.get_worker()
        return None             # a worker's own arrays are its own business
    except ValueError:
        pass
    try:
        client = distributed.default_client()
    except ValueError:
        return None
    if client.status != "running":
        return None
    # A private method of RLock (threading.Condition uses it): whether this
    # thread holds the lock the relay's write will need.
    if object_lock(A)._is_owned():  # type: ignore[attr-defined]
        return None
    tm = jar.transaction_manager
    manager = tm.manager if isinstance(tm, transaction.ThreadTransactionManager) else tm
    try:
        txn = manager.get()
    except NoTransaction:
        return None             # explicit mode, no transaction begun: none to write in
    with _relays_lock:
        relay = _relays.get((id(A), id(manager)))
        if relay is None or not relay.serves(A, manager, client):
            relay = _relays[id(A), id(manager)] = WriteRelay(A, manager, client)
    return RelayedArray(ref, relay.name, relay.expect_writes(txn))


_relays: dict[tuple[int, int], WriteRelay] = {}
"""The running relays, by (id of the array, id of the transaction manager)."""
_relays_lock = threading.Lock()


class WriteRelay:
    """Writes into ZBigArray `A`, under the transactions of `manager`, the
    chunks that workers of `client` send (see the module docstring).

    Parameters
    ----------
    A
        The array, held weakly: the relay stops once it is gone.
    manager
        The transaction manager the writes join (not a thread-local one:
        what it resolves to in the thread that pickled the array).
    client
        The ``distributed.Client`` whose workers send the writes.
    """

    def __init__(self, A: Any, manager: transaction.TransactionManager, client: Any) -> None:
        self.name = f"zbigarray-write-relay-{uuid.uuid4().hex}"
        self._array = weakref.ref(A)
        self._jar = A._p_jar
        tm = self._jar.transaction_manager
        # Set to `manager` in the relay thread while it writes, for the file
        # handle's data manager and the Connection, which both ask it.
        self._thread_local_tm = (tm if isinstance(tm, transaction.ThreadTransactionManager)
                                 else None)
        self._manager = manager
        self._client = client
        # Held while writing, and while the transaction ends: a write is
        # either wholly in the transaction or refused.
        self._lock = threading.Lock()
        self._txn: Any = None
        self._epoch = 0
        self._accepting = False
        self._stopped = False
        manager.registerSynch(self)
        # Workers announce each request as an event of the topic named after
        # the relay, which the client hands to this queue: the relay waits
        # for them here, without a request to the scheduler pending (a wait
        # there that times out, or that the scheduler's shutdown cancels, is
        # logged as an error).  Subscribed here, in the thread that pickles:
        # before the graph is sent, so that the scheduler knows where to
        # send the first request's event.
        self._wake: queue.SimpleQueue[Any] = queue.SimpleQueue()
        client.subscribe_topic(self.name, self._wake.put)
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()

    def serves(self, A: Any, manager: Any, client: Any) -> bool:
        """Whether this relay is running for `A`, `manager` and `client`."""
        return (not self._stopped and self._array() is A and self._manager is manager
                and self._client is client)

    def expect_writes(self, txn: Any) -> int:
        """Accept writes in `txn` (the manager's current transaction) from now
        on; return the epoch that requests for it carry.  A new transaction
        starts a new epoch, and refuses requests of the previous ones."""
        with self._lock:
            if txn is not self._txn:
                self._txn = txn
                self._epoch += 1
                self._accepting = True
            return self._epoch

    # ISynchronizer: only the end of the transaction matters.

    def beforeCompletion(self, txn: Any) -> None:
        """Commit or abort of `txn` begins: refuse its writes from now on,
        once the one in progress, if any, is done."""
        with self._lock:
            if txn is self._txn:
                self._accepting = False

    def afterCompletion(self, txn: Any) -> None:
        pass

    def newTransaction(self, txn: Any) -> None:
        pass

    # ------------------------------------------------------ the relay thread

    def _serve(self) -> None:
        from distributed import Queue

        requests = None
        try:
            requests = Queue(self.name, client=self._client)
            while self._useful():
                try:
                    self._wake.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    continue
                while not self._wake.empty():   # one look at the queue for them all
                    self._wake.get()
                for future in requests.get(batch=True):
                    self._answer(future)
        except (Exception, asyncio.CancelledError):
            # A client closing cancels the call in progress: not worth a word.
            if self._client.status == "running":
                _log.exception("the write relay of %s stopped", self._array())
        finally:
            self._stop(requests)

    def _useful(self) -> bool:
        return (self._array() is not None and self._jar.opened is not None
                and self._client.status == "running")

    def _answer(self, future: Any) -> None:
        """Serve one request: gather it, write it, tell the worker how it went."""
        try:
            self._write(*future.result())
            reply = None
        except (Exception, asyncio.CancelledError) as exc:     # its data lost: cancelled
            reply = _encode_error(exc)
        self._reply(future, reply)

    def _reply(self, future: Any, reply: Any) -> None:
        from distributed import Event, Variable

        future.release()
        Variable(future.key, client=self._client).set(reply)
        Event(future.key, client=self._client).set()

    def _write(self, epoch: int, index: Any, value: Any) -> None:
        with self._lock:
            if epoch != self._epoch or not self._accepting:
                raise RuntimeError(
                    f"not written: the transaction this write into {self._array()!r} was "
                    f"for has ended (committed or aborted) or is ending")
            A = self._array()
            if A is None:
                raise RuntimeError("not written: the array is gone from the client")
            with self._in_manager():
                A[index] = value

    @contextmanager
    def _in_manager(self) -> Iterator[None]:
        tm = self._thread_local_tm
        if tm is None:
            yield           # a plain manager: the same transaction in every thread
            return
        saved = tm.manager
        tm.manager = self._manager
        try:
            yield
        finally:
            tm.manager = saved

    def _stop(self, requests: Any) -> None:
        with _relays_lock:
            for key, relay in list(_relays.items()):
                if relay is self:
                    del _relays[key]
        with self._lock:
            self._stopped = True
            self._accepting = False
        try:
            self._manager.unregisterSynch(self)
        except KeyError:
            pass        # its synchronizers were cleared (clearSynchs)
        if self._client.status != "running":
            return
        from distributed import Event

        try:
            self._client.unsubscribe_topic(self.name)
            if requests is None:
                return
            Event(_stopped_event(self.name), client=self._client).set()
            refused = _encode_error(TypeError(_RELAY_STOPPED))
            for future in requests.get(batch=True):
                self._reply(future, refused)
            requests.close()
        except Exception:
            if self._client.status == "running":
                _log.exception("stopping the write relay of %s", self._array())


_NOT_RELAYED = ("a ZBigArray unpickled here is read-only, and the client that pickled it "
                "does not take its writes")
_WRITE_IN_CLIENT = ("write from the process whose transaction will commit it: "
                    "zbigarray.dask.store(x, A) computes anywhere and writes there")
_RELAY_STOPPED = (f"{_NOT_RELAYED} (its relay stopped: the array, its connection or the "
                  f"client is gone); {_WRITE_IN_CLIENT}")


def _stopped_event(relay: str) -> str:
    """The name of the event relay `relay` sets when it stops."""
    return f"{relay}-stopped"


def _encode_error(exc: BaseException) -> list[Any]:
    """`exc` as a message a ``distributed.Variable`` carries: pickled when it
    can be, and as text."""
    try:
        pickled: bytes | None = pickle.dumps(exc)
    except Exception:
        pickled = None
    return [pickled, f"{type(exc).__name__}: {exc}"]


def _decode_error(reply: list[Any]) -> BaseException:
    pickled, text = reply
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            pass
        else:
            if isinstance(exc, BaseException):
                return exc
    return RuntimeError(text)


# ----------------------------------------------------------- the worker side


class RelayedArray:
    """A ZBigArray as unpickled in a ``dask.distributed`` worker from a client
    that relays its writes: ``A[index] = value`` is written into the
    client's array, under the client's transaction, before it returns;
    reads and attributes are those of the array read-only at the snapshot
    of `ref`.

    Parameters
    ----------
    ref
        The array at the snapshot its client read when it pickled it.
    relay
        The name of the client's :class:`WriteRelay` for it.
    epoch
        Which of the relay's transactions the writes are for.
    """

    def __init__(self, ref: SnapshotRef, relay: str, epoch: int) -> None:
        self.ref = ref
        self.relay = relay
        self.epoch = epoch

    def __reduce__(self) -> tuple[Any, ...]:
        return (RelayedArray, (self.ref, self.relay, self.epoch))

    def __repr__(self) -> str:
        return f"RelayedArray({self.ref!r}, relay={self.relay!r})"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            # Protocol probes (dask's is_dask_collection, NumPy's array
            # interfaces) need not open the snapshot, which for an array
            # new in the client's transaction does not hold it.
            raise AttributeError(name)
        return getattr(self.ref.open(), name)

    def __getitem__(self, index: Any) -> Any:
        return self.ref.open()[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        """Write `value` at `index` in the client's array.

        Raises
        ------
        TypeError
            Not in a worker of the client that pickled the array, or its
            relay stopped.
        Exception
            Whatever the write raised in the client.
        """
        try:
            from distributed import get_client, get_worker
            worker = get_worker()
        except (ImportError, ValueError):
            raise TypeError(f"{_NOT_RELAYED} (not a dask.distributed worker); "
                            f"{_WRITE_IN_CLIENT}") from None
        client = get_client()
        key = f"{self.relay}-{uuid.uuid4().hex}"
        future = client.scatter({key: (self.epoch, index, value)},
                                workers=[worker.address])[key]
        try:
            _request_queue(client, self.relay).put(future)
            worker.log_event(self.relay, key)       # wakes the relay
            reply = _await_reply(client, key, self.relay)
        finally:
            future.release()
        if reply is not None:
            exc = _decode_error(reply)
            exc.add_note(f"(raised writing into {self.ref.oid!r} in the dask client, "
                         f"which relays this worker's writes)")
            raise exc


_queues: dict[str, Any] = {}
"""This worker's handle of each relay's request queue: made once, since each
one made counts as a user of the queue on the scheduler."""
_queues_lock = threading.Lock()


def _request_queue(client: Any, relay: str) -> Any:
    from distributed import Queue

    with _queues_lock:
        requests = _queues.get(relay)
        if requests is None:
            requests = _queues[relay] = Queue(relay, client=client)
        return requests


def _await_reply(client: Any, key: str, relay: str) -> Any:
    """The relay's answer to request `key`; TypeError if the relay stopped,
    RuntimeError if this task was cancelled (its client is gone) first."""
    from distributed import Event, Variable

    answered = Event(key, client=client)
    while not answered.wait(timeout=_POLL_SECONDS):
        if Event(_stopped_event(relay), client=client).is_set():
            raise TypeError(_RELAY_STOPPED)
        if _task_cancelled():
            raise RuntimeError("cancelled while waiting for the client to write")
    answer = Variable(key, client=client)
    reply = answer.get()
    answer.delete()
    answered.clear()        # which removes it from the scheduler
    return reply


def _task_cancelled() -> bool:
    """Whether the scheduler cancelled the task this thread runs."""
    from distributed import get_worker
    from distributed.worker import thread_state

    key = getattr(thread_state, "key", None)
    if key is None:
        return False
    task = get_worker().state.tasks.get(key)
    return task is None or task.state == "cancelled"

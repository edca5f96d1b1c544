"""Riding through a storage server restart: loads retried while it reconnects.

A page fault has nobody to hand a "try again later" to, and a database
server restarting (an upgrade, a failover) should not fail every read in
flight.  So a load that fails because the storage lost its server is retried
with a short backoff while the storage reconnects, for up to
``$ZBIGARRAY_RECONNECT_TIMEOUT`` seconds (read at each failing load; default
60); only then does the last error propagate.

Which errors.  Only those after which the storage can go on reading *the
same snapshot* as the transaction, so that a retried read returns exactly
what the failed one would have:

- ZEO's ``ClientDisconnected``.  A ZEO client reconnects by itself (every
  1-2 s) and ZODB's MVCC reads are ``loadBefore(oid, transaction start)``,
  which the server answers from history whatever was committed meanwhile.
  (A ZEO load started while disconnected itself waits up to the client's
  ``wait_timeout``, 30 s unless set in the URI, before it fails.)
- Not RelStorage's lost-connection errors (its driver's
  ``disconnected_exceptions``: psycopg2's ``OperationalError`` and
  ``InterfaceError``...).  RelStorage's snapshot is the database session of
  its load connection: once that is gone, RelStorage refuses to reconnect in
  the middle of a transaction (it would read a newer state) and every retry
  fails with "cursor already closed"; it reconnects at the next transaction
  boundary.  Retrying would only delay the error.

Ctrl-C is never swallowed: ``KeyboardInterrupt`` is not among the retried
errors, and the backoff sleeps are short and interruptible.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ZEO.Exceptions import ClientDisconnected

RECONNECT_TIMEOUT_ENV: str = "ZBIGARRAY_RECONNECT_TIMEOUT"
"""Environment variable: seconds a load keeps retrying while disconnected."""

RECONNECT_TIMEOUT_DEFAULT: float = 60.0

DISCONNECTED: tuple[type[BaseException], ...] = (ClientDisconnected,)
"""The errors retried: the storage lost its server, and will resume reading
the transaction's snapshot once reconnected."""

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0

_log = logging.getLogger("zbigarray.storage")

_retrying = threading.local()

T = TypeVar("T")


def reconnect_timeout() -> float:
    """Seconds to retry a load while the storage is disconnected.

    ``$ZBIGARRAY_RECONNECT_TIMEOUT`` (a non-negative number; 0 retries
    nothing), 60 when unset or empty.

    Raises
    ------
    ValueError
        The variable is set to something else.
    """
    value = os.environ.get(RECONNECT_TIMEOUT_ENV, "")
    if not value.strip():
        return RECONNECT_TIMEOUT_DEFAULT
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds >= 0 or math.isinf(seconds):
        raise ValueError(f"{RECONNECT_TIMEOUT_ENV}={value!r}: expected a number of "
                         "seconds, 0 or more")
    return seconds


def retry_while_disconnected(load: Callable[[], T], what: Callable[[], str]) -> T:
    """Return ``load()``, calling it again while it fails for lack of a server.

    Parameters
    ----------
    load
        Reads persistent objects; must be safe to call again after it failed
        part-way (it starts over).
    what
        Says what is loaded, for the log (called only on a failure).

    Raises
    ------
    BaseException
        What `load` raised: at once if it is not one of :data:`DISCONNECTED`,
        otherwise the last such error once the reconnect timeout has passed.
    ValueError
        ``$ZBIGARRAY_RECONNECT_TIMEOUT`` does not parse (chained to the
        disconnection).
    """
    if getattr(_retrying, "active", False):
        # Inside another retried load of this thread (e.g. a ZBigArray
        # loading its state while opening its file): that one starts over,
        # so that the timeout is not served twice.
        return load()
    _retrying.active = True
    try:
        try:
            return load()
        except DISCONNECTED as e:
            last = e
        return _retry(load, what, last)
    finally:
        _retrying.active = False


def _retry(load: Callable[[], T], what: Callable[[], str], last: BaseException) -> T:
    try:
        deadline = time.monotonic() + reconnect_timeout()
    except ValueError as e:
        raise e from last
    _log.warning("%s: storage disconnected (%s); retrying for up to %g s",
                 what(), last, deadline - time.monotonic())
    delay = _BACKOFF_FIRST
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise last
        time.sleep(min(delay, left))
        delay = min(2 * delay, _BACKOFF_MAX)
        try:
            result = load()
        except DISCONNECTED as e:
            last = e
            continue
        _log.info("%s: storage reconnected, load done", what())
        return result

"""Riding through a storage server restart (zbigarray.storage._reconnect).

The policy itself is tested with loads that fail on cue; the real thing with
a ZEO server that is killed while a reader scans an array, in child
processes under a timeout.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import transaction
from ZEO.Exceptions import ClientDisconnected

from tests.common import run_in_child
from tests.storage.conftest import start_zeo, stop_zeo
from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.bigfile import ram_default
from zbigarray.storage import ZBigFile, open_db
from zbigarray.storage._reconnect import (RECONNECT_TIMEOUT_DEFAULT, RECONNECT_TIMEOUT_ENV,
                                          reconnect_timeout, retry_while_disconnected)
from zbigarray.storage.file_zodb import ZBlk0

# -- the policy ---------------------------------------------------------------


class _Flaky:
    """A load failing `fails` times with ClientDisconnected, then returning 42."""

    def __init__(self, fails: int) -> None:
        self.fails = fails
        self.calls = 0
        self.raised: list[BaseException] = []

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.fails:
            e = ClientDisconnected(f"failure {self.calls}")
            self.raised.append(e)
            raise e
        return 42


def _what() -> str:
    return "test load"


@pytest.mark.parametrize("value, seconds", [(None, RECONNECT_TIMEOUT_DEFAULT), ("", 60.0),
                                            ("2.5", 2.5), ("0", 0.0)])
def test_reconnect_timeout_from_environment(monkeypatch: pytest.MonkeyPatch,
                                            value: str | None, seconds: float) -> None:
    if value is None:
        monkeypatch.delenv(RECONNECT_TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(RECONNECT_TIMEOUT_ENV, value)
    assert reconnect_timeout() == seconds


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_bad_reconnect_timeout_is_refused_at_fileh_open(monkeypatch: pytest.MonkeyPatch,
                                                        value: str) -> None:
    monkeypatch.setenv(RECONNECT_TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=RECONNECT_TIMEOUT_ENV):
        reconnect_timeout()
    with pytest.raises(ValueError, match=RECONNECT_TIMEOUT_ENV):
        ZBigFile(4096).fileh_open()


def test_disconnected_load_is_retried_until_it_succeeds(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(RECONNECT_TIMEOUT_ENV, "30")
    load = _Flaky(3)
    with caplog.at_level(logging.INFO, logger="zbigarray.storage"):
        assert retry_while_disconnected(load, _what) == 42
    assert load.calls == 4
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert "test load" in caplog.records[0].getMessage()


def test_retrying_stops_at_the_timeout_with_the_last_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RECONNECT_TIMEOUT_ENV, "0.4")
    load = _Flaky(10**6)
    t0 = time.monotonic()
    with pytest.raises(ClientDisconnected) as e:
        retry_while_disconnected(load, _what)
    took = time.monotonic() - t0
    assert e.value is load.raised[-1]
    assert 0.4 <= took < 1.5
    assert 3 <= load.calls < 20         # backoff: 0.05, 0.1, 0.2, ... s


def test_zero_timeout_does_not_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RECONNECT_TIMEOUT_ENV, "0")
    load = _Flaky(1)
    with pytest.raises(ClientDisconnected):
        retry_while_disconnected(load, _what)
    assert load.calls == 1


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RECONNECT_TIMEOUT_ENV, "30")
    calls = []

    def load() -> None:
        calls.append(1)
        raise KeyError("not a disconnection")

    with pytest.raises(KeyError):
        retry_while_disconnected(load, _what)
    assert len(calls) == 1


def test_bad_timeout_is_reported_with_the_disconnection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RECONNECT_TIMEOUT_ENV, "soon")
    load = _Flaky(1)
    with pytest.raises(ValueError, match=RECONNECT_TIMEOUT_ENV) as e:
        retry_while_disconnected(load, _what)
    assert e.value.__cause__ is load.raised[0]


def test_nested_retries_serve_the_timeout_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A ZBigArray loads its own state while opening its file: both are
    # retried loads; an outage must not be waited for twice.
    monkeypatch.setenv(RECONNECT_TIMEOUT_ENV, "0.4")
    inner = _Flaky(10**6)
    t0 = time.monotonic()
    with pytest.raises(ClientDisconnected):
        retry_while_disconnected(lambda: retry_while_disconnected(inner, _what), _what)
    assert time.monotonic() - t0 < 1.2


# -- a real ZEO server killed under a reader ------------------------------------

BLK = 64 * 1024
PER = BLK // 8
NBLK = 32
RAM_BLOCKS = 4
TRIALS = 10


def _values(version: int) -> np.ndarray:
    """The array's content after `version` writes: exact float sums."""
    return np.arange(NBLK * PER, dtype=np.float64) + version


def _write_blocks(addr: str, version: int) -> bytes:
    """Replace every block of the array by `_values(version)` through
    another client, writing block objects directly (no pages); return the
    transaction id."""
    db = open_db(f"zeo://{addr}")
    try:
        tm = transaction.TransactionManager()
        blktab = db.open(tm).root()["A"].zfile.blktab
        values = _values(version)
        for b in range(NBLK):
            blktab[b] = ZBlk0(values[b * PER:(b + 1) * PER].tobytes())
        tm.commit()
        return db.lastTransaction()
    finally:
        db.close()


def _server_with_array(tmpdir: str) -> tuple[object, str]:
    """A ZEO server on a FileStorage in `tmpdir` holding array ``A`` =
    ``_values(0)``; then this process's RAM shrunk to `RAM_BLOCKS` blocks,
    so that a scan keeps loading."""
    server, addr = start_zeo(Path(tmpdir) / "zeo.fs")
    db = open_db(f"zeo://{addr}")
    db.open().root()["A"] = a = ZBigArray(NBLK * PER, np.float64, blksize=BLK)
    a[:] = _values(0)
    transaction.commit()
    db.close()
    ram_default().capacity = RAM_BLOCKS * BLK
    return server, addr


def _scan(a: ZBigArray) -> float:
    return sum(float(a[b * PER:(b + 1) * PER].sum()) for b in range(NBLK))


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.retried = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "storage disconnected" in record.getMessage():
            self.retried += 1


def scans_through_restarts(tmpdir: str, trials: int) -> None:
    """`trials` times: a fresh client scans the array; the server freezes
    while one of its loads is in flight, is killed, restarted 1 s later on
    the same port and FileStorage, and another client then rewrites every
    block.  The scan must finish with the sum of the snapshot it started
    with; the rewrite shows at the next transaction boundary."""
    server, addr = _server_with_array(tmpdir)
    port = int(addr.rsplit(":", 1)[1])
    counter = _Counter()
    logging.getLogger("zbigarray.storage").addHandler(counter)
    os.environ["ZBIGARRAY_RECONNECT_TIMEOUT"] = "30"
    written: list[bytes] = []
    try:
        for trial in range(trials):
            db = open_db(f"zeo://{addr}")       # a fresh client cache: all loads go to the server
            a = db.open().root()["A"]
            transaction.begin()
            storage = db.storage
            load_before = storage.loadBefore
            nloads = 0

            def outage(frozen: object) -> None:
                nonlocal server
                time.sleep(0.1)                 # the load is on the wire
                frozen.kill()                   # type: ignore[attr-defined]
                frozen.wait()                   # type: ignore[attr-defined]
                time.sleep(1)
                server, _ = start_zeo(Path(tmpdir) / "zeo.fs", port)
                written.append(_write_blocks(addr, trial + 1))
                rewritten.set()

            restarter = threading.Thread(target=outage, args=(server,))
            rewritten = threading.Event()

            def load_stopping_the_server(oid: bytes, tid: bytes) -> object:
                nonlocal nloads
                nloads += 1
                if nloads == 3 + 2 * trial:     # somewhere else in the scan each time
                    os.kill(server.pid, signal.SIGSTOP)     # type: ignore[attr-defined]
                    restarter.start()
                elif nloads > 3 + 2 * trial:
                    # The retry, and every load after it, reads only once
                    # the other client committed.
                    assert rewritten.wait(30), "the other client did not commit"
                return load_before(oid, tid)

            storage.loadBefore = load_stopping_the_server
            got = _scan(a)
            restarter.join()
            assert got == float(_values(trial).sum()), (trial, got)
            deadline = time.monotonic() + 20
            while db.lastTransaction() < written[-1]:
                assert time.monotonic() < deadline, "the rewrite did not arrive"
                time.sleep(0.01)
            transaction.begin()
            assert _scan(a) == float(_values(trial + 1).sum()), trial
            transaction.abort()
            db.close()
        # Mostly the load in flight fails and is retried; it may also
        # start only once the connection is lost (then ZEO itself waits).
        assert counter.retried >= trials // 2, counter.retried
    finally:
        stop_zeo(server)        # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.zeo
@pytest.mark.subprocess
def test_scans_ride_through_server_restarts() -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        run_in_child(scans_through_restarts, tmpdir, TRIALS, timeout=90)


def ctrl_c_while_retrying(tmpdir: str) -> None:
    """Ctrl-C while a load waits for a server that is gone: it arrives at
    once, though the reconnect timeout is far."""
    server, addr = _server_with_array(tmpdir)
    os.environ["ZBIGARRAY_RECONNECT_TIMEOUT"] = "60"
    db = open_db(f"zeo://{addr}?wait_timeout=1")
    a = db.open().root()["A"]
    assert float(a[:PER].sum()) == float(_values(0)[:PER].sum())
    stop_zeo(server)
    sent: list[float] = []

    def interrupt() -> None:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    # Called directly, not from a page fault: the policy is what is tested.
    file = a._fileh.file
    threading.Timer(1.5, interrupt).start()     # into the waits, whichever
    try:
        file.loadblk(7, memoryview(bytearray(BLK)))
    except KeyboardInterrupt:
        took = time.monotonic() - sent[0]
    else:
        raise AssertionError("loadblk returned with the server gone")
    assert took < 0.5, took


@pytest.mark.zeo
@pytest.mark.subprocess
def test_ctrl_c_interrupts_the_wait_for_the_server() -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        run_in_child(ctrl_c_while_retrying, tmpdir, timeout=60)


def outage_longer_than_the_limit(tmpdir: str) -> None:
    """The server is gone for good: reading a block not loaded yet raises
    PageFaultError (caused by ClientDisconnected) once
    ZBIGARRAY_RECONNECT_TIMEOUT has passed; the process goes on."""
    from zbigarray.bigfile import PageFaultError

    server, addr = _server_with_array(tmpdir)
    os.environ["ZBIGARRAY_RECONNECT_TIMEOUT"] = "2"
    db = open_db(f"zeo://{addr}?wait_timeout=1")
    a = db.open().root()["A"]
    assert float(a[:PER].sum()) == float(_values(0)[:PER].sum())
    stop_zeo(server)
    t0 = time.monotonic()
    try:
        float(a[7 * PER:8 * PER].sum())
    except PageFaultError as e:
        took = time.monotonic() - t0
        assert isinstance(e.__cause__, ClientDisconnected), repr(e.__cause__)
        assert "7" in str(e), str(e)
    else:
        raise AssertionError("the read succeeded with the server gone")
    assert 2 <= took < 10, took         # retried for the limit, plus ZEO's last wait
    transaction.abort()
    db.close()


@pytest.mark.zeo
@pytest.mark.subprocess
def test_outage_longer_than_the_limit_raises_in_the_reader() -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        run_in_child(outage_longer_than_the_limit, tmpdir, timeout=60)

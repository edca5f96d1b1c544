"""One transaction changing more than the RAM holds: dirty pages spill into
ZODB's savepoint storage, and commit and abort still do the whole of it.

With ``ZBIGARRAY_RAM_MAX=64M``, a child process writes 1 GiB into a ZBigArray
in one transaction (64 MiB slices of position-derived values), reading back
an early, spilled, slice before it commits or aborts.  It reports its page
memory after every slice and its peak resident memory (``VmHWM``): both stay
bounded by the RAM capacity (plus a fixed allowance for the interpreter,
NumPy's temporaries and ZODB's caches), whatever the transaction's size.  A
fresh process then reads every element back, in slices, under the same RAM:
all of the transaction after a commit, exactly the previous commit after an
abort.  FileStorage, ZEO (a real ``runzeo``) and RelStorage (a real
PostgreSQL) each carry the 1 GiB case; dask's ``store`` and the ZBlk1 format
run on FileStorage.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.common import run_python
from tests.storage.conftest import empty_relstorage

pytestmark = pytest.mark.subprocess

MiB = 1 << 20
RAM = 64 * MiB
ENV = {"ZBIGARRAY_RAM_MAX": "64M"}
ALLOWANCE = 192 * MiB
"""Peak resident memory a writer may gain beyond twice the RAM capacity: the
64 MiB NumPy temporary of a slice, ZODB's caches and the block objects of
one spill.  Twice: the resident set counts a page of the RAM once for each
mapping showing it -- the RAM's own window and the array's mapping, which
keeps the pages it touched mapped, as ``numpy.memmap`` does -- although it
is one page of memory."""
BOUND = 2 * RAM + ALLOWANCE
GiB = 1 << 30

# Shared by the children: `P` (a dict of parameters) is defined before.
# Element k of the array: `k` after a transaction that wrote it (as float64),
# and in the previous commit `-k` in the blocks of `OLD_BLOCKS`, 0 elsewhere.
PRELUDE = textwrap.dedent("""
    import json, sys, time
    import numpy as np, transaction
    from zbigarray import ZBigArray, open_db

    MiB = 1 << 20
    N = P["nbytes"] // 8             # float64 elements
    SLICE = 64 * MiB // 8            # elements per written slice
    PER_BLK = 2 * MiB // 8           # elements per (default-sized) block

    def vmhwm():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/self/status")

    def new(i, j):
        return np.arange(i, j, dtype=np.float64)

    def old(i, j):
        if not P["old"]:
            return np.zeros(j - i)
        k = np.arange(i, j)
        return np.where((k // PER_BLK) % 16 == 3, -k.astype(np.float64), 0.0)

    def bad_slices(A, expect, step):
        # Slices of `A` whose elements differ from `expect`; reading slice by
        # slice keeps the reader within the RAM too.
        bad = []
        for i in range(0, N, step):
            j = min(i + step, N)
            if not np.array_equal(A[i:j], expect(i, j)):
                bad.append(i)
        return bad
""")

WRITER = PRELUDE + textwrap.dedent("""
    db = open_db(P["uri"])
    conn = db.open()
    root = conn.root()
    root["A"] = A = ZBigArray((N,), np.float64)
    transaction.commit()
    if P["old"]:
        # The previous commit: some blocks hold -k, the others are holes.
        for blk in range(3, N // PER_BLK, 16):
            i = blk * PER_BLK
            A[i:i + PER_BLK] = old(i, i + PER_BLK)
            transaction.commit()
    ram = A._fileh.ram
    out = {"capacity": ram.stats()["capacity"]}
    hwm0 = vmhwm()
    t0 = time.monotonic()
    used_max = 0
    for i in range(0, N, SLICE):
        j = min(i + SLICE, N)
        A[i:j] = new(i, j)
        used_max = max(used_max, ram.stats()["used"])
    out["write_s"] = time.monotonic() - t0
    out["hwm_writes"] = vmhwm() - hwm0
    # The first slice was spilled long ago: it reads back uncommitted.
    out["early_ok"] = bool(np.array_equal(A[:SLICE], new(0, SLICE)))
    used_max = max(used_max, ram.stats()["used"])
    t0 = time.monotonic()
    if P["end"] == "commit":
        transaction.commit()
    else:
        transaction.abort()
        # In this process too, the array is back at the previous commit.
        out["after_abort_bad"] = bad_slices(A, old, SLICE)
        used_max = max(used_max, ram.stats()["used"])
    out["end_s"] = time.monotonic() - t0
    out["used_max"] = used_max
    out["hwm_growth"] = vmhwm() - hwm0
    conn.close()
    db.close()
    print(json.dumps(out))
""")

READER = PRELUDE + textwrap.dedent("""
    db = open_db(P["uri"])
    A = db.open().root()["A"]
    assert A.shape == (N,), A.shape
    hwm0 = vmhwm()
    t0 = time.monotonic()
    bad = bad_slices(A, new if P["end"] == "commit" else old, 16 * MiB // 8)
    blktab = A.zfile.blktab
    out = {"bad": bad, "read_s": time.monotonic() - t0,
           "formats": sorted({type(blktab[k]).__name__
                               for k in (blktab.minKey(), blktab.maxKey())}),
           "used": A._fileh.ram.stats()["used"], "hwm_growth": vmhwm() - hwm0}
    db.close()
    print(json.dumps(out))
""")


def child(code: str, params: dict[str, Any], env: dict[str, str] | None = None,
          timeout: float = 240) -> dict[str, Any]:
    """Run `code` with `params` as ``P`` in a child under the 64 MiB RAM;
    return the JSON it printed last."""
    r = run_python(f"P = {params!r}\n" + code, env={**ENV, **(env or {})}, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def write_then_read(uri: str, nbytes: int, end: str, old: bool = False,
                    fmt: str = "ZBlk0") -> None:
    """The writer's transaction over `nbytes`, ended by `end` ("commit" or
    "abort"), then the check by a fresh reader; assert what both saw.
    (The reports are printed: ``pytest -s`` shows the measurements.)
    """
    env = {"ZBIGARRAY_ZBLK_FMT": fmt}
    params = {"uri": uri, "nbytes": nbytes, "end": end, "old": old}
    w = child(WRITER, params, env)
    print(f"\nwriter: {w}")
    assert w["capacity"] == RAM
    assert w["used_max"] <= RAM, w
    assert w["early_ok"], "a spilled slice did not read back its uncommitted values"
    if end == "abort":
        assert w["after_abort_bad"] == [], "after abort, the array is not the previous commit"
    r = child(READER, params, env)
    print(f"reader: {r}")
    assert r["bad"] == [], f"wrong data in slices starting at {r['bad'][:10]}"
    if end == "commit":
        assert r["formats"] == [fmt]
    assert r["used"] <= RAM
    assert r["hwm_growth"] <= BOUND, r
    # Memory last: a failure here means the data was right.
    assert w["hwm_writes"] <= BOUND, \
        f"peak memory grew by {w['hwm_writes'] / MiB:.0f} MiB during the writes"
    assert w["hwm_growth"] <= BOUND, \
        f"peak memory grew by {w['hwm_growth'] / MiB:.0f} MiB by the end of the " \
        f"transaction ({w['hwm_writes'] / MiB:.0f} MiB by the end of the writes)"


@pytest.mark.slow
def test_filestorage_commit_1g(tmp_path: Path) -> None:
    write_then_read(str(tmp_path / "data.fs"), GiB, "commit")


@pytest.mark.slow
def test_filestorage_abort_1g(tmp_path: Path) -> None:
    write_then_read(str(tmp_path / "data.fs"), GiB, "abort", old=True)


@pytest.mark.slow
def test_filestorage_zblk1(tmp_path: Path) -> None:
    write_then_read(str(tmp_path / "data.fs"), 256 * MiB, "commit", fmt="ZBlk1")


@pytest.mark.slow
@pytest.mark.zeo
def test_zeo_commit_1g(zeo_server: str) -> None:
    write_then_read(f"zeo://{zeo_server}", GiB, "commit")


@pytest.mark.slow
@pytest.mark.relstorage
def test_relstorage_commit_1g(postgres_server: str) -> None:
    write_then_read(empty_relstorage(postgres_server), GiB, "commit")


DASK = PRELUDE + textwrap.dedent("""
    import dask.array as da

    db = open_db(P["uri"])
    root = db.open().root()
    root["A"] = A = ZBigArray((N,), np.float64)
    transaction.commit()
    ram = A._fileh.ram
    hwm0 = vmhwm()
    src = da.arange(N, chunks=4 * MiB // 8, dtype=np.float64)
    t0 = time.monotonic()
    da.store(src, A, lock=P["lock"])
    out = {"store_s": time.monotonic() - t0, "used": ram.stats()["used"],
           "early_ok": bool(np.array_equal(A[:SLICE], new(0, SLICE)))}
    transaction.commit()
    out["hwm_growth"] = vmhwm() - hwm0
    db.close()
    print(json.dumps(out))
""")


@pytest.mark.slow
@pytest.mark.parametrize("lock", [True, False], ids=["lock", "nolock"])
def test_dask_store(tmp_path: Path, lock: bool) -> None:
    """dask's threads write the array at once (one at a time with its
    default lock; together without), spilling from whichever thread finds
    the RAM full."""
    params = {"uri": str(tmp_path / "data.fs"), "nbytes": 512 * MiB, "end": "commit",
              "old": False, "lock": lock}
    w = child(DASK, params)
    print(f"\nwriter: {w}")
    assert w["used"] <= RAM
    assert w["early_ok"]
    r = child(READER, params)
    print(f"reader: {r}")
    assert r["bad"] == [], f"wrong data in slices starting at {r['bad'][:10]}"
    assert w["hwm_growth"] <= BOUND, \
        f"peak memory grew by {w['hwm_growth'] / MiB:.0f} MiB by the end of the transaction"


def test_commit_keeps_no_copy_of_the_dirty_pages(tmp_path: Path) -> None:
    """A commit of 256 MiB of dirty pages (all in RAM) adds little to the
    process's peak memory: new ZBlk0 objects read their page when ZODB
    pickles them, one at a time, instead of each holding a copy from the
    store to the end of the commit (which added the whole 256 MiB)."""
    code = f"""
        import json
        import numpy as np, transaction
        from zbigarray import ZBigArray, open_db

        def vmhwm():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024

        db = open_db({str(tmp_path / "d.fs")!r})
        root = db.open().root()
        n = (256 << 20) // 8
        root["A"] = A = ZBigArray((n,), np.float64)
        transaction.commit()
        for lo in range(0, n, (16 << 20) // 8):     # no big temporary
            A[lo:lo + (16 << 20) // 8] = np.arange(lo, lo + (16 << 20) // 8, dtype=np.float64)
        before = vmhwm()
        transaction.commit()
        grown = vmhwm() - before
        s = float(db.open(transaction.TransactionManager()).root()["A"][:].sum())
        print(json.dumps({{"grown": grown, "sum": s}}))
    """
    r = run_python(code, env={"ZBIGARRAY_RAM_MAX": "1G"}, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    n = (256 * MiB) // 8
    assert out["sum"] == float(n * (n - 1) // 2)
    assert out["grown"] < 64 * MiB, out

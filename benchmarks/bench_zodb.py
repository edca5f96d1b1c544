"""ZODB layer throughput against what ZODB itself delivers: run
``python3 benchmarks/bench_zodb.py`` from the repo root.

A float64 ZBigArray (default 512 MiB, 2 MiB blocks) holding ``arange(N)``,
in a FileStorage in a temp dir, in each block format.  Four rows, each with
its baseline measured in the same run, every measurement in a fresh child
process (the RAM and ZODB's caches start empty), the two sides alternating:

1. **cold read**: the first full read (``A[lo:hi].sum()`` over 64 MiB
   slices) in a fresh process, the FileStorage in the OS page cache, vs a
   ``storage.load(oid)`` loop over the same records (the block objects; for
   ZBlk1 also its chunk-tree nodes and chunks), no unpickling;
2. **warm read**: the second full read in the same process vs the second
   full read of a ``numpy.memmap`` of a raw file with the same bytes;
3. **ZEO read**: the first full read through a ZEO server (``runzeo`` on
   127.0.0.1, serving the same FileStorage) vs a serial
   ``ClientStorage.load(oid)`` loop over the same records;
4. **fill + commit**: ``A[lo:hi] = values`` then ``transaction.commit()``,
   64 MiB per commit, into a new array in a new FileStorage, vs ZODB storing
   the same bytes as plain persistent objects (one ``bytes`` per 2 MiB block,
   in an LOBTree, same commits); beside it, a plain write + ``fsync`` of the
   same bytes per 64 MiB (recorded, not a baseline: it swings widely on VMs).

Rows marked "(record)" have no floor: cold read and fill again with a RAM
smaller than the array (``ZBIGARRAY_RAM_MAX=64M``), where pages reuse the
memory of reclaimed ones instead of fresh memory from the kernel, which
tells how much of the cost is the kernel's; and the raw write + fsync.
Also, per format: the commit of one changed element and how much the storage
grew for it.  ZBlk1 runs on a smaller array by default (``--zblk1-size``):
it is one record per 4 KiB, and its ZEO baseline loads them one by one.  Every read sums the data and checks the exact sum (all partial
sums are integers below 2**53); the fill is read back through another
connection and checked the same way.  Ratios: this / baseline throughput,
per run; the table gives medians over ``--repeat`` runs.  Not part of the
test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from persistent import Persistent

REPO = Path(__file__).resolve().parent.parent
SLICE = 64 << 20
BLKSIZE = 2 << 20
MiB = 1 << 20
SMALL_RAM = "64M"
"""RAM of the "(record) ... recycled" rows: smaller than the array, so that
pages reuse the memory of pages reclaimed before them instead of taking
fresh memory from the kernel; what is left is the cost beyond that."""


def _parse_size(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1].upper()] if s[-1].upper() in units else int(s)


# --------------------------------------------------------------- children
# Each runs in its own process, prints one JSON line, and times only the
# measured loop.

def _expected_sum(lo: int, hi: int) -> float:
    return float((hi - 1) * hi // 2 - (lo - 1) * lo // 2)


def _sum_slices(A, n: int) -> float:
    step = SLICE // 8
    s = 0.0
    for lo in range(0, n, step):
        s += float(A[lo:min(n, lo + step)].sum())
    return s


def _check(s: float, n: int, what: str) -> None:
    if s != _expected_sum(0, n):
        raise SystemExit(f"{what}: sum {s!r} != {_expected_sum(0, n)!r}")


def _new_array(path: str, n: int):
    """A new database at `path` with an empty committed array ``root['A']``."""
    import numpy as np
    import transaction

    from zbigarray.bigarray.array_zodb import ZBigArray
    from zbigarray.storage import open_db

    db = open_db(path)
    root = db.open().root()
    root["A"] = A = ZBigArray(n, np.float64, blksize=BLKSIZE)
    transaction.commit()
    return db, A


def _slices(n: int) -> list:
    """``arange(n)`` as float64, cut in the slices written per commit."""
    import numpy as np

    step = SLICE // 8
    return [np.arange(lo, min(n, lo + step), dtype=np.float64) for lo in range(0, n, step)]


def _two_reads(A, n: int, what: str) -> dict:
    """Time a first and a second full read of `A`, checking both sums."""
    t0 = time.perf_counter()
    s = _sum_slices(A, n)
    t1 = time.perf_counter()
    _check(s, n, f"{what}, first read")
    s = _sum_slices(A, n)
    t2 = time.perf_counter()
    _check(s, n, f"{what}, second read")
    return {"cold": t1 - t0, "warm": t2 - t1}


def child_make(path: str, n: int) -> dict:
    """Create the array read by the other rows (not timed)."""
    import transaction

    db, A = _new_array(path, n)
    lo = 0
    for v in _slices(n):
        A[lo:lo + len(v)] = v
        transaction.commit()
        lo += len(v)
    db.close()
    return {}


def child_read(uri: str, n: int) -> dict:
    """Cold then warm full read of root['A'] in this fresh process."""
    from zbigarray.storage import open_db

    db = open_db(uri)
    A = db.open().root()["A"]
    A.shape                                     # the header: not the data
    times = _two_reads(A, n, "ZBigArray")
    db.close()
    return times


def _block_records(A) -> list[bytes]:
    """Oids of the records holding the array's blocks, in block order."""
    from zbigarray.storage.file_zodb import ZBigFile

    zfile = A.zfile
    oids = []
    for blk in zfile.blktab.keys():
        path: list = []
        deps: list = []
        ZBigFile.blkdeps(zfile, blk, path, deps)
        oids.extend(o._p_oid for o in deps)
    return oids


def child_loadloop(uri: str, n: int) -> dict:
    """Time ``storage.load(oid)`` over the block records, no unpickling."""
    from zbigarray.storage import open_db

    db = open_db(uri)
    conn = db.open()
    oids = _block_records(conn.root()["A"])
    conn.close()
    storage = db.storage
    t0 = time.perf_counter()
    nbytes = 0
    for oid in oids:
        nbytes += len(storage.load(oid)[0])
    t = time.perf_counter() - t0
    db.close()
    return {"load": t, "nrecords": len(oids), "nbytes": nbytes}


def child_memmap(raw: str, n: int) -> dict:
    """Cold then warm full read of a numpy.memmap of the raw bytes."""
    import numpy as np

    return _two_reads(np.memmap(raw, np.float64, "r"), n, "numpy.memmap")


def child_fill(path: str, n: int) -> dict:
    """Fill + commit a new ZBigArray, 64 MiB per commit; then check it."""
    import transaction

    db, A = _new_array(path, n)
    step = SLICE // 8
    values = _slices(n)
    t0 = time.perf_counter()
    for i, lo in enumerate(range(0, n, step)):
        A[lo:lo + step] = values[i]
        transaction.commit()
    t = time.perf_counter() - t0
    del values
    # Read back through another connection (its own handle: from the storage).
    other = A._p_jar.db().open(transaction.TransactionManager())
    _check(_sum_slices(other.root()["A"], n), n, "fill read back")
    other.close()
    # One changed element in a full block: commit time, storage growth.
    before = os.path.getsize(path)
    t1 = time.perf_counter()
    A[n // 2 + 12345] = -1.0
    transaction.commit()
    t_one = time.perf_counter() - t1
    grown = os.path.getsize(path) - before
    db.close()
    return {"fill": t, "one_commit": t_one, "one_grown": grown}


def child_fillplain(path: str, n: int) -> dict:
    """The same bytes as plain persistent objects in an LOBTree."""
    import transaction
    from BTrees.LOBTree import LOBTree

    from zbigarray.storage import open_db

    db = open_db(path)
    root = db.open().root()
    root["T"] = T = LOBTree()
    transaction.commit()
    step = SLICE // 8
    per_blk = BLKSIZE // 8
    values = _slices(n)
    t0 = time.perf_counter()
    for i, lo in enumerate(range(0, n, step)):
        v = values[i]
        for j in range(0, len(v), per_blk):
            T[(lo + j) // per_blk] = Block(v[j:j + per_blk].tobytes())
        transaction.commit()
    t = time.perf_counter() - t0
    db.close()
    return {"fill": t}


def child_rawwrite(path: str, n: int) -> dict:
    """write + fsync of the same bytes, one fsync per 64 MiB."""
    values = _slices(n)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        for v in values:
            os.write(fd, v)
            os.fsync(fd)
        t = time.perf_counter() - t0
    finally:
        os.close(fd)
    return {"write": t}


class Block(Persistent):
    """The baseline's plain persistent object: one block's bytes (stored as
    ``__main__.Block`` in a database thrown away after the run)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


CHILDREN = {"make": child_make, "read": child_read, "loadloop": child_loadloop,
            "memmap": child_memmap, "fill": child_fill, "fillplain": child_fillplain,
            "rawwrite": child_rawwrite}


def run_child(mode: str, arg: str, n: int, fmt: str = "ZBlk0", ram: str | None = None) -> dict:
    """Run child `mode` in a fresh interpreter; its JSON result.  `ram`:
    its ``ZBIGARRAY_RAM_MAX`` (None: the default, bigger than the array)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZBIGARRAY_ZBLK_FMT": fmt}
    env.pop("ZBIGARRAY_RAM_MAX", None)
    if ram is not None:
        env["ZBIGARRAY_RAM_MAX"] = ram
    r = subprocess.run([sys.executable, __file__, "--child", mode, arg, str(n)], cwd=REPO,
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"child {mode} {arg} failed:\n{r.stdout}{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------- ZEO server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def zeo_server(path: Path) -> Iterator[str]:
    """``runzeo`` serving FileStorage `path` on a free port of 127.0.0.1,
    for the duration of the block; yields its address."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ZEO.runzeo", "-a", f"127.0.0.1:{port}",
                             "-f", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"runzeo exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("runzeo did not listen within 30 s") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()         # the data is thrown away: no need to shut down cleanly
        proc.wait()


# --------------------------------------------------------------- parent

def _rate(nbytes: int, t: float) -> str:
    r = nbytes / t
    return f"{r / 1e9:.2f} GB/s" if r >= 1e9 else f"{r / MiB:.0f} MiB/s"


class Table:
    """Rows of (measure, this, baseline, ratios) over repeated runs."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, str]] = []

    def add(self, fmt: str, measure: str, nbytes: int, ours: list[float],
            base_name: str, base_nbytes: int, base: list[float], floor: str) -> None:
        ratios = sorted((nbytes / a) / (base_nbytes / b) for a, b in zip(ours, base))
        med = statistics.median(ratios)
        spread = f" ({ratios[0]:.3g}–{ratios[-1]:.3g})" if len(ratios) > 1 else ""
        self.rows.append((fmt, measure, _rate(nbytes, statistics.median(ours)),
                          f"{base_name}: {_rate(base_nbytes, statistics.median(base))}",
                          f"{med:.3g}×{spread}", floor))

    def note(self, fmt: str, measure: str, value: str) -> None:
        self.rows.append((fmt, measure, value, "", "", ""))

    def print(self) -> None:
        print("| format | measure | this (median) | baseline, same run (median) "
              "| ratio: median (min–max) | floor |")
        print("|---|---|---:|---|---|---|")
        for row in self.rows:
            print("| " + " | ".join(row) + " |")


def bench_format(fmt: str, n: int, repeat: int, rows: set[str], tmp: Path,
                 table: Table) -> None:
    nbytes = n * 8
    src = tmp / f"{fmt}.fs"
    run_child("make", str(src), n, fmt)
    uri = str(src)
    if rows & {"cold", "warm"}:
        raw = tmp / f"raw-{n}.bin"
        if not raw.exists():
            import numpy as np
            np.arange(n, dtype=np.float64).tofile(raw)
        # Warm the OS page cache for both files first.
        run_child("read", uri, n, fmt)
        run_child("memmap", str(raw), n)
        reads, loads, maps, recycled = [], [], [], []
        for _ in range(repeat):
            reads.append(run_child("read", uri, n, fmt))
            loads.append(run_child("loadloop", uri, n, fmt))
            maps.append(run_child("memmap", str(raw), n))
            recycled.append(run_child("read", uri, n, fmt, ram=SMALL_RAM))
        rec = loads[0]["nbytes"]
        base = f"storage.load loop ({loads[0]['nrecords']} records)"
        if "cold" in rows:
            table.add(fmt, "full read, fresh process, 64 MiB slices", nbytes,
                      [r["cold"] for r in reads], base, rec,
                      [r["load"] for r in loads], "≥ 0.3×")
            table.add(fmt, f"(record) the same, RAM {SMALL_RAM}: page memory recycled",
                      nbytes, [r["cold"] for r in recycled], base, rec,
                      [r["load"] for r in loads], "—")
        if "warm" in rows:
            table.add(fmt, "second full read, same process", nbytes,
                      [r["warm"] for r in reads], "numpy.memmap, second read", nbytes,
                      [m["warm"] for m in maps], "≥ 0.7×")
    if "zeo" in rows:
        with zeo_server(src) as addr:
            zuri = f"zeo://{addr}"
            run_child("loadloop", zuri, n, fmt)     # the server's OS cache
            reads, loads = [], []
            for _ in range(repeat):
                reads.append(run_child("read", zuri, n, fmt))
                loads.append(run_child("loadloop", zuri, n, fmt))
        table.add(fmt, "full read through ZEO on 127.0.0.1", nbytes,
                  [r["cold"] for r in reads], "serial ClientStorage.load loop",
                  loads[0]["nbytes"], [r["load"] for r in loads], "≥ 1.0×")
    if "fill" in rows:
        fills, plains, raws, recycled = [], [], [], []

        def fresh(mode: str, name: str, **kw: str) -> dict:
            for p in tmp.glob("fill*"):
                p.unlink()
            return run_child(mode, str(tmp / name), n, fmt, **kw)

        for _ in range(repeat):
            fills.append(fresh("fill", "fill.fs"))
            plains.append(fresh("fillplain", "fillplain.fs"))
            raws.append(fresh("rawwrite", "fillraw.bin"))
            recycled.append(fresh("fill", "fill.fs", ram=SMALL_RAM))
        for p in tmp.glob("fill*"):
            p.unlink()
        table.add(fmt, "fill + commit, 64 MiB per commit", nbytes,
                  [f["fill"] for f in fills], "plain persistent objects in an LOBTree",
                  nbytes, [p["fill"] for p in plains], "≥ 1.0×")
        table.add(fmt, f"(record) the same, RAM {SMALL_RAM}: page memory recycled", nbytes,
                  [f["fill"] for f in recycled], "plain persistent objects in an LOBTree",
                  nbytes, [p["fill"] for p in plains], "—")
        table.add(fmt, "(record) write + fsync per 64 MiB", nbytes,
                  [r["write"] for r in raws], "plain persistent objects in an LOBTree",
                  nbytes, [p["fill"] for p in plains], "—")
        one = statistics.median(f["one_commit"] for f in fills)
        grown = statistics.median(f["one_grown"] for f in fills)
        table.note(fmt, "commit of one changed element", f"{one * 1e3:.1f} ms, "
                   f"storage +{grown:.0f} B")
    src.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="512M", help="array size (default 512M)")
    ap.add_argument("--zblk1-size", default="128M",
                    help="array size for ZBlk1 (default 128M: one object per 4 KiB)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row (default 3)")
    ap.add_argument("--formats", default="ZBlk0,ZBlk1")
    ap.add_argument("--rows", default="cold,warm,zeo,fill",
                    help="subset of cold,warm,zeo,fill")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, arg, n = args.child
        sys.path.insert(0, str(REPO))
        print(json.dumps(CHILDREN[mode](arg, int(n))))
        return
    rows = set(args.rows.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench_zodb-"))
    table = Table()
    try:
        print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"load average {os.getloadavg()[0]:.1f}, repeat {args.repeat}", flush=True)
        for fmt in args.formats.split(","):
            size = _parse_size(args.zblk1_size if fmt == "ZBlk1" else args.size)
            print(f"# {fmt}: {size // MiB} MiB", flush=True)
            bench_format(fmt, size // 8, args.repeat, rows, tmp, table)
        print(f"# load average at the end {os.getloadavg()[0]:.1f}")
        table.print()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

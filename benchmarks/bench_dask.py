"""Dask over a shared database: run ``python benchmarks/bench_dask.py`` from the
repo root (needs ``zbigarray[dask]`` and ZEO).

A 1 GiB float64 ZBigArray (2 MiB blocks) in a FileStorage served by a ZEO
server on 127.0.0.1 (started here).  ``x = A.to_dask()`` (default chunks), then
``x.sum()`` timed with:

- the threaded scheduler in this process (one snapshot connection shared by
  the threads);
- a ``dask.distributed.LocalCluster`` of 1 and of 2 worker processes (one
  thread each), each reading its chunks from the ZEO server.

Each is run cold (first computation: every block comes from the server) and
warm (second: the workers' pages are still in their RAM).  Baselines of the
same run: NumPy's sum of the same 1 GiB in RAM, and the storage's own raw
loads (a serial ``ClientStorage.load`` loop over the array's block records,
no unpickling) — the ratios say what the dask path costs over them.  Every
sum is checked exact.  Medians of ``--repeat`` runs.  Not part of the test
suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZE = 1 << 30
N = SIZE // 8


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def fill(uri: str) -> float:
    """Store A = arange(N) in 64 MiB slices; return the exact sum."""
    import transaction

    from zbigarray import ZBigArray, open_db

    db = open_db(uri)
    root = db.open().root()
    root["A"] = A = ZBigArray((N,), np.float64)
    transaction.commit()
    step = (64 << 20) // 8
    for lo in range(0, N, step):
        A[lo:lo + step] = np.arange(lo, lo + step, dtype=np.float64)
        transaction.commit()
    db.close()
    return float(N) * (N - 1) / 2


def raw_loads(uri: str) -> float:
    """Seconds of a serial storage.load loop over the array's block records."""
    from zbigarray import open_db

    db = open_db(uri)
    A = db.open().root()["A"]
    oids = []
    for zblk in A.zfile.blktab.values():
        oids.append(zblk._p_oid)
    storage = db.storage
    t, _ = timed(lambda: [storage.load(oid) for oid in oids])
    db.close()
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    import dask
    from distributed import Client, LocalCluster

    from tests.storage.conftest import start_zeo, stop_zeo
    from zbigarray import open_db

    tmp = Path(tempfile.mkdtemp(prefix="bench_dask-"))
    proc, addr = start_zeo(tmp / "zeo.fs")
    uri = f"zeo://{addr}"
    rows: dict[str, list[float]] = {}
    try:
        want = fill(uri)
        ram = np.arange(N, dtype=np.float64)
        for _ in range(args.repeat):
            rows.setdefault("numpy sum in RAM", []).append(timed(ram.sum)[0])
            rows.setdefault("storage.load loop (ZEO)", []).append(raw_loads(uri))
            db = open_db(uri)
            A = db.open().root()["A"]
            for label, nworkers in (("threads", 0), ("1 worker", 1), ("2 workers", 2)):
                if nworkers == 0:
                    x = A.to_dask()
                    with dask.config.set(scheduler="threads"):
                        for phase in ("cold", "warm"):
                            t, got = timed(lambda: x.sum().compute())
                            assert got == want, (got, want)
                            rows.setdefault(f"dask, {label}, {phase}", []).append(t)
                    continue
                with LocalCluster(n_workers=nworkers, threads_per_worker=1,
                                  host="127.0.0.1", dashboard_address=":0") as cluster, \
                        Client(cluster) as client:
                    x = A.to_dask()
                    for phase in ("cold", "warm"):
                        t, got = timed(lambda: client.compute(x.sum()).result())
                        assert got == want, (got, want)
                        rows.setdefault(f"dask, {label}, {phase}", []).append(t)
            db.close()
    finally:
        stop_zeo(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    base_ram = statistics.median(rows["numpy sum in RAM"])
    base_load = statistics.median(rows["storage.load loop (ZEO)"])
    print(f"\n1 GiB float64 ZBigArray over ZEO on 127.0.0.1, {os.cpu_count()} CPUs, "
          f"median of {args.repeat}; load average {os.getloadavg()[0]:.1f}\n")
    print("| measure | time | GB/s | × NumPy in RAM | × storage.load loop |")
    print("|---|---|---|---|---|")
    for label, times in rows.items():
        t = statistics.median(times)
        print(f"| {label} | {t:.2f} s | {SIZE / t / 1e9:.2f} | {base_ram / t:.3f} | "
              f"{base_load / t:.2f} |")


if __name__ == "__main__":
    main()

"""A stand-in wendelin.core for the tests: a minimal ``wendelin`` package with
its class paths and state layouts (as described by
``/work/shared/fixtures/wendelin-0.13/README.md`` and checked against those
databases by the tests), written into a directory that only child processes
put on ``sys.path``.

It plays wendelin.core in two roles: as a writer of databases in its layout
(variants the fixture files lack: holes, appends, structured dtypes, old
headers and block class names), and as a reader checking that what
zbigarray wrote into such a database is still readable by it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.common import REPO

FIXTURES = Path("/work/shared/fixtures/wendelin-0.13")

_FILE_ZODB = '''
from BTrees.IOBTree import IOBTree
from BTrees.LOBTree import LOBTree
from persistent import Persistent


class ZBlk0(Persistent):
    def __getstate__(self):
        return self.blkdata

    def __setstate__(self, state):
        self.blkdata = state


class ZBlk(ZBlk0):
    """The name early versions stored ZBlk0 under."""


class ZData(Persistent):
    __slots__ = ("data",)

    def __getstate__(self):
        return self.data

    def __setstate__(self, state):
        self.data = state


class ZBlk1(Persistent):
    def __getstate__(self):
        return self.chunktab

    def __setstate__(self, state):
        self.chunktab = state


class ZBigFile(Persistent):
    def __init__(self, blksize):
        self.blksize, self.blktab = blksize, LOBTree()

    def __getstate__(self):
        return (self.blksize, self.blktab)

    def __setstate__(self, state):
        self.blksize, self.blktab = state
'''

_ARRAY_ZODB = '''
from persistent import Persistent

from wendelin.bigarray import BigArray


class ZBigArray(BigArray, Persistent):
    __slots__ = ("zfile",)
'''

SOURCES = {
    "wendelin/__init__.py": "",
    "wendelin/bigfile/__init__.py": "",
    "wendelin/bigfile/file_zodb.py": _FILE_ZODB,
    "wendelin/bigarray/__init__.py": "class BigArray(object):\n    pass\n",
    "wendelin/bigarray/array_zodb.py": _ARRAY_ZODB,
}

BLKSIZE = 2 * 1024 * 1024
"""wendelin.core's block size (its RAM page size)."""


def install(where: Path) -> Path:
    """Write the package under `where`; return the directory to put on
    ``sys.path``."""
    for rel, text in SOURCES.items():
        path = where / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return where


def run_with_fake(fake: Path, code: str, *args: str, timeout: float = 120) -> Any:
    """Run `code` in a child Python with the fake wendelin importable (and
    the repository, for this module); return the JSON it prints last."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def digest(a: Any) -> str:
    """The manifest's digest of an array: sha256 of its C-order bytes."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


# -- run in the child, with the fake wendelin importable -----------------------

def write_array(root: Any, key: str, a: Any, order: str = "C", fmt: str = "ZBlk0",
                holes: tuple[int, ...] = (), header: tuple[str, ...] = (
                    "_shape", "_dtype", "_order", "_stridev")) -> None:
    """Store `a` under `key` as wendelin.core would: a ZBigArray whose file
    holds the array's bytes in `order`, blocks in `fmt` (``ZBlk0``,
    ``ZBlk1``, or ``ZBlk``, the early name of ZBlk0), blocks `holes`
    missing, and only the header keys `header`."""
    import numpy as np
    from wendelin.bigarray.array_zodb import ZBigArray
    from wendelin.bigfile.file_zodb import ZBigFile

    A = ZBigArray.__new__(ZBigArray)
    attrs = {"_shape": a.shape, "_dtype": a.dtype, "_order": order,
             "_stridev": _strides(a.shape, a.dtype.itemsize, order)}
    for k in header:
        setattr(A, k, attrs[k])
    A.zfile = ZBigFile(BLKSIZE)
    store_bytes(A.zfile, np.asarray(a).tobytes(order=order), fmt, holes)
    root[key] = A


def grow(A: Any, a: Any, fmt: str = "ZBlk0") -> None:
    """Append along the major axis as wendelin.core does: a new header,
    and the blocks covering the new bytes rewritten (C order only here)."""
    A._shape = a.shape
    A._stridev = _strides(a.shape, a.dtype.itemsize, A._order)
    store_bytes(A.zfile, a.tobytes(order="C"), fmt, ())


def store_bytes(zfile: Any, data: bytes, fmt: str, holes: tuple[int, ...]) -> None:
    """Write `data` into `zfile`'s blocks (all but `holes`)."""
    from BTrees.IOBTree import IOBTree
    from wendelin.bigfile import file_zodb

    for blk in range(0, (len(data) + BLKSIZE - 1) // BLKSIZE):
        if blk in holes:
            continue
        chunk = data[blk * BLKSIZE:(blk + 1) * BLKSIZE].rstrip(b"\0")
        if fmt == "ZBlk1":
            zblk = file_zodb.ZBlk1()
            zblk.chunktab = IOBTree()
            for off in range(0, len(chunk), 4096):
                part = chunk[off:off + 4096].rstrip(b"\0")
                if part:
                    zdata = file_zodb.ZData()
                    zdata.data = part
                    zblk.chunktab[off] = zdata
        else:
            zblk = getattr(file_zodb, fmt)()
            zblk.blkdata = chunk
        zfile.blktab[blk] = zblk


def read_array(A: Any) -> Any:
    """An array stored by wendelin.core, read through its classes only
    (raises if any object on the way is not one of them)."""
    import numpy as np
    from wendelin.bigarray.array_zodb import ZBigArray
    from wendelin.bigfile import file_zodb

    assert type(A) is ZBigArray, type(A)
    assert type(A.zfile) is file_zodb.ZBigFile, type(A.zfile)
    blksize = A.zfile.blksize
    order = getattr(A, "_order", "C")
    n = int(np.prod(A._shape)) * A._dtype.itemsize
    buf = bytearray(n)
    for blk in range((n + blksize - 1) // blksize):
        zblk = A.zfile.blktab.get(blk)
        if zblk is None:
            continue
        if type(zblk) is file_zodb.ZBlk1:
            block = bytearray(blksize)
            for off, zdata in zblk.chunktab.items():
                assert type(zdata) is file_zodb.ZData, type(zdata)
                block[off:off + len(zdata.data)] = zdata.data
        else:
            assert type(zblk) in (file_zodb.ZBlk0, file_zodb.ZBlk), type(zblk)
            block = zblk.blkdata
        part = bytes(block[:blksize])[:n - blk * blksize]
        buf[blk * blksize:blk * blksize + len(part)] = part
    return np.frombuffer(bytes(buf), A._dtype).reshape(A._shape, order=order)


def _strides(shape: tuple[int, ...], itemsize: int, order: str) -> tuple[int, ...]:
    import math

    return tuple(itemsize * math.prod(shape[i + 1:] if order == "C" else shape[:i])
                 for i in range(len(shape)))


def variants() -> dict[str, Any]:
    """The arrays :func:`write_variants` stores: key -> (array, order)."""
    import numpy as np

    rng = np.random.default_rng(11)
    rec = np.zeros(200_000, [("x", "<i4"), ("y", "<f8"), ("tag", "S3")])
    rec["x"] = np.arange(len(rec))
    rec["y"] = rng.standard_normal(len(rec))
    rec["tag"] = b"abc"
    holes = rng.standard_normal(700_000)
    holes[BLKSIZE // 8:3 * BLKSIZE // 8] = 0          # blocks 1 and 2
    return {
        "structured": (rec, "C"),
        "holes": (holes, "C"),
        "grown": (np.arange(1_200_000, dtype=np.int32).reshape(-1, 3), "C"),
        "no_order": (rng.integers(0, 1000, (600, 1000), dtype=np.int64), "C"),
        "no_stridev": (rng.integers(0, 255, (50, 60, 700), dtype=np.uint8), "F"),
        "old_zblk": (np.arange(300_000, dtype=np.float64), "C"),
    }


WRITE_VARIANTS = """
import sys, transaction, ZODB
from ZODB.FileStorage import FileStorage
from tests.storage import wendelin_fake as w
db = ZODB.DB(FileStorage(sys.argv[1]))
root = db.open().root()
v = w.variants()
w.write_array(root, "structured", *v["structured"])
w.write_array(root, "holes", *v["holes"], fmt="ZBlk1", holes=(1, 2))
g = v["grown"][0]
w.write_array(root, "grown", g[:100_000], fmt="ZBlk1")
transaction.commit()
for stop in (250_000, 400_000):
    w.grow(root["grown"], g[:stop], fmt="ZBlk1")
    transaction.commit()
w.write_array(root, "no_order", *v["no_order"], header=("_shape", "_dtype", "_stridev"))
w.write_array(root, "no_stridev", *v["no_stridev"], header=("_shape", "_dtype", "_order"))
w.write_array(root, "old_zblk", *v["old_zblk"], fmt="ZBlk",
              header=("_shape", "_dtype"))
transaction.commit()
db.close()
print("{}")
"""

READ_ALL = """
import json, sys, ZODB
from ZODB.FileStorage import FileStorage
from tests.storage import wendelin_fake as w
db = ZODB.DB(FileStorage(sys.argv[1], read_only=True))
root = db.open().root()
print(json.dumps({k: w.digest(w.read_array(root[k])) for k in sys.argv[2:]}))
"""

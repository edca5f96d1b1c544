"""``zbigarray export`` and ``import``: arrays out to .npy/.h5/.zarr and
back, streamed with bounded memory."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli.conftest import A_DATA, assert_one_line_error, zb
from tests.common import REPO, run_on_terminal
from zbigarray import open_db


def _read(db_path: Path, path: str) -> tuple[np.ndarray, dict, str]:
    db = open_db(db_path)
    try:
        A = db.open().root()
        for part in path.split("/"):
            A = A[part]
        return np.array(A[...]), A.attrs.asdict(), A.order
    finally:
        db.close()


def test_npy_round_trip_keeps_data_and_order(sample_db: Path, tmp_path: Path) -> None:
    for path in ("a", "grp/b", "grp/z"):
        out = tmp_path / f"{path.replace('/', '_')}.npy"
        r = zb("export", sample_db, path, out)
        assert r.returncode == 0, r.stderr
        want, attrs, order = _read(sample_db, path)
        got = np.load(out)
        assert np.array_equal(got, want) and got.dtype == want.dtype
        assert got.flags[f"{order}_CONTIGUOUS"]       # written in its own order
        # .npy has no place for attrs, and says so.
        assert ("no place for attrs" in r.stderr) == bool(attrs)
        r = zb("import", sample_db, f"back/{path}", out)
        assert r.returncode == 0, r.stderr
        back, _, back_order = _read(sample_db, f"back/{path}")
        assert np.array_equal(back, want) and back_order == order


def test_structured_dtype_round_trip(tmp_path: Path) -> None:
    dt = np.dtype([("t", "<f8"), ("n", "<i2"), ("tag", "S3")])
    a = np.zeros(5000, dt)
    a["t"] = np.arange(5000)
    a["tag"] = b"abc"
    np.save(tmp_path / "in.npy", a)
    db = tmp_path / "new" / "data.fs"       # import creates the database
    assert zb("import", db, "s", tmp_path / "in.npy").returncode == 0
    r = zb("export", db, "s", tmp_path / "out.npy")
    assert r.returncode == 0, r.stderr
    got = np.load(tmp_path / "out.npy")
    assert got.dtype == dt and np.array_equal(got, a)


def test_hdf5_round_trip_with_attrs(sample_db: Path, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="h5py is not installed (the [test] extra)")
    out = tmp_path / "a.h5"
    r = zb("export", sample_db, "a", out)
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r+") as f:
        assert np.array_equal(f["a"][...], A_DATA)
        assert f["a"].attrs["units"] == "m/s" and f["a"].attrs["scale"] == 0.5
        f["a"].attrs["extra"] = np.arange(3)
    r = zb("import", sample_db, "from_h5", out)
    assert r.returncode == 0, r.stderr
    got, attrs, _ = _read(sample_db, "from_h5")
    assert np.array_equal(got, A_DATA)
    assert attrs == {"units": "m/s", "scale": 0.5, "extra": [0, 1, 2]}

    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["x"] = np.zeros(3)
        f["g/y"] = np.ones((2, 2))
    assert_one_line_error(zb("import", sample_db, "y", tmp_path / "two.h5"), "import",
                          "2 datasets", "--dataset")
    r = zb("import", sample_db, "y", tmp_path / "two.h5", "--dataset", "g/y")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(_read(sample_db, "y")[0], np.ones((2, 2)))


def test_zarr_round_trip_with_attrs(sample_db: Path, tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr", reason="zarr is not installed (optional format)")
    out = tmp_path / "b.zarr"
    r = zb("export", sample_db, "grp/b", out)
    assert r.returncode == 0, r.stderr
    want = _read(sample_db, "grp/b")[0]
    z = zarr.open_array(str(out), mode="r+")
    assert np.array_equal(z[...], want)
    z.attrs["note"] = {"from": "zarr"}
    r = zb("import", sample_db, "from_zarr", out)
    assert r.returncode == 0, r.stderr
    got, attrs, _ = _read(sample_db, "from_zarr")
    assert np.array_equal(got, want) and attrs == {"note": {"from": "zarr"}}


def test_export_and_import_refuse_to_overwrite(sample_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.npy"
    out.write_bytes(b"precious")
    assert_one_line_error(zb("export", sample_db, "a", out), "export", "exists", "--force")
    assert out.read_bytes() == b"precious"
    assert zb("export", sample_db, "a", out, "--force").returncode == 0
    assert np.array_equal(np.load(out), A_DATA)
    assert_one_line_error(zb("import", sample_db, "a", out), "import", "a: exists")
    assert_one_line_error(zb("import", sample_db, "a/x", out), "import", "a is not a group")


def test_failed_export_leaves_no_file(sample_db: Path, tmp_path: Path) -> None:
    assert_one_line_error(zb("export", sample_db, "nothing", tmp_path / "x.npy"), "export",
                          "no such array")
    assert_one_line_error(zb("export", sample_db, "a", tmp_path / "x.csv"), "export",
                          "unknown format '.csv'")
    assert not [name for name in os.listdir(tmp_path) if not name.startswith("data.fs")]


MEASURE = """
import sys
from zbigarray.cli import main
rc = main(sys.argv[1:])
status = open("/proc/self/status").read()
hwm = [line for line in status.splitlines() if line.startswith("VmHWM:")][0]
print(int(hwm.split()[1]) * 1024, file=sys.stderr)
sys.exit(rc)
"""


def _peak(*args: str | Path) -> int:
    """Run the command line in a child; its peak resident memory in bytes."""
    env = {k: v for k, v in os.environ.items() if k != "ZBIGARRAY_RAM_MAX"}
    r = subprocess.run([sys.executable, "-c", MEASURE, *map(str, args)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return int(r.stderr.splitlines()[-1])


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.subprocess
def test_memory_stays_bounded_for_an_array_bigger_than_it(tmp_path: Path) -> None:
    n = 48 << 20                     # 384 MiB of float64
    src = np.lib.format.open_memmap(tmp_path / "in.npy", mode="w+", dtype=np.float64,
                                    shape=(n // 1024, 1024))
    for lo in range(0, src.shape[0], 4096):
        src[lo:lo + 4096] = np.arange(lo, min(lo + 4096, src.shape[0]))[:, None]
    src.flush()
    del src
    db = tmp_path / "data.fs"
    open_db(db).close()
    base = _peak("ls", db)          # the interpreter with everything imported
    peak_import = _peak("import", db, "big", tmp_path / "in.npy")
    peak_export = _peak("export", db, "big", tmp_path / "out.npy")
    assert _sha(tmp_path / "out.npy") == _sha(tmp_path / "in.npy")
    # The page RAM (64 MiB by default here), counted twice by the resident
    # set (the RAM's own mapping and the array's, docs/bigarray.md), a few
    # 8 MiB pieces and ZODB's buffers of the one transaction (ZODB 5.8, the
    # lowest tested, keeps ~25 MiB more than 6.x): well under the array's
    # 384 MiB, and measured not to grow with it (768 MiB: +12 MiB).
    limit = base + (192 << 20)
    assert peak_import < limit, (peak_import >> 20, base >> 20)
    assert peak_export < limit, (peak_export >> 20, base >> 20)


@pytest.mark.subprocess
def test_progress_bar_only_on_a_terminal(sample_db: Path, tmp_path: Path) -> None:
    r = zb("export", sample_db, "a", tmp_path / "piped.npy")
    assert r.returncode == 0 and "\r" not in r.stderr and "[" not in r.stderr
    returncode, tty = run_on_terminal([sys.executable, "-m", "zbigarray", "export",
                                       str(sample_db), "grp/b", str(tmp_path / "tty.npy")])
    assert returncode == 0
    assert "exporting [" + "#" * 30 + "] 100%" in tty.decode(), tty

"""Databases written by wendelin.core: read bit-exactly, changed, and still
readable by wendelin.core afterwards (``zbigarray.storage.wendelin_compat``).

The databases: the fixture files written by wendelin.core 0.13, and variants
written by the stand-in wendelin of :mod:`tests.storage.wendelin_fake` (holes,
appends, structured dtypes, old headers).  What wendelin.core can read is
checked twice: by the class paths in the stored pickles, and by reading the
arrays back through the stand-in wendelin's classes in a child process.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import transaction
import ZODB
import zodburi
from persistent import Persistent
from ZODB.FileStorage import FileStorage
from ZODB.serialize import get_refs
from ZODB.utils import get_pickle_metadata

from tests.common import REPO
from tests.storage import wendelin_fake
from tests.storage.conftest import empty_relstorage, start_zeo, stop_zeo
from tests.storage.wendelin_fake import FIXTURES, digest
from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.storage import open_db
from zbigarray.storage.file_zodb import ZBigFile
from zbigarray.storage.wendelin_compat import wendelin_header, wendelin_strides

MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
FIXTURE_FILES = sorted(MANIFEST)


def gunzip_fixture(name: str, dest: Path) -> Path:
    """Copy fixture database `name` (gunzipped) to `dest`; return its path."""
    with gzip.open(FIXTURES / f"{name}.gz") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    return dest


@pytest.fixture(scope="session")
def fake_wendelin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the stand-in ``wendelin`` package."""
    return wendelin_fake.install(tmp_path_factory.mktemp("fake-wendelin"))


@pytest.fixture(scope="session")
def variants_master(tmp_path_factory: pytest.TempPathFactory, fake_wendelin: Path) -> Path:
    """A database of the variants, written once by the stand-in wendelin."""
    path = tmp_path_factory.mktemp("variants") / "variants.fs"
    wendelin_fake.run_with_fake(fake_wendelin, wendelin_fake.WRITE_VARIANTS, str(path))
    return path


@pytest.fixture
def variants_fs(variants_master: Path, tmp_path: Path) -> Path:
    """A copy of the variants database for one test."""
    return Path(shutil.copy(variants_master, tmp_path / "variants.fs"))


def records_since(path: Path, ntxn: int) -> list[bytes]:
    """Data records of the transactions of FileStorage `path` after the first `ntxn`."""
    fs = FileStorage(str(path), read_only=True)
    try:
        return [rec.data for i, txn in enumerate(fs.iterator()) if i >= ntxn
                for rec in txn if rec.data is not None]
    finally:
        fs.close()


def class_paths(record: bytes) -> list[str]:
    """The record's class and the classes its references name, as dotted paths."""
    paths = [".".join(get_pickle_metadata(record))]
    paths += [".".join(klass) for _, klass in get_refs(record) if klass is not None]
    return paths


def ntransactions(path: Path) -> int:
    fs = FileStorage(str(path), read_only=True)
    try:
        return sum(1 for _ in fs.iterator())
    finally:
        fs.close()


# -- reading ------------------------------------------------------------------

@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_fixture_arrays_read_bit_exactly(name: str, tmp_path: Path) -> None:
    db = open_db(str(gunzip_fixture(name, tmp_path / name)))
    try:
        root = db.open().root()
        for key, m in MANIFEST[name].items():
            A = root[key]
            assert isinstance(A, ZBigArray)
            assert A.shape == tuple(m["shape"])
            assert A.dtype == np.dtype(m["dtype"])
            assert A.order == m["order"]
            assert A.zfile.blksize == 2 * 1024 * 1024
            assert digest(A[...]) == m["sha256"], key
    finally:
        transaction.abort()
        db.close()


def test_variants_read_bit_exactly(variants_fs: Path) -> None:
    """Holes, arrays grown by append, a structured dtype, headers without
    _order or _stridev, blocks of the early class name ZBlk."""
    db = open_db(str(variants_fs))
    try:
        root = db.open().root()
        for key, (a, order) in wendelin_fake.variants().items():
            if key == "grown":
                a = a[:400_000]
            A = root[key]
            assert (A.shape, A.dtype, A.order) == (a.shape, a.dtype, order), key
            np.testing.assert_array_equal(A[...], a, err_msg=key)
        assert len(root["holes"].zfile.blktab) == 1     # blocks 1 and 2 are holes
    finally:
        transaction.abort()
        db.close()


def test_header_layouts() -> None:
    dtype = np.dtype("<f4")
    zfile = object()
    state = ({"_shape": (3, 4), "_dtype": dtype, "_order": "F", "_stridev": (4, 12)},
             {"zfile": zfile})
    assert wendelin_header(state) == ((3, 4), dtype, "F", zfile)
    assert wendelin_header({"_shape": [3, 4], "_dtype": dtype, "zfile": zfile}) == (
        (3, 4), dtype, "C", zfile)
    assert wendelin_strides((0, 8), 8, "C") == (64, 8)       # as in the fixtures
    assert wendelin_strides((20, 30, 40), 1, "F") == (1, 20, 600)
    with pytest.raises(ValueError, match="not the contiguous"):
        wendelin_header(({"_shape": (3, 4), "_dtype": dtype, "_stridev": (4, 12)},
                         {"zfile": zfile}))
    with pytest.raises(ValueError, match="neither 'C' nor 'F'"):
        wendelin_header({"_shape": (3,), "_dtype": dtype, "_order": "K", "zfile": zfile})
    with pytest.raises(ValueError, match="lacks"):
        wendelin_header(({"_shape": (3,)}, {"zfile": zfile}))


# -- writing --------------------------------------------------------------------

def change(root: Any, model: dict[str, np.ndarray]) -> None:
    """The same changes to the fixture arrays and to their NumPy `model`."""
    a = root["a"]
    a[7, 3:9] = -1.5
    model["a"][7, 3:9] = -1.5
    # 1200 more rows: new blocks (the blktab bucket is rewritten)
    tail = np.arange(1200 * 700, dtype=np.float32).reshape(1200, 700)
    a.append(tail)
    model["a"] = np.concatenate([model["a"], tail])
    b = root["b"]
    b[1, 2, :] = 7
    model["b"][1, 2, :] = 7
    e = root["e"]
    e.append(np.full((5, 8), 3, np.int64))
    model["e"] = np.full((5, 8), 3, np.int64)


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_changes_read_back_and_stay_wendelin_readable(
        name: str, zblk_fmt: str, tmp_path: Path, fake_wendelin: Path) -> None:
    path = gunzip_fixture(name, tmp_path / name)
    before = ntransactions(path)
    db = open_db(str(path))
    try:
        root = db.open().root()
        model = {k: np.array(root[k][...]) for k in MANIFEST[name]}
        change(root, model)
        root["new"] = ZBigArray((10,), np.int16)     # a new array is zbigarray's own
        root["new"][:] = 5
        transaction.commit()
    finally:
        transaction.abort()
        db.close()

    db = open_db(str(path))
    try:
        root = db.open().root()
        for key, a in model.items():
            np.testing.assert_array_equal(root[key][...], a, err_msg=key)
    finally:
        db.close()

    # Every object written into the wendelin.core arrays names wendelin.core's
    # classes; only the new array is zbigarray's.
    paths = [p for rec in records_since(path, before) for p in class_paths(rec)]
    assert "wendelin.bigarray.array_zodb.ZBigArray" in paths
    assert f"wendelin.bigfile.file_zodb.{zblk_fmt}" in paths
    zbigarray_paths = {p for p in paths if p.startswith("zbigarray.")}
    blocks = {"ZBlk0": {"ZBlk0"}, "ZBlk1": {"ZBlk1", "ZData"}}[zblk_fmt]
    assert zbigarray_paths == {"zbigarray.bigarray.array_zodb.ZBigArray",
                               "zbigarray.storage.file_zodb.ZBigFile",
                               *(f"zbigarray.storage.file_zodb.{b}" for b in blocks)
                               }, zbigarray_paths

    # ... and wendelin.core's classes read them (the stand-in wendelin, with
    # plain ZODB, in a child process).
    got = wendelin_fake.run_with_fake(fake_wendelin, wendelin_fake.READ_ALL,
                                      str(path), *model)
    assert got == {k: digest(a) for k, a in model.items()}


def test_zblk1_block_object_is_stored_with_its_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """wendelin.core drops a cached block when its ZBlk1 object changes, not
    when only a chunk does: the block object must be in the transaction."""
    monkeypatch.setenv("ZBIGARRAY_ZBLK_FMT", "ZBlk1")
    name = "wc013-dev-zblk1.fs"
    path = gunzip_fixture(name, tmp_path / name)
    before = ntransactions(path)
    db = open_db(str(path))
    try:
        root = db.open().root()
        zblk_oid = root["a"].zfile.blktab[0]._p_oid
        root["a"][0, 0] += 1
        transaction.commit()
    finally:
        transaction.abort()
        db.close()
    fs = FileStorage(str(path), read_only=True)
    try:
        last = [list(txn) for i, txn in enumerate(fs.iterator()) if i >= before]
    finally:
        fs.close()
    assert len(last) == 1
    written = {rec.oid: get_pickle_metadata(rec.data) for rec in last[0]}
    assert written[zblk_oid] == ("wendelin.bigfile.file_zodb", "ZBlk1")
    assert sorted(written.values()) == [("wendelin.bigfile.file_zodb", "ZBlk1"),
                                        ("wendelin.bigfile.file_zodb", "ZData")]


# Where each variant is written: a row inside a hole of 'holes' (block 1)
# creates that block; 'no_stridev' is in F order.
VARIANT_WRITES = {"holes": np.s_[wendelin_fake.BLKSIZE // 8 + 10:wendelin_fake.BLKSIZE // 8 + 13],
                  "no_order": np.s_[5:8], "no_stridev": np.s_[..., 0:3],
                  "old_zblk": np.s_[0:3]}


def test_variants_changed_stay_wendelin_readable(variants_fs: Path, fake_wendelin: Path) -> None:
    db = open_db(str(variants_fs))
    try:
        root = db.open().root()
        model = {}
        for key, idx in VARIANT_WRITES.items():
            a = np.array(root[key][...])
            root[key][idx] = 1
            a[idx] = 1
            model[key] = a
        transaction.commit()
    finally:
        transaction.abort()
        db.close()
    got = wendelin_fake.run_with_fake(fake_wendelin, wendelin_fake.READ_ALL,
                                      str(variants_fs), *model)
    assert got == {k: digest(a) for k, a in model.items()}


# -- ZEO and RelStorage ------------------------------------------------------

def _read_write_read(uri: str, name: str) -> None:
    db = open_db(uri)
    try:
        root = db.open().root()
        for key, m in MANIFEST[name].items():
            assert digest(root[key][...]) == m["sha256"], key
        model = {k: np.array(root[k][...]) for k in MANIFEST[name]}
        change(root, model)
        transaction.commit()
    finally:
        transaction.abort()
        db.close()
    db = open_db(uri)       # another client
    try:
        root = db.open().root()
        for key, a in model.items():
            np.testing.assert_array_equal(root[key][...], a, err_msg=key)
    finally:
        transaction.abort()
        db.close()


@pytest.mark.zeo
def test_over_zeo(tmp_path: Path) -> None:
    name = "wc013-dev-zblk1.fs"
    proc, addr = start_zeo(gunzip_fixture(name, tmp_path / name))
    try:
        _read_write_read(f"zeo://{addr}?wait_timeout=20", name)
    finally:
        stop_zeo(proc)


@pytest.mark.relstorage
def test_over_relstorage(postgres_server: str, tmp_path: Path) -> None:
    name = "wc013-dev-zblk0.fs"
    uri = empty_relstorage(postgres_server)
    src = FileStorage(str(gunzip_fixture(name, tmp_path / name)), read_only=True)
    dst = zodburi.resolve_uri(uri)[0]()
    try:
        dst.copyTransactionsFrom(src)
    finally:
        src.close()
        dst.close()
    _read_write_read(uri, name)


# -- no names registered, no real wendelin.core shadowed ------------------------

_NO_WENDELIN_NAMES = """
import copyreg, sys
def check(when):
    mods = [m for m in sys.modules if m == "wendelin" or m.startswith("wendelin.")]
    assert not mods, (when, mods)
    for table in (copyreg.dispatch_table, copyreg._extension_registry,
                  copyreg._inverted_registry, copyreg._extension_cache):
        for k, v in table.items():
            assert "wendelin" not in repr((k, v)), (when, k, v)
"""


@pytest.mark.subprocess
def test_zbigarray_registers_no_wendelin_names(tmp_path: Path) -> None:
    name = "wc013-dev-zblk0.fs"
    path = gunzip_fixture(name, tmp_path / name)
    code = _NO_WENDELIN_NAMES + textwrap.dedent("""
        import zbigarray, zbigarray.storage, zbigarray.bigarray.array_zodb
        import zbigarray.storage.wendelin_compat, zbigarray.storage.wendelin_array
        import zbigarray.storage.wendelin_migrate, zbigarray.__main__
        check("after import")
        import transaction
        db = zbigarray.open_db(sys.argv[1])
        root = db.open().root()
        root["a"][0, 0] = 1
        root["a"].append(root["a"][:3])
        transaction.commit()
        db.close()
        check("after reading and writing a wendelin.core database")
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("import_first", ["wendelin", "zbigarray"])
def test_real_wendelin_is_never_shadowed(import_first: str, tmp_path: Path,
                                         fake_wendelin: Path) -> None:
    """With a wendelin.core importable, its classes are the ones loaded and
    its modules keep their classes, whichever is imported first."""
    name = "wc013-dev-zblk1.fs"
    path = gunzip_fixture(name, tmp_path / name)
    code = textwrap.dedent("""
        import json, sys
        if sys.argv[2] == "wendelin":
            import wendelin.bigfile.file_zodb, wendelin.bigarray.array_zodb
        import zbigarray
        db = zbigarray.open_db(sys.argv[1])
        root = db.open().root()
        A = root["a"]
        zblk = A.zfile.blktab[0]
        zblk._p_activate()
        import wendelin.bigfile.file_zodb as f, wendelin.bigarray.array_zodb as a
        from tests.storage import wendelin_fake as w
        print(json.dumps({
            "array": type(A) is a.ZBigArray, "file": type(A.zfile) is f.ZBigFile,
            "block": type(zblk) is f.ZBlk1,
            "data": type(next(iter(zblk.chunktab.values()))) is f.ZData,
            "modules": [m.__file__.startswith(sys.argv[3]) for m in (f, a)],
            "digest": w.digest(w.read_array(A)),
        }))
    """)
    got = wendelin_fake.run_with_fake(fake_wendelin, code, str(path), import_first,
                                      str(fake_wendelin))
    assert got == {"array": True, "file": True, "block": True, "data": True,
                   "modules": [True, True], "digest": MANIFEST[name]["a"]["sha256"]}


def test_class_factory_given_is_asked_first(tmp_path: Path) -> None:
    """A class_factory passed to open_db answers first; only its broken
    answers are replaced by stand-ins."""
    name = "wc013-dev-zblk0.fs"

    class Header(Persistent):
        def __setstate__(self, state: Any) -> None:
            self.state = state

    def factory(conn: Any, module: str, global_name: str) -> Any:
        if global_name == "ZBigArray":
            return Header
        return ZODB.broken.find_global(module, global_name)

    db = open_db(str(gunzip_fixture(name, tmp_path / name)), class_factory=factory)
    try:
        root = db.open().root()
        A = root["a"]
        A._p_activate()
        assert type(A) is Header
        assert isinstance(A.state[1]["zfile"], ZBigFile)
    finally:
        transaction.abort()
        db.close()

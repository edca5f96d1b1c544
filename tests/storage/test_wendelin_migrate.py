"""``python -m zbigarray migrate``: wendelin.core databases rewritten to
zbigarray's classes, then opened by plain ZODB (no compatibility layer)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import transaction
import ZODB
import zodburi
from ZODB.FileStorage import FileStorage
from ZODB.serialize import referencesf
from ZODB.utils import z64

from tests.common import REPO, run_on_terminal
from tests.storage import wendelin_fake
from tests.storage.conftest import start_zeo, stop_zeo
from tests.storage.test_wendelin_compat import (  # noqa: F401  (fixtures)
    FIXTURE_FILES,
    MANIFEST,
    change,
    class_paths,
    fake_wendelin,
    gunzip_fixture,
    variants_fs,
    variants_master,
)
from tests.storage.wendelin_fake import digest
from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.storage import open_db

pytestmark = pytest.mark.subprocess


def run_migrate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zbigarray", "migrate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reachable_class_paths(storage: object) -> set[str]:
    """Class paths named by the records reachable from the root."""
    paths: set[str] = set()
    seen, todo = {z64}, [z64]
    while todo:
        data, _ = storage.load(todo.pop())      # type: ignore[attr-defined]
        paths.update(class_paths(data))
        for ref in referencesf(data):
            if ref not in seen:
                seen.add(ref)
                todo.append(ref)
    return paths


def assert_plain_zodb_reads(storage: object, expected: dict[str, str]) -> None:
    """A plain ZODB.DB (no stand-ins) reads the arrays as zbigarray's, with
    digests `expected`, and no reachable record names wendelin.core."""
    assert not {p for p in reachable_class_paths(storage) if "wendelin" in p}
    db = ZODB.DB(storage)
    try:
        root = db.open().root()
        for key, d in expected.items():
            assert type(root[key]) is ZBigArray, key
            assert digest(root[key][...]) == d, key
    finally:
        transaction.abort()
        db.close()


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_migrate_fixture(name: str, tmp_path: Path) -> None:
    path = gunzip_fixture(name, tmp_path / name)
    original = sha(path)

    r = run_migrate("--dry-run", str(path))
    assert r.returncode == 0, r.stderr
    assert "would rewrite" in r.stdout and "dry run: nothing was written" in r.stdout
    assert "3  zbigarray.bigarray.array_zodb.ZBigArray" in r.stdout
    assert sha(path) == original

    r = run_migrate(str(path))
    assert r.returncode == 0, r.stderr
    assert "rewrote" in r.stdout
    assert "3  zbigarray.storage.file_zodb.ZBigFile" in r.stdout
    expected = {k: m["sha256"] for k, m in MANIFEST[name].items()}
    assert_plain_zodb_reads(FileStorage(str(path)), expected)

    migrated = sha(path)
    r = run_migrate(str(path))              # a second run: nothing to do
    assert r.returncode == 0, r.stderr
    assert "nothing to rewrite" in r.stdout and "already migrated" in r.stdout
    assert sha(path) == migrated


def test_migrate_after_zbigarray_wrote(tmp_path: Path, zblk_fmt: str) -> None:
    """Records the compatibility layer wrote (class paths as (module, name)
    pairs) are migrated too."""
    name = "wc013-dev-zblk0.fs"
    path = gunzip_fixture(name, tmp_path / name)
    db = open_db(str(path))
    try:
        root = db.open().root()
        model = {k: np.array(root[k][...]) for k in MANIFEST[name]}
        change(root, model)
        transaction.commit()
    finally:
        transaction.abort()
        db.close()
    r = run_migrate(str(path))
    assert r.returncode == 0, r.stderr
    assert_plain_zodb_reads(FileStorage(str(path)), {k: digest(a) for k, a in model.items()})


def test_migrate_variants(variants_fs: Path) -> None:  # noqa: F811
    r = run_migrate(str(variants_fs))
    assert r.returncode == 0, r.stderr
    expected = {}
    for key, (a, _) in wendelin_fake.variants().items():
        expected[key] = digest(a[:400_000] if key == "grown" else a)
    assert_plain_zodb_reads(FileStorage(str(variants_fs)), expected)


def test_migrate_refuses_what_it_cannot_migrate(tmp_path: Path) -> None:
    r = run_migrate(str(tmp_path / "missing.fs"))
    assert r.returncode == 1 and "missing.fs: no such database file" in r.stderr
    assert not (tmp_path / "missing.fs").exists()

    empty = tmp_path / "empty.fs"
    open_db(str(empty)).close()
    r = run_migrate(str(empty))
    assert r.returncode == 1
    assert "holds neither wendelin.core nor zbigarray arrays" in r.stderr

    name = "wc013-dev-zblk0.fs"
    path = gunzip_fixture(name, tmp_path / name)
    db = open_db(str(path))         # holds the FileStorage's lock
    try:
        r = run_migrate(str(path))
    finally:
        db.close()
    assert r.returncode == 1 and "in use by another process" in r.stderr


BIG = """
import sys, transaction, ZODB, numpy as np
from ZODB.FileStorage import FileStorage
from tests.storage import wendelin_fake as w
db = ZODB.DB(FileStorage(sys.argv[1]))
w.write_array(db.open().root(), "big",
              np.random.default_rng(1).standard_normal(20_000_000), fmt="ZBlk1")
transaction.commit()
db.close()
print("{}")
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_migration_leaves_database_unchanged(
        sig: int, tmp_path: Path, fake_wendelin: Path) -> None:  # noqa: F811
    path = tmp_path / "big.fs"
    wendelin_fake.run_with_fake(fake_wendelin, BIG, str(path))
    original = sha(path)
    tmp = Path(f"{path}.tmp")
    tmp.unlink()        # left by the writer
    proc = subprocess.Popen([sys.executable, "-m", "zbigarray", "migrate", str(path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Rewritten records go to FileStorage's transaction file: once it
        # grows, the migration is under way and has stored some.
        deadline = time.monotonic() + 60
        while not (tmp.exists() and tmp.stat().st_size > 1 << 20):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted; the database is unchanged" in err, err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert sha(path) == original
    r = run_migrate(str(path))          # and it can be run again
    assert r.returncode == 0, r.stderr


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    name = "wc013-dev-zblk1.fs"
    path = gunzip_fixture(name, tmp_path / name)
    returncode, tty = run_on_terminal(
        [sys.executable, "-m", "zbigarray", "migrate", "--dry-run", str(path)])
    assert returncode == 0
    # The terminal turns the final newline into "\r\n".
    last = [line for line in tty.decode().split("\r") if line.strip()][-1]
    assert "[" + "#" * 30 + "]" in last and "870 of 870 objects" in last, tty


@pytest.mark.zeo
def test_migrate_over_zeo(tmp_path: Path) -> None:
    name = "wc013-dev-zblk1.fs"
    proc, addr = start_zeo(gunzip_fixture(name, tmp_path / name))
    try:
        uri = f"zeo://{addr}?wait_timeout=20"
        r = run_migrate(uri)
        assert r.returncode == 0, r.stderr
        assert "827  zbigarray.storage.file_zodb.ZData" in r.stdout
        expected = {k: m["sha256"] for k, m in MANIFEST[name].items()}
        assert_plain_zodb_reads(zodburi.resolve_uri(uri)[0](), expected)
    finally:
        stop_zeo(proc)

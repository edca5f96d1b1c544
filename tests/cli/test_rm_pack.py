"""``zbigarray rm`` and ``pack``: removing arrays, and reclaiming the space
of old revisions and removed arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import transaction

from tests.cli.conftest import assert_one_line_error, zb
from zbigarray import open_db


def test_rm_then_pack_frees_the_space(sample_db: Path) -> None:
    db = open_db(sample_db)
    try:
        before_rm = db.lastTransaction()
    finally:
        db.close()
    r = zb("rm", sample_db, "a")
    assert r.returncode == 0, r.stderr
    assert "removed a" in r.stdout and "pack" in r.stdout
    assert "a" not in zb("ls", sample_db).stdout.split()
    # Until packed, the removed array is still there in the past.
    r = zb("ls", sample_db, "--at", before_rm.hex())
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[0] == "a"
    size = sample_db.stat().st_size

    r = zb("pack", sample_db)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"packed {sample_db}: ")
    assert sample_db.stat().st_size < size - 300_000     # a's 375 KiB are gone
    assert_one_line_error(zb("ls", sample_db, "--at", before_rm.hex()), "ls",
                          "packed away")
    assert "grp/b" in zb("ls", sample_db).stdout


def test_pack_days_keeps_recent_history(sample_db: Path) -> None:
    db = open_db(sample_db)
    try:
        first = db.lastTransaction()
        db.open().root()["a"][0] = 42
        transaction.commit()
    finally:
        transaction.abort()
        db.close()
    r = zb("pack", sample_db, "--days", "1")
    assert r.returncode == 0, r.stderr
    r = zb("export", sample_db, "a", sample_db.parent / "old.npy", "--at", first.hex())
    assert r.returncode == 0, r.stderr
    assert np.load(sample_db.parent / "old.npy")[0, 0] == 0
    assert_one_line_error(zb("pack", sample_db, "--days", "-1"), "pack", "negative")


def test_rm_refuses_what_is_not_an_array(sample_db: Path, tmp_path: Path) -> None:
    assert_one_line_error(zb("rm", sample_db, "grp"), "rm", "not an array")
    assert_one_line_error(zb("rm", sample_db, "grp/nothing"), "rm", "no such array")
    assert_one_line_error(zb("rm", sample_db, "nothing/x"), "rm", "no such array or group")
    assert_one_line_error(zb("rm", tmp_path / "missing.fs", "a"), "rm",
                          "no such database file")
    assert "grp/b" in zb("ls", sample_db).stdout


def test_writing_commands_refuse_a_database_in_use(sample_db: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones(3))
    db = open_db(sample_db)         # holds the FileStorage's lock
    try:
        for args in (("rm", "a"), ("pack",), ("import", "x", tmp_path / "x.npy")):
            assert_one_line_error(zb(args[0], sample_db, *args[1:]), args[0],
                                  "in use by another process")
    finally:
        db.close()
    assert "a" in zb("ls", sample_db).stdout.split()

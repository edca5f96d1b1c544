"""``attrs`` on arrays stored in wendelin.core's layout: absent from their
state until set, then a plain attribute wendelin.core reads and writes back,
and carried over by ``migrate``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import transaction
from ZODB.FileStorage import FileStorage
from ZODB.utils import get_pickle_metadata

from tests.common import REPO
from tests.storage import wendelin_fake
from tests.storage.test_wendelin_compat import (  # noqa: F401  (fixture)
    fake_wendelin,
    gunzip_fixture,
)
from zbigarray.storage import open_db
from zbigarray.storage.wendelin_array import ZBigArray as WendelinArray


def _record(path: Path, oid: bytes) -> bytes:
    fs = FileStorage(str(path), read_only=True)
    try:
        return fs.load(oid)[0]
    finally:
        fs.close()


# Run by the stand-in wendelin.core: read array "a" and its attrs, then
# change the header (as a resize would) and commit.
_WENDELIN_READS_AND_WRITES = """
import json, sys, transaction, ZODB
from ZODB.FileStorage import FileStorage
from tests.storage.wendelin_fake import digest, read_array
db = ZODB.DB(FileStorage(sys.argv[1]))
A = db.open().root()["a"]
out = {"attrs": A.attrs, "digest": digest(read_array(A))}
A._p_changed = True
transaction.commit()
db.close()
print(json.dumps(out))
"""


def test_wendelin_array_state_gets_attrs_only_when_set(tmp_path: Path,
                                                       fake_wendelin: Path) -> None:  # noqa: F811
    path = gunzip_fixture("wc013-dev-zblk0.fs", tmp_path / "w.fs")
    db = open_db(str(path))
    try:
        A = db.open().root()["a"]
        assert type(A) is WendelinArray and dict(A.attrs) == {}
        oid = A._p_oid
        A.resize((A.shape[0] + 1,) + A.shape[1:])     # the header is written
        transaction.commit()
    finally:
        transaction.abort()
        db.close()
    record = _record(path, oid)
    assert get_pickle_metadata(record) == ("wendelin.bigarray.array_zodb", "ZBigArray")
    assert b"attrs" not in record

    db = open_db(str(path))
    try:
        A = db.open().root()["a"]
        A.attrs["units"] = "m"
        expected = wendelin_fake.digest(np.asarray(A))
        transaction.commit()
    finally:
        transaction.abort()
        db.close()
    assert get_pickle_metadata(_record(path, oid)) == (
        "wendelin.bigarray.array_zodb", "ZBigArray")

    # wendelin.core reads the array and its metadata, and writes them back.
    got = wendelin_fake.run_with_fake(fake_wendelin, _WENDELIN_READS_AND_WRITES, str(path))
    assert got == {"attrs": {"units": "m"}, "digest": expected}
    db = open_db(str(path))
    try:
        assert dict(db.open().root()["a"].attrs) == {"units": "m"}
    finally:
        db.close()


def test_migrate_carries_attrs(tmp_path: Path) -> None:
    path = gunzip_fixture("wc013-dev-zblk1.fs", tmp_path / "w.fs")
    db = open_db(str(path))
    try:
        db.open().root()["b"].attrs["source"] = {"run": 7}
        transaction.commit()
    finally:
        transaction.abort()
        db.close()
    r = subprocess.run([sys.executable, "-m", "zbigarray", "migrate", str(path)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    db = open_db(str(path))
    try:
        root = db.open().root()
        assert type(root["b"]).__module__ == "zbigarray.bigarray.array_zodb"
        assert dict(root["b"].attrs) == {"source": {"run": 7}}
        assert dict(root["a"].attrs) == {}
    finally:
        db.close()

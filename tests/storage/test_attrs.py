"""``ZBigArray.attrs`` (metadata stored with the array), and attributes that
would not be stored refused at once."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import transaction
import ZODB
from ZODB.FileStorage import FileStorage

from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.storage import open_db


class Series(ZBigArray):
    """A subclass declaring an attribute of its own (stored with the array)."""

    unit: str


def _reopen(path: Path, key: str = "A") -> tuple[ZODB.DB, ZBigArray]:
    db = open_db(str(path))
    return db, db.open().root()[key]


def test_attrs_are_stored_and_read_back(tmp_path: Path) -> None:
    db = open_db(str(tmp_path / "data.fs"))
    root = db.open().root()
    root["A"] = A = ZBigArray((10, 3), np.float32)
    A.attrs["units"] = "m/s"
    A.attrs.update({"scale": 0.5, "axes": ("t", "x"), "meta": {"n": np.int64(3), "ok": True},
                    "none": None})
    transaction.commit()
    db.close()

    db, A = _reopen(tmp_path / "data.fs")
    try:
        assert dict(A.attrs) == {"units": "m/s", "scale": 0.5, "axes": ["t", "x"],
                                 "meta": {"n": 3, "ok": True}, "none": None}
        assert type(A.attrs["meta"]["n"]) is int        # a NumPy scalar became a number
        assert "units" in A.attrs and len(A.attrs) == 5
        del A.attrs["none"]
        transaction.commit()
    finally:
        transaction.abort()
        db.close()
    db, A = _reopen(tmp_path / "data.fs")
    try:
        assert sorted(A.attrs) == ["axes", "meta", "scale", "units"]
    finally:
        db.close()


@pytest.mark.parametrize("value, what", [
    ({1, 2}, "set"), (b"raw", "bytes"), (object(), "object"), (math.nan, "nan"),
    ([1, [2, math.inf]], "inf"), ({"k": {3: "x"}}, "key 3"), (np.zeros(3), "ndarray"),
])
def test_values_json_cannot_hold_are_refused_naming_the_key(value: object, what: str) -> None:
    A = ZBigArray((4,), np.int8)
    A.attrs["kept"] = 1
    with pytest.raises(TypeError, match="'bad'"):
        A.attrs["bad"] = value
    with pytest.raises(TypeError, match="'bad'"):
        A.attrs.update(fine=2, bad=value)       # all or nothing
    assert dict(A.attrs) == {"kept": 1}
    with pytest.raises(TypeError, match="not a str"):
        A.attrs[3] = 1      # type: ignore[index]


def test_a_value_read_is_a_copy() -> None:
    A = ZBigArray((4,), np.int8)
    A.attrs["l"] = [1, 2]
    got = A.attrs["l"]
    got.append(3)
    assert A.attrs["l"] == [1, 2]
    A.attrs["l"] = got
    assert A.attrs["l"] == [1, 2, 3]


def test_changes_follow_the_transaction(db: ZODB.DB) -> None:
    root = db.open().root()
    root["A"] = A = ZBigArray((4,), np.int8)
    A.attrs["v"] = 1
    transaction.commit()
    A.attrs["v"] = 2
    A.attrs["w"] = 3
    transaction.abort()
    assert dict(A.attrs) == {"v": 1}
    sp = transaction.savepoint()
    A.attrs.clear()
    assert dict(A.attrs) == {}
    sp.rollback()
    assert dict(A.attrs) == {"v": 1}


def test_another_connection_sees_a_change_after_its_next_transaction(db: ZODB.DB) -> None:
    tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
    c1, c2 = db.open(tm1), db.open(tm2)
    c1.root()["A"] = A1 = ZBigArray((4,), np.int8)
    A1.attrs["v"] = 1
    tm1.commit()
    tm2.begin()
    A2 = c2.root()["A"]
    assert A2.attrs["v"] == 1
    A1.attrs["v"] = 2
    tm1.commit()
    assert A2.attrs["v"] == 1          # isolation: c2's snapshot
    tm2.begin()
    assert A2.attrs["v"] == 2
    c1.close()
    c2.close()


def _eventually(tm: transaction.TransactionManager, cond: object) -> None:
    """Begin transactions in `tm` until `cond()` holds (10 s at most): a
    ZEO client learns of others' commits asynchronously."""
    deadline = time.monotonic() + 10
    while True:
        tm.begin()
        if cond():      # type: ignore[operator]
            return
        assert time.monotonic() < deadline, "the change never showed"
        time.sleep(0.02)


@pytest.mark.zeo
def test_another_client_sees_a_change_over_zeo(zeo_server: str) -> None:
    uri = f"zeo://{zeo_server}?wait_timeout=20"
    db1, db2 = open_db(uri), open_db(uri)
    tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
    try:
        c1, c2 = db1.open(tm1), db2.open(tm2)
        c1.root()["A"] = A1 = ZBigArray((4,), np.int8)
        tm1.commit()
        _eventually(tm2, lambda: "A" in c2.root())
        A2 = c2.root()["A"]
        assert dict(A2.attrs) == {}
        A1.attrs["v"] = "new"
        tm1.commit()
        _eventually(tm2, lambda: "v" in A2.attrs)
        assert A2.attrs["v"] == "new"
        c1.close()
        c2.close()
    finally:
        db1.close()
        db2.close()


def test_unknown_attribute_is_refused_at_once(db: ZODB.DB) -> None:
    root = db.open().root()
    root["A"] = A = ZBigArray((4,), np.int8)
    transaction.commit()
    with pytest.raises(AttributeError, match="'units'.*attrs"):
        A.units = "m/s"             # type: ignore[attr-defined]
    assert not A._p_changed         # refused before anything was marked
    A._v_scratch = 1                # volatile: allowed, not stored
    A[0] = 5                        # the array's own state still works
    A.resize((6,))
    transaction.commit()
    assert "_v_scratch" not in A.__getstate__()
    with pytest.raises(AttributeError):
        A.attrs = {}                # type: ignore[misc]  # change it, not replace


def test_a_subclass_declared_attribute_is_stored(tmp_path: Path) -> None:
    db = open_db(str(tmp_path / "data.fs"))
    root = db.open().root()
    root["S"] = S = Series((4,), np.float64)
    S.unit = "K"
    with pytest.raises(AttributeError):
        S.other = 1                 # type: ignore[attr-defined]
    transaction.commit()
    db.close()
    db, S = _reopen(tmp_path / "data.fs", "S")
    try:
        assert isinstance(S, Series) and S.unit == "K" and dict(S.attrs) == {}
    finally:
        db.close()


def test_an_array_without_attrs_keeps_the_state_earlier_versions_wrote(tmp_path: Path) -> None:
    db = open_db(str(tmp_path / "data.fs"))
    root = db.open().root()
    root["A"] = A = ZBigArray((4,), np.int8)
    transaction.commit()
    oid = A._p_oid
    db.close()
    fs = FileStorage(str(tmp_path / "data.fs"), read_only=True)
    try:
        record, _ = fs.load(oid)
    finally:
        fs.close()
    assert b"attrs" not in record
    # And a state without the key (as every earlier version wrote) reads as empty.
    B = ZBigArray.__new__(ZBigArray)
    B.__setstate__({"shape": (4,), "dtype": np.dtype(np.int8), "order": "C",
                    "zfile": A.zfile})
    assert dict(B.attrs) == {} and B.shape == (4,)

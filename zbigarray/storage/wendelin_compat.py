"""Databases written by wendelin.core: read them, and write into them so that
wendelin.core still reads them.

wendelin.core stores the same block layouts as zbigarray (see
``docs/storage.md``, "Coming from wendelin.core") under its own class paths,
``wendelin.bigfile.file_zodb.*`` and ``wendelin.bigarray.array_zodb.ZBigArray``.
:class:`WendelinCompatDB` (what :func:`zbigarray.storage.open_db` returns) is a
``ZODB.DB`` that

- looks classes up as ZODB does first, and only when a wendelin.core class is
  missing (ZODB would make a broken object of it) hands out a *stand-in*
  defined here: a subclass of the zbigarray class with the same state layout.
  A real wendelin.core importable in the process always wins.  Nothing is
  registered anywhere (``sys.modules``, ``copyreg``): the lookup belongs to
  the database object.
- writes stand-ins under wendelin.core's class names, so that wendelin.core
  reads what zbigarray wrote.  ZODB's writer would pickle a class by importing
  it, and no module ``wendelin.*`` exists here; so the connections of this
  database use a writer that names stand-ins as ``(module, name)`` pairs,
  a form every ZODB reader accepts (ZODB's own conflict resolution writes it):
  ``((module, name), None)`` for an object's class, ``(oid, (module, name))``
  for a reference to it.

The one seam into ZODB's internals is :meth:`_Connection._store_objects`
(tested with the ZODB installed: ``tests/storage/test_wendelin_compat.py``).

Stand-in classes are not stored under their own names (the writer never lets
ZODB pickle them), so their module path here is free to change.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, ClassVar, Literal

import ZODB
from ZODB.broken import Broken
from ZODB.Connection import Connection
from ZODB.serialize import ObjectWriter

from zbigarray.storage import file_zodb

WENDELIN_FILE_MODULE = "wendelin.bigfile.file_zodb"
"""Module path of wendelin.core's ZBigFile and block classes in its databases."""

WENDELIN_ARRAY_MODULE = "wendelin.bigarray.array_zodb"
"""Module path of wendelin.core's ZBigArray in its databases."""

# Class paths of wendelin.core databases -> "module:name" of the stand-in
# (imported on first use: the array's needs the virtual-memory extension).
# Early wendelin.core versions wrote ZBlk0 under the name ZBlk.
STANDINS: dict[tuple[str, str], str] = {
    (WENDELIN_FILE_MODULE, "ZBigFile"): "zbigarray.storage.wendelin_compat:ZBigFile",
    (WENDELIN_FILE_MODULE, "ZBlk0"): "zbigarray.storage.wendelin_compat:ZBlk0",
    (WENDELIN_FILE_MODULE, "ZBlk"): "zbigarray.storage.wendelin_compat:ZBlk0",
    (WENDELIN_FILE_MODULE, "ZBlk1"): "zbigarray.storage.wendelin_compat:ZBlk1",
    (WENDELIN_FILE_MODULE, "ZData"): "zbigarray.storage.wendelin_compat:ZData",
    (WENDELIN_ARRAY_MODULE, "ZBigArray"): "zbigarray.storage.wendelin_array:ZBigArray",
}


class WendelinStandIn:
    """Mixin of the stand-in classes: records the class path the writer
    stores instances under (``wendelin_name``)."""

    wendelin_name: ClassVar[tuple[str, str]]

    def __init_subclass__(cls, wendelin_name: tuple[str, str], **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.wendelin_name = wendelin_name


class ZData(WendelinStandIn, file_zodb.ZData,
            wendelin_name=(WENDELIN_FILE_MODULE, "ZData")):
    """Stand-in for wendelin.core's ZData (same state: the chunk's bytes)."""


class ZBlk0(WendelinStandIn, file_zodb.ZBlk0,
            wendelin_name=(WENDELIN_FILE_MODULE, "ZBlk0")):
    """Stand-in for wendelin.core's ZBlk0 (same state: the block's bytes,
    trailing zeros stripped)."""


class ZBlk1(WendelinStandIn, file_zodb.ZBlk1,
            wendelin_name=(WENDELIN_FILE_MODULE, "ZBlk1")):
    """Stand-in for wendelin.core's ZBlk1 (same state: IOBTree offset -> ZData)."""

    _ZData = ZData

    def setblkdata(self, buf: memoryview, unchanged: Any = ()) -> bool:
        """As :meth:`zbigarray.storage.file_zodb.ZBlk1.setblkdata`, and the
        block object itself is stored too: a wendelin.core client drops its
        cached page of a block only when the block object changes, never for
        a changed chunk alone."""
        nonempty = super().setblkdata(buf, unchanged)
        if nonempty:
            self._p_changed = True
        return nonempty


class ZBigFile(WendelinStandIn, file_zodb.ZBigFile,
               wendelin_name=(WENDELIN_FILE_MODULE, "ZBigFile")):
    """Stand-in for wendelin.core's ZBigFile (same state: ``(blksize,
    blktab)``); new blocks are written as wendelin.core's block classes."""

    _zblk_classes = {file_zodb.ZBlk0: ZBlk0, file_zodb.ZBlk1: ZBlk1}


def wendelin_header(state: Any) -> tuple[tuple[int, ...], Any, Literal["C", "F"], Any]:
    """``(shape, dtype, order, zfile)`` from the state of a wendelin.core
    ZBigArray.

    The state is ``(dict, slots)`` as ``persistent`` writes an object with
    ``__slots__``: ``dict`` has ``_shape``, ``_dtype``, ``_order`` (absent
    in early versions: C) and ``_stridev`` (absent in early versions), and
    ``slots`` has ``zfile``.  A plain dict holding all of them is accepted
    too.

    Raises
    ------
    ValueError
        A key is missing, the order is neither C nor F, or ``_stridev`` is
        not the contiguous layout of shape and order (zbigarray reads only
        those, and wendelin.core writes only those).
    """
    if isinstance(state, tuple) and len(state) == 2:
        attrs = dict(state[0] or {})
        attrs.update(state[1] or {})
    elif isinstance(state, dict):
        attrs = dict(state)
    else:
        raise ValueError(f"wendelin.core ZBigArray: unexpected state of type "
                         f"{type(state).__name__}")
    missing = {"_shape", "_dtype", "zfile"} - attrs.keys()
    if missing:
        raise ValueError(f"wendelin.core ZBigArray: state lacks {sorted(missing)}")
    shape = tuple(int(n) for n in attrs["_shape"])
    dtype = attrs["_dtype"]
    order = attrs.get("_order", "C")
    if order not in ("C", "F"):
        raise ValueError(f"wendelin.core ZBigArray: order {order!r} is neither 'C' nor 'F'")
    stridev = attrs.get("_stridev")
    if stridev is not None and tuple(stridev) != wendelin_strides(shape, dtype.itemsize, order):
        raise ValueError(f"wendelin.core ZBigArray: strides {tuple(stridev)} are not the "
                         f"contiguous {order} layout of shape {shape} and itemsize "
                         f"{dtype.itemsize}")
    return shape, dtype, order, attrs["zfile"]


def wendelin_strides(shape: tuple[int, ...], itemsize: int, order: str) -> tuple[int, ...]:
    """The ``_stridev`` wendelin.core stores for `shape`: bytes between
    neighbours along each axis of a contiguous array (also when an axis has
    length 0, unlike NumPy's convention)."""
    strides = []
    for i in range(len(shape)):
        others = shape[i + 1:] if order == "C" else shape[:i]
        n = itemsize
        for d in others:
            n *= d
        strides.append(n)
    return tuple(strides)


class _StandInWriter(ObjectWriter):
    """ZODB's object writer, naming stand-ins by their wendelin.core class
    path instead of pickling the class (which would import it)."""

    def persistent_id(self, obj: Any) -> Any:
        ref = super().persistent_id(obj)
        # (oid, class): the usual reference to a persistent object.
        if type(ref) is tuple and issubclass(ref[1], WendelinStandIn):
            return ref[0], ref[1].wendelin_name
        return ref

    def serialize(self, obj: Any) -> bytes:
        klass = type(obj)
        if issubclass(klass, WendelinStandIn):
            # ZODB's format for a class given by name: ((module, name), args).
            return self._dump((klass.wendelin_name, None), obj.__getstate__())
        return super().serialize(obj)


class _Connection(Connection):
    """The connections of a :class:`WendelinCompatDB`: they store objects
    through :class:`_StandInWriter`."""

    def _store_objects(self, writer: ObjectWriter, transaction: Any) -> None:
        # ZODB calls this with a fresh writer per changed object, holding
        # just that object (it collects the new objects it reaches while
        # pickling); ours takes its place.
        super()._store_objects(_StandInWriter(next(iter(writer))), transaction)


class WendelinCompatDB(ZODB.DB):
    """A ``ZODB.DB`` that also opens and changes databases written by
    wendelin.core; :func:`zbigarray.storage.open_db` returns one.

    Parameters are those of ``ZODB.DB``.  ``class_factory`` (ZODB's hook, any
    ZODB version here) is asked first; without it, ZODB's own lookup.

    A class path of wendelin.core (:data:`STANDINS`) that this lookup cannot
    import -- ZODB would make a broken object -- gets zbigarray's stand-in,
    which reads and writes the same state.  Each class path is decided once
    per database, at its first lookup.
    """

    klass = _Connection

    def __init__(self, storage: Any, *args: Any, class_factory: Any = None, **kw: Any) -> None:
        self._next_class_factory = class_factory
        self._resolved: dict[tuple[str, str], type] = {}
        self._resolve_lock = threading.Lock()
        super().__init__(storage, *args, **kw)

    def classFactory(self, connection: Any, modulename: str, globalname: str) -> Any:
        """ZODB's lookup of a class stored by path (see the class docstring)."""
        key = (modulename, globalname)
        if key not in STANDINS:
            return self._lookup(connection, modulename, globalname)
        klass = self._resolved.get(key)
        if klass is None:
            with self._resolve_lock:
                klass = self._lookup(connection, modulename, globalname)
                if isinstance(klass, type) and issubclass(klass, Broken):
                    module, _, name = STANDINS[key].partition(":")
                    klass = getattr(importlib.import_module(module), name)
                self._resolved[key] = klass
        return klass

    def _lookup(self, connection: Any, modulename: str, globalname: str) -> Any:
        if self._next_class_factory is not None:
            return self._next_class_factory(connection, modulename, globalname)
        return super().classFactory(connection, modulename, globalname)


"""``ZBigArray.attrs``: metadata stored with an array, as h5py's and zarr's.

The values live in the array's own persistent state (a plain ``dict`` under
the key ``'attrs'``), so they are saved, rolled back and invalidated exactly
like the header: another process's change shows up at this connection's next
transaction boundary, an abort undoes a change, and a conflict is the
header's conflict.  Only values JSON can hold are accepted, so that any
reader (other tools, other languages, ``zarr`` and ``h5py`` on export) can
take them, and so that an unpickling reader never runs code named by the
metadata.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Protocol

import numpy as np

__all__ = ["Attrs", "json_value"]


def json_value(value: Any, where: str) -> Any:
    """`value` as plain JSON data (dict with str keys, list, str, int, float,
    bool, None), copied; NumPy scalars become Python numbers, tuples lists.

    Raises
    ------
    TypeError
        Something JSON cannot hold (a set, bytes, an object, a non-str key,
        NaN or an infinity); the message names `where` the value sits.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        value = value.item()
    if isinstance(value, int):
        return int(value)           # an int subclass (IntEnum) as itself
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: {value!r} is not a JSON number")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a str (JSON objects "
                                f"have str keys)")
            out[k] = json_value(v, f"{where}[{k!r}]")
        return out
    raise TypeError(f"{where}: a {type(value).__name__} is not JSON-compatible "
                    f"(use None, bool, int, float, str, lists and dicts of them)")


class _Owner(Protocol):
    """What :class:`Attrs` needs of the array it belongs to."""

    def _get_attrs(self) -> dict[str, Any]: ...
    def _set_attrs(self, attrs: dict[str, Any]) -> None: ...


class Attrs(MutableMapping[str, Any]):
    """The metadata of one array: a mapping of str keys to JSON-compatible
    values, stored with the array.

    A value read is a copy: changing a list read from it changes nothing
    stored; assign it again (``A.attrs["l"] = l``).  Every change replaces
    the array's dict with a new one, which is what tells ZODB the array
    changed.  The mapping holds no data itself: each access reads the array's
    current state, so a change committed by another process shows at the
    next transaction.

    Raises
    ------
    TypeError
        Setting a key that is not a str, or a value that is not
        JSON-compatible (the message names the key).
    """

    __slots__ = ("_owner",)

    def __init__(self, owner: _Owner) -> None:
        self._owner = owner

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._owner._get_attrs()[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        attrs = dict(self._owner._get_attrs())
        del attrs[key]
        self._owner._set_attrs(attrs)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._owner._get_attrs()))

    def __len__(self) -> int:
        return len(self._owner._get_attrs())

    def __contains__(self, key: object) -> bool:
        return key in self._owner._get_attrs()

    def update(self, other: Any = (), /, **kw: Any) -> None:  # type: ignore[override]
        """Set several keys in one change: all are validated first, and
        nothing is changed if one is refused."""
        new = dict(other, **kw)
        checked = {}
        for key, value in new.items():
            if not isinstance(key, str):
                raise TypeError(f"attrs: key {key!r} is not a str")
            checked[key] = json_value(value, f"attrs[{key!r}]")
        if checked:
            self._owner._set_attrs({**self._owner._get_attrs(), **checked})

    def clear(self) -> None:
        """Remove every key, in one change."""
        if self._owner._get_attrs():
            self._owner._set_attrs({})

    def asdict(self) -> dict[str, Any]:
        """All keys and values, as a new plain dict."""
        return copy.deepcopy(self._owner._get_attrs())

    def __repr__(self) -> str:
        return f"<Attrs {self._owner._get_attrs()!r}>"

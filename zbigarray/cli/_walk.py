"""Arrays by path: ``grp/b`` is the array under key ``b`` of the mapping
under key ``grp`` of the database root.

Containers are the persistent mappings users keep arrays in: the root,
``PersistentMapping``, ``OOBTree`` and the like -- anything with ``items()``
whose keys are str.  Arrays are not looked into (their file's block table is
a mapping too, of block numbers).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.cli._errors import CliError


def is_container(obj: Any) -> bool:
    """Whether `obj` is a mapping that may hold arrays by name."""
    return (not isinstance(obj, ZBigArray) and callable(getattr(obj, "items", None))
            and callable(getattr(obj, "get", None)))


def walk(container: Any, prefix: str = "") -> Iterator[tuple[str, ZBigArray]]:
    """``(path, array)`` for every array under `container`, depth first,
    keys sorted; a container reached twice (shared, or a cycle) is walked
    once."""
    seen: set[int] = set()

    def visit(obj: Any, path: str) -> Iterator[tuple[str, ZBigArray]]:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        for key, value in sorted((k, v) for k, v in obj.items() if isinstance(k, str)):
            sub = f"{path}/{key}" if path else key
            if isinstance(value, ZBigArray):
                yield sub, value
            elif is_container(value):
                yield from visit(value, sub)

    # Objects stay in memory while walked (the ids stay unique).
    yield from visit(container, prefix)


def resolve(root: Any, path: str) -> Any:
    """The object at `path` under `root`; ``""`` or ``"/"`` is the root.

    A key holding ``/`` is found too: at each level the longest prefix of
    the rest that is a key wins.

    Raises
    ------
    CliError
        Nothing is at `path`.
    """
    rest = path.strip("/")
    obj, where = root, ""
    while rest:
        if not is_container(obj):
            raise CliError(f"{path}: {where} is an array, not a group")
        parts = rest.split("/")
        for n in range(len(parts), 0, -1):
            key = "/".join(parts[:n])
            value = obj.get(key)
            if value is not None:
                obj, where, rest = value, f"{where}/{key}".lstrip("/"), "/".join(parts[n:])
                break
        else:
            raise CliError(f"{path}: no such array or group"
                           + (f" (in {where})" if where else ""))
    return obj


def resolve_array(root: Any, path: str) -> ZBigArray:
    """The array at `path` (see :func:`resolve`).

    Raises
    ------
    CliError
        Nothing, or no array, is at `path`.
    """
    obj = resolve(root, path)
    if not isinstance(obj, ZBigArray):
        raise CliError(f"{path}: is {'a group' if is_container(obj) else type(obj).__name__}, "
                       f"not an array")
    return obj


def split_parent(root: Any, path: str) -> tuple[Any, str]:
    """The container `path` names an entry of, and the entry's key.

    Raises
    ------
    CliError
        The parent does not exist or is not a group.
    """
    parent_path, _, key = path.strip("/").rpartition("/")
    if not key:
        raise CliError(f"{path!r}: a path names an entry (e.g. grp/b), not the root")
    parent = resolve(root, parent_path)
    if not is_container(parent):
        raise CliError(f"{path}: {parent_path} is not a group")
    return parent, key

"""Reading a BTree through its persistent state, recording the nodes visited.

The invalidation logic (see :mod:`zbigarray.storage._invalidation`) must know
which persistent objects the content of a block depends on, so that it can tell
whether a committed change of any of them concerns a page this process holds.
The public BTree API hides its nodes; their pickled state does not, and that
state is part of the BTrees on-disk format, so it is stable:

- a tree: ``None`` when empty; ``((bucket_state,),)`` when its only bucket is
  stored inline; otherwise ``((child0, key1, child1, ..., keyN, childN),
  firstbucket)`` where each child is a tree node of the same type or a bucket;
- a bucket: ``((key0, value0, key1, value1, ...),)`` optionally followed by
  the next bucket.

Every node reached is a persistent object; an inline bucket is part of its
tree's state.  Reading a node's state loads it through its connection, as any
access would.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

from persistent import Persistent


def _bucket_find(items: tuple[Any, ...], key: int) -> Any:
    keys = items[0::2]
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        return items[2 * i + 1]
    return None


def lookup(tree: Persistent, key: int, path: list[Persistent]) -> Any:
    """Return ``tree.get(key)``, appending every node read to `path`.

    Parameters
    ----------
    tree
        A BTree (e.g. ``LOBTree``) with integer keys.
    key
        The key to look up.
    path
        Receives the tree root and every node below it that decides where
        `key` is (or would be): the same value is found again as long as none
        of these nodes changes.

    Returns
    -------
    object or None
        The value, or None when `key` is absent.
    """
    tree_type = type(tree)
    node: Any = tree
    while True:
        path.append(node)
        state = node.__getstate__()
        if state is None:
            return None
        if type(node) is not tree_type:          # a bucket
            return _bucket_find(state[0], key)
        if len(state) == 1:                      # a tree with one inline bucket
            return _bucket_find(state[0][0][0], key)
        children = state[0]
        node = children[2 * bisect_right(children[1::2], key)]


def nodes(tree: Persistent) -> list[Persistent]:
    """Return every persistent node of `tree`: the root, inner nodes, buckets."""
    tree_type = type(tree)
    out: list[Persistent] = []
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        if type(node) is not tree_type:
            continue
        state = node.__getstate__()
        if state is None or len(state) == 1:
            continue
        stack.extend(state[0][0::2])
    return out

"""``zbigarray import DB PATH IN``: a ``.npy``, ``.h5`` or ``.zarr`` array
into a new ZBigArray, streamed, in one transaction.

Named ``import_`` because ``import`` is a keyword.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from persistent.mapping import PersistentMapping

from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.cli import _stream
from zbigarray.cli._errors import CliError
from zbigarray.cli._open import connection
from zbigarray.cli._units import fmt_bytes
from zbigarray.cli._walk import is_container, split_parent
from zbigarray.cli.formats import reader_class


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "import", help="read a .npy, .h5 or .zarr array into a new array",
        description="Create the array PATH (groups on the way are created as "
                    "PersistentMappings) from IN: a .npy file, a dataset of a .h5/.hdf5 "
                    "file (needs h5py) or a .zarr array (needs zarr), with its attrs "
                    "where the format has them.  Streams in pieces with bounded memory, "
                    "in one transaction: interrupted, the database is unchanged.  "
                    "Creates DB if it is a path that does not exist.")
    p.add_argument("db", metavar="DB", help="FileStorage path or URI (zeo://host:port, ...)")
    p.add_argument("path", metavar="PATH", help="the new array, e.g. grp/b")
    p.add_argument("src", metavar="IN", type=Path, help="file to read (.npy, .h5, .zarr)")
    p.add_argument("--dataset", metavar="NAME",
                   help="HDF5 dataset or zarr array path inside IN (default: the only one)")
    p.add_argument("--blksize", metavar="BYTES", type=int, default=2 << 20,
                   help="block size of the new array (default: 2 MiB)")
    p.set_defaults(run=run)


def _groups(root: Any, path: str) -> None:
    """Create the missing groups on the way to `path`."""
    parts = path.strip("/").split("/")[:-1]
    obj = root
    for i, part in enumerate(parts):
        sub = obj.get(part)
        if sub is None:
            sub = obj[part] = PersistentMapping()
        elif not is_container(sub):
            raise CliError(f"{path}: {'/'.join(parts[:i + 1])} is not a group")
        obj = sub


def _store(A: ZBigArray, index: Any, data: np.ndarray) -> None:
    # A new array reads as zeros: zeros written would only load and dirty
    # pages (and store nothing, an all-zero block being a hole).
    # Bytes, not values: -0.0 is stored, and structured dtypes have no any().
    if data.reshape(-1, order="A").view(np.uint8).any():
        A[index] = data


def run(args: argparse.Namespace) -> int:
    src: Path = args.src
    if not src.exists():
        raise CliError(f"{src}: no such file")
    if args.blksize <= 0 or args.blksize & (args.blksize - 1):
        raise CliError(f"--blksize {args.blksize}: must be a power of two")
    r = reader_class(src)(src, args.dataset)
    _stream.limit_ram()
    try:
        with connection(args.db, write=True, create=True) as conn:
            root = conn.root()
            _groups(root, args.path)
            parent, key = split_parent(root, args.path)
            if parent.get(key) is not None:
                raise CliError(f"{args.path}: exists (`zbigarray rm` it first)")
            A = ZBigArray(r.shape, r.dtype, r.order, blksize=args.blksize)
            conn.add(A)     # its file follows this connection's transactions
            parent[key] = A
            attrs, warnings = r.attrs()
            A.attrs.update(attrs)
            _stream.copy(r.shape, r.dtype, r.order, r.read, lambda ix, data: _store(A, ix, data),
                         "importing")
            txn = conn.transaction_manager.get()
            txn.note(f"zbigarray import {src.name} -> {args.path.strip('/')}")
            txn.commit()
    finally:
        r.close()
    for warning in warnings:
        sys.stderr.write(f"zbigarray import: warning: {warning}\n")
    print(f"imported {src} ({fmt_bytes(A.nbytes)}) as {args.path.strip('/')}")
    return 0

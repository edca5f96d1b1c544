"""``zbigarray export DB PATH OUT``: one array into a ``.npy``, ``.h5`` or
``.zarr`` file, streamed."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from zbigarray.cli import _at, _stream
from zbigarray.cli._errors import CliError
from zbigarray.cli._open import connection
from zbigarray.cli._units import fmt_bytes
from zbigarray.cli._walk import resolve_array
from zbigarray.cli.formats import writer_class


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export", help="write an array to a .npy, .h5 or .zarr file",
        description="Write one array to OUT, in the format its suffix names: .npy "
                    "(NumPy; attrs are left out), .h5/.hdf5 (needs h5py; dataset named "
                    "PATH unless --dataset) or .zarr (needs zarr).  Streams in pieces "
                    "with bounded memory; OUT appears only when complete.")
    p.add_argument("db", metavar="DB", help="FileStorage path or URI (zeo://host:port, ...)")
    p.add_argument("path", metavar="PATH", help="the array, e.g. grp/b")
    p.add_argument("out", metavar="OUT", type=Path, help="file to write (.npy, .h5, .zarr)")
    p.add_argument("--at", metavar="TID|TIME", help=_at.HELP)
    p.add_argument("--dataset", metavar="NAME", help="HDF5 dataset name (default: PATH)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(run=run)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run(args: argparse.Namespace) -> int:
    at = _at.parse_at(args.at) if args.at else None
    out: Path = args.out
    Writer = writer_class(out)      # an unknown suffix fails before any work
    if (out.exists() or out.is_symlink()) and not args.force:
        raise CliError(f"{out}: exists (--force replaces it)")
    # Written beside OUT under a hidden name, renamed when complete.
    part = out.with_name(f".{out.name}.part{out.suffix}")
    _remove(part)
    _stream.limit_ram()
    with connection(args.db, at=at) as conn:
        A = resolve_array(conn.root(), args.path)
        dataset = args.dataset or args.path.strip("/")
        try:
            w = Writer(part, A.shape, A.dtype, A.order, dataset)
            try:
                _stream.copy(A.shape, A.dtype, A.order, lambda ix: A[ix], w.write,
                             "exporting")
                warnings = w.set_attrs(A.attrs.asdict())
            finally:
                w.close()
            if args.force:
                _remove(out)
            os.replace(part, out)
        except BaseException:
            _remove(part)
            raise
    for warning in warnings:
        sys.stderr.write(f"zbigarray export: warning: {warning}\n")
    print(f"exported {args.path.strip('/')} ({fmt_bytes(A.nbytes)}) to {out}")
    return 0

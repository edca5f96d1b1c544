"""Command-line tools: ``python -m zbigarray <command>`` (or ``zbigarray``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _size(text: str) -> int:
    from zbigarray.bigfile import ram_parse_size

    try:
        return int(ram_parse_size(text))
    except (ValueError, OverflowError) as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512M, 1G): {e}") from e


def _migrate(db: str, dry_run: bool) -> int:
    from zbigarray.storage.wendelin_migrate import migrate

    def progress(done: int, total: int | None) -> None:
        # A bar redrawn in place on a terminal; into a file or pipe nothing
        # (the summary follows).  The storage's object count includes
        # unreachable objects: the bar may end short of full.
        if sys.stderr.isatty():
            bar = ""
            if total:
                filled = 30 * min(done, total) // total
                bar = f"[{'#' * filled}{'.' * (30 - filled)}] "
            sys.stderr.write(f"\r  scanning {bar}{done}{f' of {total}' if total else ''} objects ")
            sys.stderr.flush()

    try:
        summary = migrate(db, dry_run=dry_run, progress=progress)
    except KeyboardInterrupt:
        sys.stderr.write("\nzbigarray migrate: interrupted; the database is unchanged\n")
        return 130
    except (OSError, RuntimeError, ValueError) as e:
        sys.stderr.write(f"zbigarray migrate: error: {e}\n")
        return 1
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(summary.describe(dry_run))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="zbigarray",
        description="NumPy arrays bigger than RAM, stored in ZODB, changed under transactions.")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    demo = sub.add_parser(
        "demo", help="create, fill, re-read and append to an array bigger than RAM",
        description="Create a FileStorage in DIR holding a ZBigArray of SIZE bytes, with "
                    "the RAM for pages limited to RAM bytes (SIZE several times RAM shows "
                    "out-of-core work); fill it chunk by chunk, re-open it, compute "
                    "statistics, append, show an abort, and print timings.")
    demo.add_argument("--path", type=Path, default=Path("zbigarray-demo"), metavar="DIR",
                      help="directory for the database (default: ./zbigarray-demo; "
                           "an earlier demo.fs there is replaced)")
    demo.add_argument("--size", type=_size, default=_size("1G"),
                      help="array size, with K/M/G suffix (default: 1G)")
    demo.add_argument("--ram", type=_size, default=_size("64M"),
                      help="RAM capacity for pages (default: 64M)")
    migrate = sub.add_parser(
        "migrate", help="rewrite a wendelin.core database's arrays as zbigarray's classes",
        description="Rewrite the arrays of a database written by wendelin.core (its "
                    "ZBigArray, ZBigFile and block objects, and the references to them) "
                    "as zbigarray's own classes, in one transaction committed at the end: "
                    "interrupting leaves the database unchanged, and a second run finds "
                    "nothing to do.  Afterwards the database opens without the "
                    "compatibility layer, and wendelin.core no longer reads its arrays.  "
                    "Stop every process writing to the database first.")
    migrate.add_argument("db", metavar="DB",
                         help="FileStorage path or URI (zeo://host:port, postgres://...)")
    migrate.add_argument("--dry-run", action="store_true",
                         help="scan and report what would be rewritten; write nothing")
    args = parser.parse_args(argv)
    if args.command == "migrate":
        return _migrate(args.db, args.dry_run)
    if args.command == "demo":
        if args.ram < 4 << 20:
            parser.error("--ram must be at least 4M (two 2 MiB blocks)")
        if args.size < 1 << 20:
            parser.error("--size must be at least 1M")
        # The default RAM reads its capacity once, when first used.
        os.environ["ZBIGARRAY_RAM_MAX"] = str(args.ram)
        from zbigarray import demo as demo_mod

        demo_mod.run(args.path, args.size, args.ram)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
    args = parser.parse_args(argv)
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

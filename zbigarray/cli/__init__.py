"""The command line: ``python -m zbigarray COMMAND`` (or ``zbigarray``).

One module per command (``ls``, ``info``, ``export``, ``import_``, ``pack``,
``rm``, ``demo``, ``migrate``), each with ``add_parser`` and ``run``; the
private modules are what several share: opening the database
(``_open``), paths of arrays (``_walk``), ``--at`` (``_at``), what is
stored (``_inspect``), streaming copies (``_pieces``, ``_stream``,
``formats/``), the progress bar and units.

Errors users can fix (no database, a locked one, an unknown path, a bad
``--at``, a failing server) are one line on stderr and exit status 1; usage
errors are argparse's, status 2; Ctrl-C is status 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from zbigarray.cli._errors import CliError

__all__ = ["CliError", "main"]

COMMANDS = ("ls", "info", "export", "import_", "rm", "pack", "demo", "migrate")
"""Modules of this package, one per command, in ``--help`` order."""


class _OneLine(logging.Formatter):
    """Log records as one line each: a library's traceback would bury the
    one line that says what went wrong."""

    def format(self, record: logging.LogRecord) -> str:
        return f"zbigarray: {record.levelname.lower()}: {record.name}: {record.getMessage()}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zbigarray",
        description="NumPy arrays bigger than RAM, stored in ZODB, changed under "
                    "transactions.  DB is a FileStorage path or a URI as open_db takes "
                    "it (zeo://host:port, postgres://..., file://...).")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with `argv` (default: ``sys.argv[1:]``); return
    the exit status."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_OneLine())
        handler.setLevel(logging.WARNING)
        logging.getLogger().addHandler(handler)
    from ZODB.POSException import POSError

    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        sys.stderr.write(f"\nzbigarray {args.command}: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader of our output is gone (`zbigarray ls DB | head`): not
        # an error to report.  Python would complain again when flushing
        # stdout at exit, so stdout goes nowhere from here on.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CliError, OSError, POSError) as e:
        # POSError: ZODB's and ZEO's (a server gone, a conflict with
        # another writer); OSError: the files named on the command line.
        what = str(e) if isinstance(e, CliError) else f"{type(e).__name__}: {e}"
        sys.stderr.write(f"zbigarray {args.command}: error: {' '.join(what.split())}\n")
        return 1

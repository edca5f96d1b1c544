"""``python -m zbigarray``: the command line of :mod:`zbigarray.cli`."""

import sys

from zbigarray.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""The one exception commands raise for a failure the user can fix."""

from __future__ import annotations


class CliError(Exception):
    """A failure reported as one line, ``zbigarray COMMAND: error: MESSAGE``,
    with exit status 1 (the message says what is wrong and, where it can,
    what to do)."""

"""The one exception type users see.

Every problem caused by user input (a missing file, a malformed capture, a bundle written by a
newer pvtrace, an unknown model name) is raised as :class:`PvtraceError`. Its message says what
was wrong, where (``file:line`` when there is one), and what to do. The CLI prints it as one line
on stderr and exits with status 2; any other exception escaping to the user is a bug.
"""

from __future__ import annotations

import re

# Control characters: C0 (tab included), DEL and C1. A line of a damaged capture or a file
# name may hold them; printed raw, an escape sequence recolours the user's terminal and a
# newline breaks the one-line message.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with each control character shown as an escape (``\\x1b``, ``\\n``)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class PvtraceError(Exception):
    """A user-facing error: one line, with a location when there is one."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.message = message
        self.path = path
        self.line = line
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        return printable(where + self.message.replace("\n", " "))

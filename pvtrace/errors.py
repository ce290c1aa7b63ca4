"""The one exception type users see.

Every problem caused by user input (a missing file, a malformed capture, a bundle written by a
newer pvtrace, an unknown model name) is raised as :class:`PvtraceError`. Its message says what
was wrong, where (``file:line`` when there is one), and what to do. The CLI prints it as one line
on stderr and exits with status 2; any other exception escaping to the user is a bug.
"""

from __future__ import annotations


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
        return where + self.message.replace("\n", " ")

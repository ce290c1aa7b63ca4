"""``pvtrace dscript``: print the DTrace script that captures a pvtrace event log.

The script, ``pvtrace/dscripts/pvtrace.d``, ships as package data so that the version that
``pvtrace ingest`` reads is always the version that printed the log. It runs on the FreeBSD
machine under study (this package need not be installed there): print it here, copy it over,
run it with ``dtrace -Z -s pvtrace.d``, copy the log back and ingest it. docs/CAPTURE.md has
the whole procedure.
"""

from __future__ import annotations

import shlex
import sys
from importlib import resources
from pathlib import Path

import typer

from pvtrace.cli import app
from pvtrace.errors import PvtraceError

SCRIPT_NAME = "pvtrace.d"

RUN_HELP = """Print the DTrace capture script pvtrace.d (to stdout or --output).

Run it as root on the FreeBSD machine (kldload dtraceall first), with
dtrace's stderr (drops) kept in the log and the workload's output sent
elsewhere, e.g.

\b
  dtrace -Z -q -x temporal -x bufsize=64m -x switchrate=10hz \\
    -x dynvarsize=32m -s pvtrace.d \\
    -c "sh -c 'make -j32 buildkernel > /var/tmp/build.log 2>&1'" \\
    > capture.log 2>&1

or for a fixed window while a workload runs:

\b
  pvtrace dscript --duration 60 -o pvtrace.d
  dtrace -Z -q -x temporal -x bufsize=64m -x switchrate=10hz \\
    -x dynvarsize=32m -s pvtrace.d > capture.log 2>&1

-Z is required: static helpers such as pmap_pv_promote_pde may be inlined
and then have no fbt probe. Afterwards: pvtrace ingest capture.log -o
bundle. docs/CAPTURE.md has the whole procedure.
"""


def load_script(duration_s: int | None = None) -> str:
    """The capture script; with ``duration_s``, plus a clause that ends it after that long."""
    text = (resources.files("pvtrace") / "dscripts" / SCRIPT_NAME).read_text(encoding="utf-8")
    if duration_s is not None:
        text += (
            f"\n/* Added by `pvtrace dscript --duration {duration_s}`: stop after "
            f"{duration_s} s. */\n"
            f"tick-{duration_s}s\n{{\n\texit(0);\n}}\n"
        )
    return text


# A capture window longer than a week is a typo (such a capture would be terabytes).
MAX_DURATION_S = 7 * 24 * 3600


@app.command(help=RUN_HELP)
def dscript(
    output: str | None = typer.Option(
        None, "--output", "-o", help="Write the script to FILE instead of stdout (- too).",
        metavar="FILE"),
    duration: int | None = typer.Option(
        None, "--duration", min=1, max=MAX_DURATION_S, metavar="SECONDS",
        help="Add a tick-Ns clause that stops the capture after SECONDS (at most a week)."),
    force: bool = typer.Option(
        False, "--force", help="Overwrite --output even when it holds something other than "
                               "a pvtrace.d script."),
) -> None:
    text = load_script(duration)
    if output is None or output == "-":
        sys.stdout.write(text)
        return
    if not output:
        raise PvtraceError("--output is empty: name the file to write")
    if output.endswith("/"):
        raise PvtraceError("names a directory: name the script file", path=output)
    if not force and _holds_something_else(Path(output)):
        # `pvtrace dscript -o capture.log` instead of `> capture.log` would destroy the
        # capture; an earlier pvtrace.d is replaced as asked.
        raise PvtraceError("exists and is not a pvtrace.d script: not overwritten; choose "
                           "another --output, or add --force", path=output)
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise PvtraceError(f"cannot write the script: {exc.strerror}; choose another --output",
                           path=output) from exc
    print(f"pvtrace: wrote {output}; run it with dtrace -Z -s {shlex.quote(output)} "
          f"(see pvtrace dscript --help)", file=sys.stderr)


# How every version of the script begins (its comment's first line names it).
SIGNATURE = b"/*\n * pvtrace.d "


def _holds_something_else(path: Path) -> bool:
    """``path`` is a regular file with content that does not begin as pvtrace.d does (the
    write reports whatever else is wrong with ``path``). Only a regular file is read: a
    FIFO or ``/dev/stdout`` would block the read, and writing to them destroys nothing."""
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            start = f.read(len(SIGNATURE))
    except OSError:
        return False
    return bool(start) and start != SIGNATURE

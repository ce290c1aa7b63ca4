"""The ``pvtrace`` command line: parse options, call one library function per command, render.

Each command lives in its own module of this package and registers itself on :data:`app`.
A :class:`~pvtrace.errors.PvtraceError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import typer

from pvtrace.errors import PvtraceError

app = typer.Typer(
    name="pvtrace",
    help="Replay FreeBSD pmap pv-list lock captures under other lock designs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules register themselves on `app` when imported (one line per module).


def main() -> None:
    try:
        app(standalone_mode=False)
    except PvtraceError as exc:
        print(f"pvtrace: {exc.one_line()}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("pvtrace: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("pvtrace: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise

"""The ``pvtrace`` command line: parse options, call one library function per command, render.

Each command lives in its own module of this package and registers itself on :data:`app`.
A :class:`~pvtrace.errors.PvtraceError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import NoReturn

# pvtrace calls no BLAS routine, but numpy starts OpenBLAS's worker threads when imported, and
# they spin for a while: on a 2-core machine they took 2% of an ingest's CPU samples, and
# 10-20% of its system time, from the parser. Set before anything imports numpy, unless the
# user chose.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402

from pvtrace.errors import PvtraceError  # noqa: E402

app = typer.Typer(
    name="pvtrace",
    help="Replay FreeBSD pmap pv-list lock captures under other lock designs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Replay FreeBSD pmap pv-list lock captures under other lock designs."""
    # A callback keeps `pvtrace COMMAND` a command group even while one command exists.


# Command modules register themselves on `app` when imported (one line per module), and
# `pvtrace --help` lists them in this order: ingest and replay first, as they are used, then
# the capture script and the simulator.
from pvtrace.cli import ingest as _ingest  # noqa: E402,F401
from pvtrace.cli import replay as _replay  # noqa: E402,F401
from pvtrace.cli import dscript as _dscript  # noqa: E402,F401
from pvtrace.cli import synth as _synth  # noqa: E402,F401


class _Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout(1), a batch scheduler), raised in the main thread like Ctrl-C so
    that the same cleanup runs: no scratch copy of a capture, no half-written bundle left."""


_terminated = False


def _on_sigterm(signum, frame) -> None:
    global _terminated
    _terminated = True      # typer turns the interrupt into exit status 130: say which it was
    raise _Terminated()


def _interrupted() -> None:
    if _terminated:
        print("pvtrace: terminated", file=sys.stderr)
        sys.exit(143)
    print("pvtrace: interrupted", file=sys.stderr)
    sys.exit(130)


def main() -> NoReturn:
    """The console script: run the command, then end the process (see :func:`_end`)."""
    try:
        run()
        status: int | str | None = 0
    except SystemExit as exc:
        status = exc.code
    _end(status)


def _end(status: int | str | None) -> NoReturn:
    """End the process with ``status`` as ``sys.exit`` would, but without tearing the
    interpreter down: freeing every object, module by module, and the native libraries'
    destructors took 0.2-0.3 s after a replay of 14 M records (0.1 s after the imports
    alone), a tenth of the command, for memory the kernel reclaims at once anyway. Every
    file pvtrace writes is closed by then (written in ``with`` blocks); what is left is to
    flush the standard streams. When a thread that Python would wait for, or a child
    process, is still alive, their work must finish: the interpreter exits as usual."""
    if isinstance(status, str):
        print(status, file=sys.stderr)
        status = 1
    status = 0 if status is None else status
    main_thread = threading.main_thread()
    waiting = [t for t in threading.enumerate() if t is not main_thread and not t.daemon]
    children = "multiprocessing" in sys.modules and sys.modules[
        "multiprocessing"].active_children()
    if waiting or children:
        sys.exit(status)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        sys.exit(status)        # the usual exit reports it (and sets status 120)
    os._exit(status)


def run() -> None:
    """The command line in this process (``sys.argv``); ends with ``SystemExit`` unless the
    command succeeds (what :func:`main`, the console script, ends the process with)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        # Without standalone mode, an Exit raised by a command comes back as a return value.
        status = app(standalone_mode=False)
        if status == 130:       # typer's answer to a KeyboardInterrupt in a command
            _interrupted()
        if isinstance(status, int) and status:
            sys.exit(status)
        sys.stdout.flush()      # a full disk or a closed pipe shows here, not at exit
    except PvtraceError as exc:
        print(f"pvtrace: {exc.one_line()}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("pvtrace: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:       # outside a command (while the CLI starts)
        _interrupted()
    except SystemError as exc:
        # The interrupt landed inside numba's dispatcher, which reports it as "returned a
        # result with an exception set": still the user's signal, not a crash.
        if _terminated or isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            _interrupted()
        raise
    except MemoryError:
        print("pvtrace: out of memory: an ingest needs about 25 bytes per record and a replay "
              "about 100 (README, section \"Performance\"); capture a shorter window",
              file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # The reader went away (`pvtrace compare B | head -1`): nothing more to say. Point
        # stdout at /dev/null so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except typer.TyperException as exc:  # click (vendored by typer) usage errors
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if message.strip():       # (no arguments at all: the help was shown instead)
            print(f"pvtrace: {' '.join(message.split())}{hint}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        # Not the user's input (that is a PvtraceError): the output or the machine, e.g.
        # stdout on a full disk. One line, as for any error the user must act on.
        print(f"pvtrace: {exc.strerror or exc}", file=sys.stderr)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(2)

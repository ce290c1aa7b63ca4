"""The ``pvtrace`` command line: parse options, call one library function per command, render.

Each command lives in its own module of this package and registers itself on :data:`app`.
A :class:`~pvtrace.errors.PvtraceError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import gc
import io
import os
import sys
import threading
from typing import NoReturn

# pvtrace calls no BLAS routine, but numpy starts OpenBLAS's worker threads when imported, and
# they spin for a while: on a 2-core machine they took 2% of an ingest's CPU samples, and
# 10-20% of its system time, from the parser. Set before anything imports numpy, unless the
# user chose.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402

from pvtrace import signals  # noqa: E402
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


class _ReaderGone(Exception):
    """Standard output's reader went away (``pvtrace synth -o - | head -1``). Not an
    OSError: click turns an EPIPE OSError into exit status 1, a shell tool's is 141."""


class _WholeWrites(io.RawIOBase):
    """A file descriptor whose writes are done in full or raise.

    When the kernel takes only part of a write (a file that reaches ``ulimit -f`` or fills
    the disk, a pipe whose reader exits), Python's buffered stdout returns the short count
    and its text layer ignores it: the rest of the output was dropped, the command exited 0
    and ``pvtrace synth -o -`` even reported every record written. Writing the rest makes
    the kernel say why it cannot (EFBIG, ENOSPC, EPIPE)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._failed = False    # once said, later writes (the flush at exit) are dropped

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view) and not self._failed:
            try:
                done += os.write(self._fd, view[done:])
            except OSError as exc:
                self._failed = True
                if isinstance(exc, BrokenPipeError):
                    raise _ReaderGone() from None
                raise PvtraceError(f"cannot write to standard output: "
                                   f"{exc.strerror or exc}") from None
        return len(view)


def _whole_stdout() -> None:
    """Make ``sys.stdout`` write in full or fail (see :class:`_WholeWrites`)."""
    out = sys.stdout
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return              # not a real file (a test harness's capture): nothing to fix
    out.flush()
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_WholeWrites(fd)), encoding=out.encoding, errors=out.errors,
        line_buffering=out.line_buffering)


def _python_sigint() -> None:
    """Give SIGINT back to Python (:func:`pvtrace.signals.install`). Importing polars
    installs its own handler with SA_RESTART (pola-rs/polars#21739): a read from a stalled
    pipe or FIFO (``pvtrace ingest <(ssh box cat capture.log)``) was restarted after Ctrl-C
    and never raised KeyboardInterrupt, and only SIGKILL ended the command."""
    import polars  # noqa: F401

    signals.install()


def main() -> NoReturn:
    """The console script: run the command, then end the process (see :func:`_end`).

    Python's cyclic garbage collector is off for the command. The libraries a command
    imports as it goes (polars, pyarrow, numba) bring hundreds of thousands of objects, and
    each full collection walks them all: `ingest`, `replay` and `compare` of the bench
    captures spent 0.12-0.13 s in 270-280 collections, which found about 1,000 objects of
    garbage in all. Memory is reclaimed by reference counting as before; a command is
    short-lived, and the kernel takes the rest when it ends."""
    gc.disable()
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
    signals.install()
    try:
        _python_sigint()
        _whole_stdout()
        # Without standalone mode, an Exit raised by a command comes back as a return value.
        status = app(standalone_mode=False)
        if status == 130:       # typer's answer to a KeyboardInterrupt in a command
            signals.exit_stopped()
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
        signals.exit_stopped()
    except SystemError as exc:
        # The interrupt landed inside numba's dispatcher, which reports it as "returned a
        # result with an exception set": still the user's signal, not a crash.
        if signals.received or isinstance(exc.__cause__ or exc.__context__,
                                          KeyboardInterrupt):
            signals.exit_stopped()
        raise
    except MemoryError:
        print("pvtrace: out of memory: an ingest needs about 25 bytes per record and a replay "
              "about 100 (README, section \"Performance\"); capture a shorter window",
              file=sys.stderr)
        sys.exit(2)
    except (BrokenPipeError, _ReaderGone):
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
    except BaseException as exc:
        # Ctrl-C while polars ran Python code for pvtrace (pl.from_arrow): polars turns the
        # KeyboardInterrupt into a pyo3 PanicException, which printed 240 lines of traceback.
        if signals.received and type(exc).__name__ == "PanicException":
            signals.exit_stopped()
        raise

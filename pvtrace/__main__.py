"""``python -m pvtrace``, and the ``pvtrace`` console script's entry point."""

from pvtrace import signals


def main() -> None:
    """Load the command line and run it. SIGINT and SIGTERM are handled first: the CLI's
    modules (typer, rich, then polars) take a second or more to load from a cold disk, and a
    Ctrl-C then printed a traceback of the import instead of one line."""
    signals.install()
    try:
        from pvtrace.cli import main as cli
    except KeyboardInterrupt:
        signals.exit_stopped()
    cli()


if __name__ == "__main__":
    main()

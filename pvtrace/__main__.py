"""``python -m pvtrace`` runs the command-line interface."""

from pvtrace.cli import main

main()

"""pvtrace: replay FreeBSD pmap lock captures under other lock designs.

The data flows one way::

    raw text --ingest--> trace bundle (Parquet) --timeline--> per-thread steps
             --model--> lock keys --replay kernel--> waits/holds --metrics--> report

Nothing in the package imports :mod:`pvtrace.cli`.
"""

__version__ = "0.1.0"

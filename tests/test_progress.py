"""Progress of long stages: what the library announces, and the terminal display."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

from rich.console import Console

from pvtrace import progress
from pvtrace.cli.progress import shown
from pvtrace.ingest import pvlog, run_ingest, stream
from pvtrace.replay.api import REPLAY_COLUMNS, replay_trace

SAMPLE = sorted((Path(__file__).resolve().parents[1] / "sample_traces").glob("*.log.gz"))[0]


class Recorder:
    """Stages as [description, total, units advanced]."""

    def __init__(self):
        self.stages: list[list] = []

    def stage(self, what, total):
        self.stages.append([what, total, 0])

    def advance(self, amount):
        self.stages[-1][2] += amount

    def named(self, prefix):
        return [s for s in self.stages if s[0].startswith(prefix)]


def test_ingest_announces_decompressing_parsing_and_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(pvlog, "ONE_BATCH_BYTES", 0)     # streamed in batches ...
    monkeypatch.setattr(pvlog, "BATCH_ROWS", 500)         # ... of 500 lines
    lines = len(gzip.decompress(SAMPLE.read_bytes()).splitlines())
    seen = Recorder()
    with progress.listening(seen):      # the sample's events are written while it is parsed
        run_ingest([str(SAMPLE)], str(tmp_path / "a"))
    assert [s[0].split()[0] for s in seen.stages] == ["decompressing", "parsing"]
    # sorted after the parse, they are written in a stage of their own
    monkeypatch.setattr(stream.EventStream, "add", lambda self, events: self.give_up("test"))
    seen = Recorder()
    with progress.listening(seen):
        result = run_ingest([str(SAMPLE)], str(tmp_path / "b"))
    assert [s[0].split()[0] for s in seen.stages] == ["decompressing", "parsing", "writing"]
    (unzip,), (parse,), (write,) = (seen.named(w) for w in ("decomp", "pars", "writ"))
    assert unzip[1] == unzip[2] == SAMPLE.stat().st_size     # compressed bytes
    assert parse[1] == parse[2] == lines
    assert write[1] == write[2] == result.records
    assert progress._listener is None                      # restored after the block


def test_replay_announces_loading_and_each_design(tmp_path):
    run_ingest([str(SAMPLE)], str(tmp_path / "b"))
    seen = Recorder()
    with progress.listening(seen):
        replay_trace(str(tmp_path / "b"), ["stock", "obm"])
    # the captured waits are summarized alongside the designs, with no stage of their own
    assert [s[0] for s in seen.stages][1:] == ["replaying stock", "replaying obm"]
    assert seen.stages[0][0].startswith("loading ") and seen.stages[0][0].endswith(" events")
    assert seen.stages[0][1] == seen.stages[0][2] == len(REPLAY_COLUMNS)
    seen = Recorder()
    with progress.listening(seen):      # the timeline comes from the cache: nothing to load
        replay_trace(str(tmp_path / "b"), ["stock", "obm", "ideal"], jobs=2)
    assert seen.stages == [["replaying stock, obm, ideal, 2 at a time", 3, 3]]


def test_terminal_shows_the_stages_and_pipes_get_nothing(tmp_path):
    screen = io.StringIO()
    with shown(console=Console(file=screen, force_terminal=True, width=100)):
        assert progress._listener is not None
        run_ingest([str(SAMPLE)], str(tmp_path / "b"))
    assert "decompressing" in screen.getvalue() and "parsing" in screen.getvalue()
    assert progress._listener is None
    pipe = io.StringIO()
    for console, quiet in ((Console(file=pipe), False),
                           (Console(file=pipe, force_terminal=True), True)):
        with shown(console=console, quiet=quiet):
            assert progress._listener is None
    assert pipe.getvalue() == ""

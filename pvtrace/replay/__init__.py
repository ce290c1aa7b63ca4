"""Replay: re-execute captured lock traffic under another lock design (docs/REPLAY.md)."""

"""Lock designs a capture can be replayed under. Add one by writing a small module and naming
its class here."""

from __future__ import annotations

from pvtrace.errors import PvtraceError
from pvtrace.models.base import Design
from pvtrace.models.ideal import Ideal
from pvtrace.models.layout import Layout
from pvtrace.models.obm import Obm, ObmPvc, ObmRw
from pvtrace.models.stock import Stock

DESIGNS: dict[str, type[Design]] = {d.name: d for d in (Stock, ObmPvc, Obm, ObmRw, Ideal)}


def get_design(name: str, layout: Layout) -> Design:
    try:
        return DESIGNS[name](layout)
    except KeyError:
        raise PvtraceError(f"unknown model {name!r}; known: {', '.join(DESIGNS)} "
                           "(see `pvtrace models`)") from None

"""Human-readable replay reports: rich tables a kernel developer reads at a glance.

``compare_tables`` puts designs side by side (rows = designs) with the change against the
``stock`` row, or against the capture itself (the ``observed`` row) when stock was not
replayed, as in ``replay --model obm``; ``class_tables`` shows where the
waits went per lock class, which is how a design that only moves contention to the pmap mutex
shows itself. All inputs are the SPEC report object, so JSON and text never disagree.
"""

from __future__ import annotations

from rich.markup import escape as _escape_markup
from rich.table import Table
from rich.text import Text

from pvtrace.errors import printable


def escape(text: str) -> str:
    """The capture's or the user's text (paths, lock classes, op names, dtrace's messages)
    shown as itself: rich markup escaped ("[/x]" is a legal op name) and control characters
    shown as escapes (an ESC from a capture would recolour the terminal)."""
    return _escape_markup(printable(text))

CLASS_NAMES = {"pv": "pv list", "pvc": "pv chunk list", "pmap": "pmap mutex"}


def fmt_ns(ns: int | float) -> str:
    """Nanoseconds in the largest unit that keeps three significant digits, trailing zeros
    included ("5.00 ms" next to "5.09 ms", not "5 ms"); below 1 us, whole nanoseconds."""
    ns = float(ns)
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(ns) >= scale * 0.9995:     # what rounds to 1.00 of the unit is in it
            v = ns / scale
            # decimals for three significant digits of the rounded value
            places = 2 if abs(v) < 9.995 else 1 if abs(v) < 99.95 else 0
            return f"{v:.{places}f} {unit}"
    return f"{ns:.0f} ns"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 forced grant", "3 forced grants"."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def fmt_change(value: float, base: float) -> str:
    if base == 0:
        return "-" if value == 0 else "new"
    pct = (value - base) / base * 100.0
    return f"{pct:+.1f}%"


def _baseline(report: dict) -> tuple[str, dict]:
    """What the designs are compared with: the replayed stock kernel, which differs from the
    capture only by what a replay cannot reproduce, else the capture itself."""
    for m in report["models"]:
        if m["model"] == "stock":
            return "stock", m
    return "observed", report["observed"]


def trace_line(report: dict) -> str:
    t = report["trace"]
    # Paths, lock classes and op names are the user's text: "[/x]" is a legal op name, and
    # rich would read it as markup (and fail, or hide it).
    line = (f"{escape(t['path'])}: {count(t['events'], 'event')}, "
            f"{count(t['threads'], 'thread')}, {fmt_ns(t['span_ns'])} span, captured layout "
            f"{t['layout']}"
            + (" (assumed)" if t.get("layout_assumed") else ""))
    # Where a bundle's events came from: a table pasted elsewhere keeps its provenance.
    files = [i["path"] for i in t.get("inputs", []) if i.get("path")]
    if files and files != [t["path"]]:
        shown = ", ".join(escape(f) for f in files[:3]) + (
            f" and {len(files) - 3} more" if len(files) > 3 else "")
        line += f"\n  capture {'file' if len(files) == 1 else 'files'}: {shown}"
    return line


def _cell_width(cell: str) -> int:
    return Text.from_markup(cell).cell_len


def fitted(title: str, columns: list[tuple[str, str]], rows: list[tuple[list[str], str]],
           width: int | None = None, caption: str | None = None) -> list[Table]:
    """One table of ``columns`` (header, justify) and ``rows`` (cells, style), or, when it
    would be wider than ``width``, several that each fit: the first column (what a row is)
    starts each, the others follow in order. A terminal narrower than a table cut every
    cell to "..." instead (design names and numbers alike)."""
    # rich's box: one border per column plus one, and a space of padding each side
    widths = [max([_cell_width(h)] + [_cell_width(cells[k]) for cells, _ in rows]) + 3
              for k, (h, _) in enumerate(columns)]
    groups: list[list[int]] = [[]]
    used = 1 + widths[0]
    for k in range(1, len(columns)):
        if width is not None and groups[-1] and used + widths[k] > width:
            groups.append([])
            used = 1 + widths[0]
        groups[-1].append(k)
        used += widths[k]
    tables = []
    for g, group in enumerate(groups):
        part = f" ({g + 1} of {len(groups)})" if len(groups) > 1 else ""
        table = Table(title=title + part, title_justify="left",
                      caption=caption if g == len(groups) - 1 else None, caption_justify="left")
        for k in [0, *group]:
            table.add_column(columns[k][0], justify=columns[k][1], no_wrap=True)
        for cells, style in rows:
            table.add_row(*[cells[k] for k in [0, *group]], style=style or None)
        tables.append(table)
    return tables


def compare_tables(report: dict, width: int | None = None) -> list[Table]:
    """Designs side by side (see :func:`fitted` for ``width``)."""
    base_name, base = _baseline(report)
    obs = report["observed"]
    columns = [("design", "left"), ("acquired", "right"), ("contended", "right"),
               ("wait", "right"), ("spin", "right"), ("block", "right"),
               ("false blocks", "right"), ("true blocks", "right"),
               ("sibling wakeups", "right"), ("p99 cont. wait", "right"),
               ("makespan", "right"), (f"wait vs {base_name}", "right"),
               (f"makespan vs {base_name}", "right")]
    rows = [([
        "[dim]observed[/dim]", f"{obs['acquisitions']:,}", f"{obs['contended']:,}",
        fmt_ns(obs["wait_ns"]), fmt_ns(obs["spin_ns"]), fmt_ns(obs["block_ns"]), "", "", "",
        fmt_ns(obs["contended_wait_percentiles_ns"]["p99"]), fmt_ns(obs["makespan_ns"]), "", ""],
        "dim")]
    for m in report["models"]:
        rows.append(([
            m["model"], f"{m['acquisitions']:,}", f"{m['contended']:,}", fmt_ns(m["wait_ns"]),
            fmt_ns(m["spin_ns"]), fmt_ns(m["block_ns"]),
            f"{m['false_block']['count']:,} ({fmt_ns(m['false_block']['wait_ns'])})",
            f"{m['true_block']['count']:,} ({fmt_ns(m['true_block']['wait_ns'])})",
            f"{m['sibling_wakeups']:,}", fmt_ns(m["contended_wait_percentiles_ns"]["p99"]),
            fmt_ns(m["makespan_ns"]), fmt_change(m["wait_ns"], base["wait_ns"]),
            fmt_change(m["makespan_ns"], base["makespan_ns"])], ""))
    return fitted("Replayed lock waits per design", columns, rows, width)


def class_tables(report: dict, width: int | None = None) -> list[Table]:
    """Wait per lock class and design: where contention went."""
    classes = sorted({c for m in report["models"] for c in m["by_class"]}
                     | set(report["observed"]["by_class"]))
    columns = [("design", "left")] + [(CLASS_NAMES.get(c, escape(c)), "right") for c in classes]
    named = [("[dim]observed[/dim]", report["observed"]["by_class"])]
    named += [(m["model"], m["by_class"]) for m in report["models"]]
    rows = []
    for name, by in named:
        cells = [name]
        for c in classes:
            d = by.get(c)
            cells.append("-" if d is None else f"{d['contended']:,} / {fmt_ns(d['wait_ns'])}")
        rows.append((cells, ""))
    return fitted("Wait by lock class", columns, rows, width,
                  caption="contended acquisitions / total wait")


def op_table(model: dict, limit: int = 12) -> Table:
    """The pmap operations that waited most under one design."""
    table = Table(title=f"{model['model']}: pmap operations by wait", title_justify="left")
    for col in ("op", "acquisitions", "contended", "wait", "p99 cont. wait", "p99 hold"):
        table.add_column(col, justify="left" if col == "op" else "right", no_wrap=True)
    ops = sorted(model["by_op"].items(), key=lambda kv: -kv[1]["wait_ns"])[:limit]
    for name, d in ops:
        table.add_row(escape(name), f"{d['acquisitions']:,}", f"{d['contended']:,}",
                      fmt_ns(d["wait_ns"]), fmt_ns(d["contended_wait_percentiles_ns"]["p99"]),
                      fmt_ns(d["hold_percentiles_ns"]["p99"]))
    return table


def notes(report: dict) -> list[str]:
    """Things the user must know to trust the numbers (unmatched records, drops, anomalies)."""
    out = []
    t = report["trace"]
    if t.get("layout_assumed"):
        if t.get("layout_detected") == t["layout"]:
            out.append(f"the capture's pv lock layout {t['layout']} is a guess from the spacing "
                       "of its lock addresses (set it with `pvtrace ingest --layout`)")
        else:
            out.append("the capture's pv lock layout could not be detected; assumed "
                       f"{t['layout']} (set it with `pvtrace ingest --layout`)")
    um = report["observed"]["unmatched"]
    if any(um.get(k) for k in ("orphan_waits", "held_at_start", "held_at_end")):
        out.append(f"unmatched records: {um['orphan_waits']} waits without acquisition, "
                   f"{um['held_at_start']} locks held at capture start, "
                   f"{um['held_at_end']} held at capture end (docs/REPLAY.md section 1)")
    if um.get("mode_mismatch"):
        out.append(f"{count(um['mode_mismatch'], 'release')} in the other mode (w, r) than the "
                   "acquisition paired with it: records between them were lost, and each such "
                   "hold spans two acquisitions (docs/REPLAY.md section 1)")
    skipped = report["trace"].get("skipped_lines") or {}
    if any(skipped.values()):
        out.append(f"ingest skipped {skipped.get('malformed', 0):,} malformed and "
                   f"{skipped.get('cut_off', 0):,} cut-off lines of the capture (their records "
                   "are missing; `pvtrace ingest` of the capture lists them, with their line "
                   "numbers)")
    said = report["trace"].get("dtrace_messages", [])
    for text in said[:3]:
        out.append(f"during the capture, {printable(text)}")
    lines = report["trace"].get("dtrace_message_lines", len(said))
    if lines > min(len(said), 3):
        out.append(f"dtrace printed {lines:,} lines besides drops in all (the first "
                   f"{len(said):,} distinct ones are in the JSON report's "
                   "trace.dtrace_messages, every one in the bundle's diagnostics table); "
                   "each \"error on enabled probe\" line is a record that probe lost")
    drops = report["trace"].get("drops") or {}
    per_cpu = drops.get("per_cpu", {}) if isinstance(drops, dict) else {}
    if per_cpu:
        total = sum(int(v) for v in per_cpu.values())
        cpus = sorted(per_cpu, key=lambda c: (not str(c).isdecimal(), int(c)
                                              if str(c).isdecimal() else 0, str(c)))
        out.append(f"the capture lost {total:,} records to DTrace drops on CPU(s) "
                   f"{', '.join(str(c) for c in cpus)}: waits there may be understated")
    # Dynamic-variable drops lose the thread-local page and operation of some records (their
    # waits then count as unknown pages, or under the wrong operation); aggregation drops
    # are what a script's aggregations lose. Both are capture-wide, not per CPU.
    for key, what in (("dynvar_drops", "dynamic variable drops (raise -x dynvarsize): some "
                                       "records' pages and operations may be missing"),
                      ("aggregation_drops", "aggregation drops")):
        n = drops.get(key) if isinstance(drops, dict) else None
        if isinstance(n, int) and n > 0:
            out.append(f"the capture had {n:,} DTrace {what}")
    for m in report["models"]:
        a = m["anomalies"]
        if a["forced_grants"]:
            out.append(f"{m['model']}: {count(a['forced_grants'], 'forced grant')} (replayed "
                       "lock orders deadlocked)")
        if a["unknown_page_acquisitions"]:
            how = ("held no page lock until a P named their page: their same-page waits are "
                   "missed" if m["params"].get("pv_locks") == "page" else
                   "keyed by their lock; their blocks count as true")
            out.append(f"{m['model']}: {count(a['unknown_page_acquisitions'], 'pv acquisition')}"
                       f" captured without a page ({how}; docs/REPLAY.md section 2)")
    # Design-independent in practice (the capture's records cause them): once, not per row.
    nested = max((m["anomalies"].get("nested_pv_holds", 0) for m in report["models"]), default=0)
    if nested:
        out.append(f"{count(nested, 'pv-list lock')} taken while the thread held one (pmap.c "
                   "holds one at a time: lost records?); the replay released the first, so "
                   "even the captured design can differ from the observed row")
    clamped = max((m["anomalies"].get("clamped_gaps", 0) for m in report["models"]), default=0)
    if clamped:
        out.append(f"{count(clamped, 'recorded wait')} longer than the time since the "
                   "thread's previous record (work gaps clamped at 0: docs/REPLAY.md section 3)")
    return out

"""`train data validate`'s report: problems and warnings (the first 50 of each), a summary table
per file and a histogram of token lengths."""

from __future__ import annotations

from collections.abc import Iterable

from training.data.scan import LengthStats
from training.data.validation import ValidationReport

# print_report shows at most this many problems and warnings each.
REPORT_LIMIT = 50


def _listing(console, noun: str, style: str, entries: list[str]) -> None:
    """`N problems:` (or `1 problem:`) and the first REPORT_LIMIT entries; nothing if none."""
    from rich.text import Text

    if not entries:
        return
    console.print(Text(f"{len(entries)} {noun if len(entries) == 1 else noun + 's'}:", style=style))
    for entry in entries[:REPORT_LIMIT]:
        console.print(Text("  " + entry))
    if len(entries) > REPORT_LIMIT:
        console.print(Text(f"  ... and {len(entries) - REPORT_LIMIT} more", style=style))


def _histogram_lines(stats: LengthStats, width: int = 30) -> Iterable[str]:
    top = max(c for _, _, c in stats.histogram) or 1
    label = max(len(f"{lo}-{hi}") for lo, hi, _ in stats.histogram)
    for lo, hi, count in stats.histogram:
        bar = "█" * round(width * count / top) if count else ""
        yield f"  {f'{lo}-{hi}':>{label}} │{bar} {count}"


def print_report(report: ValidationReport, console) -> None:
    """Problems (the first 50, then how many more), warnings likewise, a summary table per file and
    a histogram of token lengths per file when they were counted."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    _listing(console, "problem", "bold red", report.problems)
    _listing(console, "warning", "yellow", report.warnings)
    if report.files:
        table = Table(title="Data files", title_justify="left", box=box.SIMPLE_HEAD)
        table.add_column("file", overflow="fold", min_width=12, ratio=1)
        for name in ("rows", "format", "bad", "dups", "tokens min/p50/p95/max", "mean", "sha256"):
            justify = "left" if name in ("format", "sha256") else "right"
            table.add_column(name, justify=justify, no_wrap=True)
        for f in report.files:
            t = f.tokens
            table.add_row(
                Text(f.path),
                f"{f.rows:,}",
                f.format or "-",
                str(f.bad_rows),
                str(f.duplicates),
                f"{t.min:,}/{t.median:,}/{t.p95:,}/{t.max:,}" if t else "-",
                f"{t.mean:,.1f}" if t else "-",
                (f.sha256 or "-")[:8],
            )
        console.print(table)
        for f in report.files:
            if f.tokens is not None:
                console.print(Text(f"token lengths of {f.path}:"))
                for line in _histogram_lines(f.tokens):
                    console.print(Text(line))
    if report.ok:
        console.print(
            Text(f"OK: {len(report.files)} files, {report.rows:,} examples", style="green")
        )
    else:
        console.print(
            Text(f"{len(report.problems)} problems: fix the data before training", style="bold red")
        )

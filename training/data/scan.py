"""What one pass over one data file found: its rows, problems, warnings and token lengths, and the
summary `train data validate` reports for it."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field


@dataclass
class LengthStats:
    """Token lengths of a file's examples, as `encode_example` produces them (before truncation)."""

    min: int
    median: int
    p95: int
    max: int
    mean: float
    # (low, high, count): examples with low <= length <= high, ten bins over [min, max].
    histogram: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class FileSummary:
    """One file: ``format`` is the majority format (None when no row has one), ``sha256`` None when the
    file could not be read, ``tokens`` None without a tokenizer (or without a countable row)."""

    path: str
    rows: int  # examples: non-blank lines
    format: str | None
    sha256: str | None
    tokens: LengthStats | None = None
    bad_rows: int = 0  # rows with at least one problem
    duplicates: int = 0  # rows that repeat an earlier row of the same file
    content_key: int | None = None  # equal for files with the same rows (order, repeats aside)
    too_long: int = 0  # examples over max_seq_length, dropped or cut (training.long_examples)


class FileScan:
    """What one pass over one file found."""

    def __init__(self, path: str):
        self.path = path
        self.rows = 0
        self.sha256: str | None = None
        self.problems: list[tuple[int, str]] = []  # (line, message); line 0: the whole file
        self.warnings: list[tuple[int, str]] = []
        self.bad_lines: set[int] = set()
        self.format_lines: dict[str, list[int]] = {}
        self.duplicates = 0
        self.lengths = array("l")
        self.examples: list[dict] = []
        self.first_line: tuple[int, bytes] | None = None  # (number, first non-blank character)
        self.content_key: int | None = None  # the same rows in any order give the same key
        self.too_long = 0  # examples over max_seq_length that the policy drops or cuts

    def problem(self, line: int, message: str) -> None:
        self.problems.append((line, message))
        if line:
            self.bad_lines.add(line)

    def majority_format(self) -> str | None:
        if not self.format_lines:
            return None
        return max(self.format_lines, key=lambda f: len(self.format_lines[f]))  # ties: first seen

    def finish(self) -> None:
        """File-level checks once every line is read."""
        if self.sha256 is not None and self.rows == 0:
            self.problem(0, "empty file, no examples")
        if len(self.format_lines) > 1:
            major = self.majority_format()
            for fmt, lines in self.format_lines.items():
                if fmt == major:
                    continue
                for line in lines:
                    self.problem(
                        line,
                        f"{fmt} row in a file of {major} rows (line {self.format_lines[major][0]} "
                        "is one): a file must use one format",
                    )

    def messages(self, what: str) -> list[str]:
        entries = self.problems if what == "problems" else self.warnings
        entries.sort(key=lambda e: e[0])  # stable: a line's messages keep their order
        return [f"{self.path}:{line}: {m}" if line else f"{self.path}: {m}" for line, m in entries]

    def summary(self) -> FileSummary:
        return FileSummary(
            path=self.path,
            rows=self.rows,
            format=self.majority_format(),
            sha256=self.sha256,
            tokens=length_stats(self.lengths) if self.lengths else None,
            bad_rows=len(self.bad_lines),
            duplicates=self.duplicates,
            content_key=self.content_key,
            too_long=self.too_long,
        )


def _percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of a sorted list."""
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


def length_stats(lengths: list[int]) -> LengthStats:
    ordered = sorted(lengths)
    low, high = ordered[0], ordered[-1]
    bins = 10 if high > low else 1
    width = max(1, -(-(high - low + 1) // bins))
    counts = [0] * bins
    for n in ordered:
        counts[min((n - low) // width, bins - 1)] += 1
    histogram = [
        (low + i * width, min(high, low + (i + 1) * width - 1), c)
        for i, c in enumerate(counts)
        if low + i * width <= high
    ]
    return LengthStats(
        min=low,
        median=_percentile(ordered, 50),
        p95=_percentile(ordered, 95),
        max=high,
        mean=sum(ordered) / len(ordered),
        histogram=histogram,
    )

"""`validate_files`: every file streamed once, every problem as ``path:line: what``, a summary
per file, and (with a tokenizer) each example's exact token count; `load_examples` for training.

Checks before any money is spent: bad JSON or UTF-8, rows of the wrong shape, mixed formats,
duplicates (warnings), and with a tokenizer examples over ``max_seq_length`` tokens. Counting is
`training.data.token_counter`'s job; this module reads and reports.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from training.data.rows import (
    CHAT,
    SURROGATE_ESCAPE,
    DataError,
    check_row,
    jsonl_lines,
    parse_row,
    row_key,
    surrogate_problem,
)
from training.data.scan import FileScan, FileSummary
from training.data.token_counter import TokenCounter


@dataclass
class ValidationReport:
    problems: list[str] = field(default_factory=list)  # "path:line: what is wrong": errors, exit 2
    warnings: list[str] = field(default_factory=list)  # e.g. "path:12: duplicate of line 3"
    files: list[FileSummary] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


# --------------------------------------------------------------------------------------------------
# One pass over one file





def _scan_file(path: str, *, counter: TokenCounter | None = None, keep: bool = False) -> FileScan:
    from training.experiment.paths import file_problem

    scan = FileScan(path)
    if os.path.isdir(path):
        scan.problem(0, "is a directory, not a JSONL file")
        return scan
    problem = file_problem(path)  # a FIFO would block open() forever: never opened
    if problem is not None:
        scan.problem(0, problem)
        return scan
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after a streaming loop
    except FileNotFoundError:
        scan.problem(0, "no such file")
        return scan
    except OSError as e:
        scan.problem(0, f"cannot read: {e.strerror or e}")
        return scan
    digest = hashlib.sha256()
    seen: dict[int, int] = {}
    format_lines = scan.format_lines
    if counter is not None:
        counter.start(scan)
    try:
        with f:
            for number, line in jsonl_lines(f, digest):
                if not line or line.isspace():
                    continue
                scan.rows += 1
                if scan.first_line is None:
                    scan.first_line = number, line.lstrip(b" \t\r\xef\xbb\xbf")[:1]
                row, error = parse_row(number, line)
                if error is None and SURROGATE_ESCAPE.search(line):
                    error = surrogate_problem(row)
                if error is not None:
                    scan.problem(number, error)
                    continue
                fmt, errors = check_row(row)
                if fmt is not None:
                    lines = format_lines.get(fmt)
                    if lines is None:
                        lines = format_lines[fmt] = []
                    lines.append(number)
                if errors:
                    for error in errors:
                        scan.problem(number, error)
                    continue
                key = row_key(row, fmt)
                first = seen.setdefault(key, number)
                if first != number:
                    scan.duplicates += 1
                    scan.warnings.append((number, f"duplicate of line {first}"))
                if counter is not None:
                    counter.add(number, row, fmt)
                if fmt == CHAT and row["messages"][-1]["role"] != "assistant":
                    role = row["messages"][-1]["role"]
                    scan.warnings.append((number, f"conversation ends with a {role} turn: "
                                          "nothing after the last assistant turn is learned"))
                if keep:
                    scan.examples.append(row)
    except OSError as e:
        scan.problem(0, f"cannot read: {e.strerror or e}")
        digest = None
    finally:
        if counter is not None:
            counter.finish()
    scan.sha256 = digest.hexdigest() if digest is not None else None
    scan.content_key = hash(frozenset(seen)) if seen else None
    _whole_file_json(scan)
    scan.finish()
    return scan


_WHOLE_FILE_LIMIT = 64 << 20  # bytes: larger files are not read again to recognise one document


def _whole_file_json(scan: FileScan) -> None:
    """A file that is one JSON document (an array of rows, or an object over many lines) gets
    one message instead of an error for every line."""
    if scan.first_line is None or scan.first_line[1] not in (b"[", b"{"):
        return
    first = scan.first_line[0]
    first_problems = [m for line, m in scan.problems if line == first]
    if not first_problems:
        return  # the first line is a good row
    # the first line is a whole value of its own (e.g. `[1, 2]`) among other rows: check by line
    if scan.rows > 1 and not first_problems[0].startswith("not valid JSON"):
        return
    if scan.first_line[1] == b"[":
        what = "a JSON array, not JSONL"
    else:
        if not first_problems[0].startswith("not valid JSON"):
            return  # a one-line file whose row is bad: that row's own problem is the message
        try:
            if os.path.getsize(scan.path) > _WHOLE_FILE_LIMIT:
                return
            with open(scan.path, "rb") as f:
                json.loads(f.read().decode("utf-8-sig"))
        except (OSError, ValueError, RecursionError):
            return
        what = "one JSON object over several lines, not JSONL"
    jq = "'.[]'" if scan.first_line[1] == b"[" else "."
    scan.problems = [(0, f"{what}: write one JSON object per line (e.g. jq -c {jq} "
                         f"{scan.path} > rows.jsonl)")]
    scan.bad_lines = set()


def load_examples(path) -> list[dict]:
    """The rows of a JSONL file, after the structural checks of `validate_files` (no tokenizer).

    Raises DataError listing every problem (``path:line: what``). Duplicates are not an error."""
    scan = _scan_file(str(path), keep=True)
    if scan.problems:
        raise DataError(scan.messages("problems"))
    return scan.examples


def _expand(paths) -> Iterator[tuple[str, str | None]]:
    """(path, problem) per file to check; a directory stands for its *.jsonl files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in paths:
        p = str(p)
        if os.path.isdir(p):
            files = sorted(str(x) for x in Path(p).glob("*.jsonl"))
            if not files:
                yield p, "no .jsonl files in this directory"
            for x in files:
                yield x, None
        else:
            yield p, None


def validate_files(paths, tokenizer=None, max_seq_length: int | None = None,
                   long_examples: str = "error") -> ValidationReport:
    """Check JSONL files (a directory stands for its *.jsonl files), streaming each once.

    Problems (errors): bad JSON or UTF-8, rows of the wrong shape or types, unknown formats, empty
    content, unknown or empty roles, conversations with no assistant turn (or starting with one),
    files that mix formats, empty or missing files, and with a tokenizer and ``max_seq_length``
    examples longer than ``max_seq_length`` tokens. Warnings: duplicate rows (naming the earlier
    line) and text that contains a special token's string. With a tokenizer every file's summary
    has token length statistics, equal to ``len(encode_example(row, ...)["input_ids"])`` before
    truncation. ``long_examples`` (training.long_examples): with ``drop`` or ``truncate`` an
    example over ``max_seq_length`` is not a problem; each file's count of them is a warning and
    its summary's ``too_long``."""
    report = ValidationReport()
    counter = (TokenCounter(tokenizer, max_seq_length, long_examples)
               if tokenizer is not None else None)
    try:
        for path, problem in _expand(paths):
            if problem is not None:
                report.problems.append(f"{path}: {problem}")
                continue
            scan = _scan_file(path, counter=counter)
            report.problems += scan.messages("problems")
            report.warnings += scan.messages("warnings")
            report.files.append(scan.summary())
    finally:
        if counter is not None:
            counter.close()
    return report


def same_data_warnings(files: dict[str, FileSummary]) -> list[str]:
    """Warnings for roles of a pair given the same data: both arms (the pair compares nothing) or
    an arm and the eval set (eval loss measures memorisation). `files` maps a role (control,
    experiment, eval) to its summary; the same file, the same bytes, or the same rows in another
    order all count."""
    warnings = []
    roles = list(files)
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            fa, fb = files[a], files[b]
            if os.path.realpath(fa.path) == os.path.realpath(fb.path):
                how = f"the same file ({fa.path})"
            elif fa.sha256 and fa.sha256 == fb.sha256:
                how = f"identical files ({fa.path} and {fb.path})"
            elif fa.content_key is not None and fa.content_key == fb.content_key:
                how = f"the same rows in another order ({fa.path} and {fb.path})"
            else:
                continue
            why = ("the pair compares nothing" if {a, b} == {"control", "experiment"}
                   else "eval loss would measure memorisation, not generalisation")
            warnings.append(f"{a} and {b} are {how}: {why}")
    return warnings

"""Training data: JSONL reading and validation, chat templating, prompt masking.

Three row formats are accepted, one per file:

- chat: ``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}``
- prompt/completion: ``{"prompt": str, "completion": str}``
- text: ``{"text": str}``

Other keys on a row (ids, metadata) are ignored.

`validate_files` checks files before any money is spent: it streams each file once, reports every
bad line as ``path:line: what is wrong``, warns about duplicates, and with a tokenizer counts each
example's tokens exactly as `encode_example` (what training sees) would produce them. Counting is
built for millions of rows: chat rows in the Llama-3 format are rendered by plain string formatting
(checked against the tokenizer's own jinja template first), cut at the template's special tokens
into pieces that the tokenizer would encode independently anyway, and the distinct pieces are
encoded in batches by the Rust tokenizer on a worker thread while this thread parses the next lines.
Any other chat template goes through ``apply_chat_template`` (slower, equally exact).

`encode_example` is the training view of one row: ``input_ids`` and ``labels`` where only what the
model should learn is labelled (assistant turns, completions, whole texts) and the rest is -100.
`encode_examples` does the same for a list of rows with one tokenizer call (use it for datasets).
Assistant turns are located by rendering the conversation up to each turn with the template (any
template whose earlier turns do not change with later ones); for Llama-3's template, verified by
rendering probe conversations and each call's first conversation, the same text and spans are laid
out directly, without jinja.

Nothing heavy is imported here at module level: the CLI imports this module for ``train data
validate`` without a tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHAT, PROMPT_COMPLETION, TEXT = "chat", "prompt_completion", "text"
FORMATS = (CHAT, PROMPT_COMPLETION, TEXT)
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100

# print_report shows at most this many problems and warnings each.
REPORT_LIMIT = 50

_READ_CHUNK = 1 << 22  # bytes per read while streaming a file
_BATCH_ROWS = 4096  # rows per tokenizer batch
_PIECE_CACHE_MAX = 100_000  # repeated pieces whose token counts are remembered across batches
_BOM = b"\xef\xbb\xbf"

# Llama-3's chat markup (see training.models.LLAMA3_CHAT_TEMPLATE).
_HEADER_START, _HEADER_END, _EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"


class DataError(Exception):
    """Training data is unusable. ``problems`` lists every one as ``path:line: what``."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


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
# Formats and structural checks


def detect_format(row: dict) -> str:
    """``chat`` if the row has ``messages``, else ``prompt_completion`` if it has both ``prompt`` and
    ``completion``, else ``text`` if it has ``text``; ValueError otherwise. Types are not checked here
    (see `load_examples`)."""
    if not isinstance(row, dict):
        raise ValueError(f"not a JSON object (got {_json_type(row)})")
    if "messages" in row:
        return CHAT
    if "prompt" in row and "completion" in row:
        return PROMPT_COMPLETION
    if "text" in row:
        return TEXT
    raise ValueError(_unknown_format(row))


def _unknown_format(row: dict) -> str:
    if "prompt" in row:
        return "unknown format: 'prompt' without 'completion'"
    if "completion" in row:
        return "unknown format: 'completion' without 'prompt'"
    keys = ", ".join(repr(k) for k in list(row)[:8]) or "none"
    return (
        "unknown format: expected 'messages' (chat), 'prompt' and 'completion', or 'text'; "
        f"found keys: {keys}"
    )


_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _check_row(row: Any) -> tuple[str | None, list[str]]:
    """The row's format (None when unknown) and what is wrong with it (empty when nothing)."""
    if type(row) is not dict:
        return None, [f"not a JSON object (got {_json_type(row)})"]
    if "messages" in row:
        errors = _check_chat(row["messages"])
        other = [k for k in ("prompt", "text") if k in row]
        if other:
            errors.append(f"has keys of more than one format: 'messages' and {other[0]!r}")
        return CHAT, errors
    if "prompt" in row and "completion" in row:
        errors = []
        for key in ("prompt", "completion"):
            value = row[key]
            if type(value) is not str:
                errors.append(f"{key} must be a string, got {_json_type(value)}")
            elif not value or value.isspace():
                errors.append(f"{key} is empty")
        if "text" in row:
            errors.append("has keys of more than one format: 'prompt'/'completion' and 'text'")
        return PROMPT_COMPLETION, errors
    if "text" in row:
        value = row["text"]
        if type(value) is not str:
            return TEXT, [f"text must be a string, got {_json_type(value)}"]
        if not value or value.isspace():
            return TEXT, ["text is empty"]
        return TEXT, []
    return None, [_unknown_format(row)]


def _check_chat(messages: Any) -> list[str]:
    if type(messages) is not list:
        return [f"messages must be a list, got {_json_type(messages)}"]
    if not messages:
        return ["messages is empty"]
    errors = []
    has_assistant = False
    for j, message in enumerate(messages, 1):
        if type(message) is not dict:
            errors.append(f"message {j} is not an object (got {_json_type(message)})")
            continue
        role = message.get("role")
        content = message.get("content")
        if type(role) is not str:
            what = (
                "has no role" if role is None else f"role must be a string, got {_json_type(role)}"
            )
            errors.append(f"message {j} {what}")
            role = "?"
        elif role not in ROLES:
            if not role or role.isspace():
                errors.append(f"message {j}: role is empty")
            else:
                errors.append(
                    f"message {j}: unknown role {role!r} (expected system, user or assistant)"
                )
        elif role == "assistant":
            has_assistant = True
            if j == 1:
                errors.append(
                    "message 1 is an assistant turn: a conversation starts with system or user"
                )
        if type(content) is not str:
            what = (
                "has no content"
                if content is None
                else (f"content must be a string, got {_json_type(content)}")
            )
            errors.append(f"message {j} ({role}) {what}")
        elif not content or content.isspace():
            errors.append(f"message {j} ({role}): content is empty")
    if not has_assistant:
        errors.append("no assistant message to learn from")
    return errors


def _row_key(row: dict, fmt: str) -> int:
    """A cheap hash of what the row teaches (extra keys such as ids do not count)."""
    if fmt == CHAT:
        return hash(tuple((m["role"], m["content"]) for m in row["messages"]))
    if fmt == PROMPT_COMPLETION:
        return hash((PROMPT_COMPLETION, row["prompt"], row["completion"]))
    return hash((TEXT, row["text"]))


# --------------------------------------------------------------------------------------------------
# Reading files


def file_sha256(path) -> str:
    """Hex sha256 of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _lines(f, digest) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the newline) for every line; feeds the digest all bytes."""
    carry = b""
    number = 0
    while chunk := f.read(_READ_CHUNK):
        digest.update(chunk)
        parts = chunk.split(b"\n")
        parts[0] = carry + parts[0]
        carry = parts.pop()
        for part in parts:
            number += 1
            yield number, part
    if carry:
        yield number + 1, carry


def _parse(number: int, line: bytes) -> tuple[Any, str | None]:
    """The line's JSON value, or (None, what is wrong)."""
    if number == 1 and line.startswith(_BOM):
        line = line[3:]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"not valid JSON: {e.msg} at column {e.colno}"
    except RecursionError:
        return None, "not valid JSON: nested too deeply"


class _FileScan:
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
            tokens=_length_stats(self.lengths) if self.lengths else None,
            bad_rows=len(self.bad_lines),
            duplicates=self.duplicates,
            content_key=self.content_key,
        )


def _scan_file(path: str, *, counter: _TokenCounter | None = None, keep: bool = False) -> _FileScan:
    from training.paths import file_problem

    scan = _FileScan(path)
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
            for number, line in _lines(f, digest):
                if not line or line.isspace():
                    continue
                scan.rows += 1
                if scan.first_line is None:
                    scan.first_line = number, line.lstrip(b" \t\r\xef\xbb\xbf")[:1]
                row, error = _parse(number, line)
                if error is None and _SURROGATE_ESCAPE.search(line):
                    error = _surrogate_problem(row)
                if error is not None:
                    scan.problem(number, error)
                    continue
                fmt, errors = _check_row(row)
                if fmt is not None:
                    lines = format_lines.get(fmt)
                    if lines is None:
                        lines = format_lines[fmt] = []
                    lines.append(number)
                if errors:
                    for error in errors:
                        scan.problem(number, error)
                    continue
                key = _row_key(row, fmt)
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


# A \uD800-\uDFFF escape: json.loads turns a lone one into a str the tokenizer cannot encode.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _surrogate_problem(value, where: str = "") -> str | None:
    """`lone surrogate ...` for the first string in `value` that is not valid Unicode, else None
    (a proper pair of escapes is one character and passes)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return (f"lone surrogate \\u{ord(value[e.start]):04x} in {where or 'the row'}: not "
                    "valid Unicode (half of an emoji?); fix or drop this row")
        return None
    if isinstance(value, dict):
        sep = " " if where.startswith("message ") else "."
        items = ((f"{where}{sep}{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        labels = (f"message {i}" if where == "messages" else f"{where}[{i - 1}]"
                  for i in range(1, len(value) + 1))
        items = zip(labels, value, strict=True)
    else:
        return None
    for label, item in items:
        problem = _surrogate_problem(item, label)
        if problem:
            return problem
    return None


_WHOLE_FILE_LIMIT = 64 << 20  # bytes: larger files are not read again to recognise one document


def _whole_file_json(scan: _FileScan) -> None:
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


def validate_files(paths, tokenizer=None, max_seq_length: int | None = None) -> ValidationReport:
    """Check JSONL files (a directory stands for its *.jsonl files), streaming each once.

    Problems (errors): bad JSON or UTF-8, rows of the wrong shape or types, unknown formats, empty
    content, unknown or empty roles, conversations with no assistant turn (or starting with one),
    files that mix formats, empty or missing files, and with a tokenizer and ``max_seq_length``
    examples longer than ``max_seq_length`` tokens. Warnings: duplicate rows (naming the earlier
    line) and text that contains a special token's string. With a tokenizer every file's summary
    has token length statistics, equal to ``len(encode_example(row, ...)["input_ids"])`` before
    truncation."""
    report = ValidationReport()
    counter = _TokenCounter(tokenizer, max_seq_length) if tokenizer is not None else None
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


def _percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of a sorted list."""
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


def _length_stats(lengths: list[int]) -> LengthStats:
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


# --------------------------------------------------------------------------------------------------
# Token counting for validation


def _render_llama3(messages: list[dict], bos: str) -> str:
    """What LLAMA3_CHAT_TEMPLATE renders (no generation prompt), without jinja."""
    return bos + "".join(
        f"{_HEADER_START}{m['role']}{_HEADER_END}\n\n{m['content'].strip()}{_EOT}" for m in messages
    )


_PROBES = [
    [
        {"role": "system", "content": "  You write short comments.\n"},
        {"role": "user", "content": "Hi {{ x }} {% raw %} there\r\n\t"},
        {"role": "assistant", "content": "# Hello, ünï 日本 <b>&amp;</b>"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": " b "},
        {"role": "user", "content": "c\n\nd"},
        {"role": "assistant", "content": "'e' \"f\" \\g"},
    ],
]


def _plain_backend(tokenizer):
    """A copy of the fast tokenizer's Rust tokenizer without truncation or padding, or None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


class _TokenCounter:
    """Counts the tokens of valid rows exactly as `encode_example` would, in batches.

    A row becomes a constant (its special tokens, and pieces already counted) plus pieces of text
    still to count. Distinct pieces of a batch are encoded together; while the worker thread
    encodes one batch (the Rust tokenizer releases the GIL), the caller parses the next."""

    def __init__(self, tokenizer, max_seq_length: int | None):
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.backend = _plain_backend(tokenizer)
        self.encode = getattr(self.backend, "encode_batch_fast", None) or getattr(
            self.backend, "encode_batch", None
        )
        self.cache: dict[str, int] = {}
        self.chat_mode = self._chat_mode()  # "pieces" | "render" | "jinja"
        self.specials = _special_finder(tokenizer)
        self.executor = None
        if self.backend is not None:
            from concurrent.futures import ThreadPoolExecutor

            self.executor = ThreadPoolExecutor(1, thread_name_prefix="count-tokens")
        self.inflight: deque = deque()
        self.scan: _FileScan | None = None
        self._new_batch()

    # -- chat rendering plans

    def _count_one(self, text: str) -> int:
        return self._count([text])[0]

    def _count(self, texts: list[str]) -> list[int]:
        if self.backend is not None:
            return [len(e) for e in self.encode(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _chat_mode(self) -> str:
        """How to count chat rows: "pieces" (Llama-3 markup, counted piece by piece), "render" (Llama-3
        markup, whole text counted) or "jinja" (any other template, rendered by apply_chat_template)."""
        tok = self.tokenizer
        if not _renders_like_llama3(tok):
            return "jinja"
        bos = tok.bos_token or ""
        # Added tokens are cut out before the rest of the text is normalised and pre-tokenised, so
        # the pieces between markup tokens are encoded independently of each other: as long as each
        # markup string is one plain added token (no stripping of neighbouring spaces).
        if self.backend is None:
            return "render"
        markup = [_HEADER_START, _HEADER_END, _EOT] + ([bos] if bos else [])
        added = {t.content: t for t in self.backend.get_added_tokens_decoder().values()}
        for s in markup:
            t = added.get(s)
            if t is None or t.lstrip or t.rstrip or t.single_word or t.normalized:
                return "render"
        for messages in _PROBES:
            const, pieces = self._chat_pieces(messages, bos)
            whole = self._count_one(_render_llama3(messages, bos))
            if const + sum(self._count(pieces)) != whole:
                return "render"
        self.chat_const = 1 if bos else 0
        self.role_counts = dict(zip(ROLES, self._count(list(ROLES)), strict=True))
        return "pieces"

    def _chat_pieces(self, messages: list[dict], bos: str) -> tuple[int, list[str]]:
        pieces = []
        for m in messages:
            pieces.append(m["role"])
            pieces.append("\n\n" + m["content"].strip())
        return (1 if bos else 0) + 3 * len(messages), pieces

    def _first_chat_row(self, number: int, messages: list[dict]) -> None:
        """Per file: the fast rendering matches the template, and the template suits masking."""
        if self.chat_mode != "jinja" and not _same_as_template(messages, self.tokenizer):
            self.chat_mode = "jinja"
        try:
            _chat_text_and_spans(messages, self.tokenizer)
        except ValueError as e:
            self.scan.problem(number, str(e))

    # -- batching

    def _new_batch(self) -> None:
        self.pieces: dict[str, int] = {}  # distinct pieces of this batch -> index
        self.repeated: set[int] = set()  # indices of pieces seen more than once in this batch
        self.rows: list[tuple[int, int, list[int]]] = []  # (line, tokens so far, pieces to add)

    def start(self, scan: _FileScan) -> None:
        self.scan = scan
        self.first_chat = True

    def add(self, number: int, row: dict, fmt: str) -> None:
        specials = self.specials
        if fmt == CHAT:
            messages = row["messages"]
            if self.first_chat:
                self.first_chat = False
                self._first_chat_row(number, messages)
            if specials is not None:
                for j, m in enumerate(messages, 1):
                    if specials[0] in m["content"]:
                        self._check_specials(number, m["content"], f"message {j}")
            if self.chat_mode == "pieces":
                const = self.chat_const + 3 * len(messages)
                role_counts = self.role_counts
                pieces = []
                for m in messages:
                    const += role_counts[m["role"]]
                    pieces.append("\n\n" + m["content"].strip())
            elif self.chat_mode == "render":
                const, pieces = 0, [_render_llama3(messages, self.tokenizer.bos_token or "")]
            else:
                try:
                    text = self.tokenizer.apply_chat_template(messages, tokenize=False)
                except Exception as e:
                    self.scan.problem(number, f"chat template error: {e}")
                    return
                const, pieces = 0, [text]
        elif fmt == PROMPT_COMPLETION:
            if specials is not None:
                self._check_specials(number, row["prompt"], "prompt")
                self._check_specials(number, row["completion"], "completion")
            const, pieces = len(self.bos) + 1, [row["prompt"], row["completion"]]
        else:
            if specials is not None:
                self._check_specials(number, row["text"], "text")
            const, pieces = len(self.bos) + 1, [row["text"]]

        cache, batch = self.cache, self.pieces
        todo = []
        for piece in pieces:
            n = cache.get(piece)
            if n is not None:
                const += n
                continue
            i = batch.get(piece)
            if i is None:
                i = batch[piece] = len(batch)
            else:
                self.repeated.add(i)
            todo.append(i)
        if todo:
            self.rows.append((number, const, todo))
            if len(self.rows) >= _BATCH_ROWS:
                self._submit()
        else:
            self._done(number, const)

    def _check_specials(self, number: int, text: str, where: str) -> None:
        prefix, pattern = self.specials
        if prefix in text:
            m = pattern.search(text)
            if m:
                self.scan.warnings.append(
                    (number, f"{where} contains the special token {m.group()!r} as text")
                )

    def _submit(self) -> None:
        texts = list(self.pieces)
        if self.executor is not None:
            work = self.executor.submit(self._count, texts)
        else:
            work = self._count(texts)
        self.inflight.append((work, texts, self.repeated, self.rows))
        self._new_batch()
        while len(self.inflight) > 1:
            self._resolve()

    def _resolve(self) -> None:
        work, texts, repeated, rows = self.inflight.popleft()
        counts = work if isinstance(work, list) else work.result()
        cache = self.cache
        if len(cache) < _PIECE_CACHE_MAX:  # remember pieces that repeat (system prompts)
            cache.update((texts[i], counts[i]) for i in repeated)
        for number, const, todo in rows:
            n = const
            for i in todo:
                n += counts[i]
            self._done(number, n)

    def _done(self, number: int, n: int) -> None:
        self.scan.lengths.append(n)
        if self.max_seq_length is not None and n > self.max_seq_length:
            self.scan.problem(number, f"{n} tokens, over max_seq_length {self.max_seq_length}")

    def finish(self) -> None:
        """Count what is left of the current file."""
        if self.rows:
            self._submit()
        while self.inflight:
            self._resolve()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def _special_finder(tokenizer) -> tuple[str, re.Pattern] | None:
    """(common prefix, regex) that finds special tokens' strings in text, or None."""
    specials = set(getattr(tokenizer, "all_special_tokens", None) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials.update(t.content for t in decoder.values() if getattr(t, "special", False))
    specials = sorted((s for s in specials if s), key=len, reverse=True)
    if not specials:
        return None
    prefix = min(specials, key=len)
    for s in specials:
        while not s.startswith(prefix):
            prefix = prefix[:-1]
    return prefix, re.compile("|".join(map(re.escape, specials)))


# --------------------------------------------------------------------------------------------------
# The training view of a row


_GENERATION_PROMPT = f"{_HEADER_START}assistant{_HEADER_END}\n\n"
_LLAMA3_VERDICTS: dict[tuple, bool] = {}


def _template_key(tokenizer) -> tuple:
    specials = getattr(tokenizer, "special_tokens_map", None) or {}
    return tokenizer.chat_template, tuple(sorted((k, str(v)) for k, v in specials.items()))


def _renders_like_llama3(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders exactly like `_render_llama3` (with and
    without the generation prompt) on probe conversations. Cached per template and special tokens."""
    template = getattr(tokenizer, "chat_template", None)
    if not template or not isinstance(template, str):
        return False
    key = _template_key(tokenizer)
    verdict = _LLAMA3_VERDICTS.get(key)
    if verdict is None:
        bos = tokenizer.bos_token or ""
        try:
            verdict = all(
                tokenizer.apply_chat_template(m, tokenize=False) == _render_llama3(m, bos)
                for m in _PROBES
            ) and all(
                tokenizer.apply_chat_template(m[:i], tokenize=False, add_generation_prompt=True)
                == _render_llama3(m[:i], bos) + _GENERATION_PROMPT
                for m in _PROBES
                for i in range(1, len(m))
            )
        except Exception:
            verdict = False
        if len(_LLAMA3_VERDICTS) > 64:
            _LLAMA3_VERDICTS.clear()
        _LLAMA3_VERDICTS[key] = verdict
    return verdict


def _same_as_template(messages: list[dict], tokenizer) -> bool:
    """Whether `_render_llama3` renders this conversation as the template does; if not, the
    template is no longer taken for Llama-3's (here and in `encode_examples`)."""
    try:
        same = tokenizer.apply_chat_template(messages, tokenize=False) == _render_llama3(
            messages, tokenizer.bos_token or ""
        )
    except Exception:
        same = False
    if not same:
        _LLAMA3_VERDICTS[_template_key(tokenizer)] = False
    return same


def _chat_text_and_spans(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (content and the
    template's end of turn). Llama-3's format is laid out directly (same text, same spans); any
    other template goes through `_chat_text_and_spans_jinja`."""
    if not _renders_like_llama3(tokenizer):
        return _chat_text_and_spans_jinja(messages, tokenizer)
    if messages and messages[0]["role"] == "assistant":
        raise ValueError("chat template: a conversation cannot start with an assistant turn")
    parts = [tokenizer.bos_token or ""]
    pos = len(parts[0])
    spans = []
    for m in messages:
        header = f"{_HEADER_START}{m['role']}{_HEADER_END}\n\n"
        turn = f"{header}{m['content'].strip()}{_EOT}"
        if m["role"] == "assistant":
            spans.append((pos + len(header), pos + len(turn)))
        parts.append(turn)
        pos += len(turn)
    return "".join(parts), spans


def _chat_text_and_spans_jinja(
    messages: list[dict], tokenizer
) -> tuple[str, list[tuple[int, int]]]:
    """For any template: assistant turn i spans from the end of messages[:i] rendered with the
    generation prompt to the end of messages[:i+1] rendered, both prefixes of the whole."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no chat template: load it with training.models.load_tokenizer"
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            raise ValueError("chat template: a conversation cannot start with an assistant turn")
        prefix = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True
        )
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (upto.startswith(prefix) and text.startswith(upto)):
            raise ValueError(
                f"chat template problem: rendering messages[:{i}] with add_generation_prompt=True "
                f"and messages[:{i + 1}] do not give prefixes of the whole rendered conversation, "
                "so assistant turns cannot be located for the loss mask (the template rewrites "
                "earlier turns depending on later ones, or its generation prompt differs from how "
                "it renders an assistant turn)"
            )
        if len(upto) > len(prefix):
            spans.append((len(prefix), len(upto)))
    return text, spans


def _label_spans(input_ids: list[int], offsets, spans: list[tuple[int, int]]) -> list[int]:
    """Labels: a token's id where its characters lie inside a span, else -100."""
    labels = [IGNORE_INDEX] * len(input_ids)
    for a, b in spans:
        i = bisect_left(offsets, a, key=_start)  # first token starting at or after a
        j = bisect_left(offsets, b, lo=i, key=_start)  # first token starting at or after b
        while j > i and offsets[j - 1][1] > b:  # a token running past the span stays masked
            j -= 1
        labels[i:j] = input_ids[i:j]
    return labels


def _start(offset: tuple[int, int]) -> int:
    return offset[0]


def encode_examples(rows: list[dict], tokenizer, max_seq_length: int) -> list[dict]:
    """`encode_example` for many rows at once: the same result, with one tokenizer call per kind
    of text (much faster on large datasets)."""
    if max_seq_length is None or max_seq_length < 1:
        raise ValueError(f"max_seq_length must be a positive integer, got {max_seq_length!r}")
    formats = [detect_format(row) for row in rows]
    first_chat = next(
        (r["messages"] for r, f in zip(rows, formats, strict=True) if f == CHAT), None
    )
    if first_chat is not None and _renders_like_llama3(tokenizer):
        _same_as_template(first_chat, tokenizer)  # one check against jinja per call
    chats = [
        _chat_text_and_spans(r["messages"], tokenizer)
        for r, f in zip(rows, formats, strict=True)
        if f == CHAT
    ]
    plain: list[str] = []
    for row, fmt in zip(rows, formats, strict=True):
        if fmt == PROMPT_COMPLETION:
            plain += [row["prompt"], row["completion"]]
        elif fmt == TEXT:
            plain.append(row["text"])
    if chats:
        enc = tokenizer(
            [text for text, _ in chats], add_special_tokens=False, return_offsets_mapping=True
        )
        chat_ids, chat_offsets = enc["input_ids"], enc["offset_mapping"]
    if plain:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token to end examples with")
        plain_ids = iter(tokenizer(plain, add_special_tokens=False)["input_ids"])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id]
    out = []
    c = 0
    for fmt in formats:
        if fmt == CHAT:
            input_ids = list(chat_ids[c])
            labels = _label_spans(input_ids, chat_offsets[c], chats[c][1])
            c += 1
        elif fmt == PROMPT_COMPLETION:
            prompt, completion = list(next(plain_ids)), list(next(plain_ids))
            input_ids = bos + prompt + completion + eos
            labels = [IGNORE_INDEX] * (len(bos) + len(prompt)) + completion + eos
        else:
            input_ids = bos + list(next(plain_ids)) + eos
            labels = list(input_ids)
        out.append({"input_ids": input_ids[:max_seq_length], "labels": labels[:max_seq_length]})
    return out


def encode_example(row: dict, tokenizer, max_seq_length: int) -> dict:
    """``{"input_ids": [...], "labels": [...]}`` for one row, truncated to ``max_seq_length``.

    - chat: the tokenizer's chat template; only assistant turns (content and end-of-turn token)
      are labelled, in every turn of a multi-turn conversation.
    - prompt/completion: bos + prompt (masked) + completion + eos (both labelled).
    - text: bos + text + eos, all labelled.
    Masked positions are -100. Use `encode_examples` for many rows."""
    return encode_examples([row], tokenizer, max_seq_length)[0]


# --------------------------------------------------------------------------------------------------
# Printing


def _listing(console, title: str, style: str, entries: list[str]) -> None:
    from rich.text import Text

    console.print(Text(f"{len(entries)} {title}:", style=style))
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

    if report.problems:
        _listing(
            console,
            "problems" if len(report.problems) != 1 else "problem",
            "bold red",
            report.problems,
        )
    if report.warnings:
        _listing(
            console,
            "warnings" if len(report.warnings) != 1 else "warning",
            "yellow",
            report.warnings,
        )
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

"""Rows: the three formats, their structural checks (`path:line` problems) and reading JSONL.

- chat: ``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}``
- prompt/completion: ``{"prompt": str, "completion": str}``
- text: ``{"text": str}``

Other keys on a row (ids, metadata) are ignored. Pure functions but for `file_sha256`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

from training.errors import BadInput

CHAT, PROMPT_COMPLETION, TEXT = "chat", "prompt_completion", "text"
FORMATS = (CHAT, PROMPT_COMPLETION, TEXT)
ROLES = ("system", "user", "assistant")

_READ_CHUNK = 1 << 22  # bytes per read while streaming a file
_BOM = b"\xef\xbb\xbf"


class DataError(BadInput):
    """Training data is unusable. ``problems`` lists every one as ``path:line: what``."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


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


def check_row(row: Any) -> tuple[str | None, list[str]]:
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


def row_key(row: dict, fmt: str) -> int:
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


def jsonl_lines(f, digest) -> Iterator[tuple[int, bytes]]:
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


def parse_row(number: int, line: bytes) -> tuple[Any, str | None]:
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
    except ValueError:  # Python's cap on integer digits (4300): no real row holds such a number
        return None, "not valid JSON here: a number with more than 4300 digits"


# A \uD800-\uDFFF escape: json.loads turns a lone one into a str the tokenizer cannot encode.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def surrogate_problem(value, where: str = "") -> str | None:
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
        problem = surrogate_problem(item, label)
        if problem:
            return problem
    return None

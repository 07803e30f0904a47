"""The training view of a row: ``input_ids`` and ``labels``, where only what the model should learn
is labelled (assistant turns, completions, whole texts) and the rest is -100.

Assistant turns are located by rendering the conversation up to each turn with the template (any
template whose earlier turns do not change with later ones); for Llama-3's template, verified by
rendering probe conversations and each call's first conversation, the same text and spans are laid
out directly, without jinja.
"""

from __future__ import annotations

import sys
from bisect import bisect_left

from training.data.llama3 import (
    _EOT,
    _HEADER_END,
    _HEADER_START,
    _renders_like_llama3,
    _same_as_template,
)
from training.data.rows import CHAT, PROMPT_COMPLETION, TEXT, DataError, detect_format

IGNORE_INDEX = -100
LONG_EXAMPLE_POLICIES = ("error", "drop", "truncate")  # training.long_examples


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
        last = i == len(messages) - 1  # messages[:i + 1] is the whole: rendered already
        upto = text if last else tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
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


def fit_to_length(rows: list[dict], tokenizer, max_seq_length: int, policy: str,
                  what: str = "data") -> tuple[list[dict], list[dict], int]:
    """(rows, encoded, how many were over max_seq_length) under training.long_examples: `error`
    raises DataError naming the rows (validation refuses them first), `drop` leaves those rows
    out of both lists (they stay aligned), `truncate` cuts them at max_seq_length."""
    if policy not in LONG_EXAMPLE_POLICIES:
        raise ValueError(f"long_examples must be one of {', '.join(LONG_EXAMPLE_POLICIES)}, "
                         f"got {policy!r}")
    encoded = encode_examples(rows, tokenizer, sys.maxsize)
    long = [i for i, e in enumerate(encoded) if len(e["input_ids"]) > max_seq_length]
    if long and policy == "error":
        raise DataError([f"{what}: example {i + 1}: {len(encoded[i]['input_ids'])} tokens, over "
                         f"max_seq_length {max_seq_length}" for i in long[:50]])
    if policy == "drop" and long:
        skip = set(long)
        keep = [i for i in range(len(rows)) if i not in skip]
        return [rows[i] for i in keep], [encoded[i] for i in keep], len(long)
    fitted = [{"input_ids": e["input_ids"][:max_seq_length], "labels": e["labels"][:max_seq_length]}
              for e in encoded]
    return rows, fitted, len(long)

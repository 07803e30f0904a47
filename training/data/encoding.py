"""The training view of a row: ``input_ids`` and ``labels``, where only what the model should learn
is labelled (assistant turns, completions, whole texts) and the rest is -100. One encoder for
every row, used by training and by validation alike:

- chat: the tokenizer's chat template. A template that marks what the model writes with
  ``{% generation %}`` ... ``{% endgeneration %}`` (the project's Llama-3 template does, around each
  assistant turn's content and end of turn) gives the labels as
  ``apply_chat_template(..., return_assistant_tokens_mask=True)``, as TRL does. A template without
  the markers (a base model's own) falls back to rendering the conversation up to each turn to
  locate the assistant turns (any template whose earlier turns do not change with later ones).
- prompt/completion: bos + prompt (masked) + completion + eos; text: bos + text + eos.
"""

from __future__ import annotations

import re
import sys
from bisect import bisect_left

from training.data.rows import CHAT, PROMPT_COMPLETION, TEXT, DataError, detect_format

IGNORE_INDEX = -100
LONG_EXAMPLE_POLICIES = ("error", "drop", "truncate")  # training.long_examples
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")  # as transformers looks for it
_CHAT_BATCH = 4096  # conversations per apply_chat_template call


def has_generation_markers(tokenizer) -> bool:
    """Whether the tokenizer's chat template marks the assistant's tokens (``{% generation %}``)."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and _GENERATION_TAG.search(template) is not None


def encode_chats(conversations: list[list[dict]], tokenizer) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each conversation, untruncated: the template's text, labelled on the
    assistant turns (content and the template's end of turn). Raises ValueError for a template
    that cannot be used, naming the problem."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no chat template: load it with training.models.load_tokenizer"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("chat rows need a fast (Rust) tokenizer: the loss mask is located through "
                         "its character offsets")
    for messages in conversations:
        if messages and messages[0]["role"] == "assistant":
            raise ValueError("chat template: a conversation cannot start with an assistant turn")
    if not conversations:
        return []
    if not has_generation_markers(tokenizer):
        return _encode_chats_by_prefixes(conversations, tokenizer)
    out = []
    for i in range(0, len(conversations), _CHAT_BATCH):
        enc = tokenizer.apply_chat_template(
            conversations[i:i + _CHAT_BATCH], tokenize=True, return_dict=True,
            return_assistant_tokens_mask=True,
        )
        for ids, mask in zip(enc["input_ids"], enc["assistant_masks"], strict=True):
            out.append((ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]))
    return out


def _encode_chats_by_prefixes(conversations, tokenizer) -> list[tuple[list[int], list[int]]]:
    """The fallback for a template without generation markers: spans from `chat_text_and_spans_jinja`,
    labels on the tokens inside them."""
    rendered = [chat_text_and_spans_jinja(messages, tokenizer) for messages in conversations]
    enc = tokenizer([text for text, _ in rendered], add_special_tokens=False,
                    return_offsets_mapping=True)
    return [
        (ids, _label_spans(ids, offsets, spans))
        for ids, offsets, (_, spans) in zip(
            enc["input_ids"], enc["offset_mapping"], rendered, strict=True)
    ]


def chat_text_and_spans_jinja(
    messages: list[dict], tokenizer
) -> tuple[str, list[tuple[int, int]]]:
    """For a template without generation markers: assistant turn i spans from the end of
    messages[:i] rendered with the generation prompt to the end of messages[:i+1] rendered, both
    prefixes of the whole."""
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
                "it renders an assistant turn; a template that marks the assistant's part with "
                "{% generation %} ... {% endgeneration %} needs no such rendering)"
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
    """`encode_example` for many rows at once: the same result, with batched tokenizer calls (one
    per kind of row and chat batch)."""
    if max_seq_length is None or max_seq_length < 1:
        raise ValueError(f"max_seq_length must be a positive integer, got {max_seq_length!r}")
    formats = [detect_format(row) for row in rows]
    chats = iter(encode_chats(
        [r["messages"] for r, f in zip(rows, formats, strict=True) if f == CHAT], tokenizer))
    plain: list[str] = []
    for row, fmt in zip(rows, formats, strict=True):
        if fmt == PROMPT_COMPLETION:
            plain += [row["prompt"], row["completion"]]
        elif fmt == TEXT:
            plain.append(row["text"])
    if plain:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token to end examples with")
        plain_ids = iter(tokenizer(plain, add_special_tokens=False)["input_ids"])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id]
    out = []
    for fmt in formats:
        if fmt == CHAT:
            input_ids, labels = next(chats)
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
      are labelled, in every turn of a multi-turn conversation (`encode_chats`).
    - prompt/completion: bos + prompt (masked) + completion + eos (both labelled).
    - text: bos + text + eos, all labelled.
    Masked positions are -100. Use `encode_examples` for many rows."""
    return encode_examples([row], tokenizer, max_seq_length)[0]


def learns_nothing_when_cut(encoded: dict, max_seq_length: int) -> bool:
    """Cut at max_seq_length, the example keeps no labelled token: it teaches nothing (and scores
    NaN), so training leaves it out."""
    return all(t == IGNORE_INDEX for t in encoded["labels"][:max_seq_length])


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
        if not keep:
            raise DataError([f"{what}: all {len(rows)} examples are over max_seq_length "
                             f"{max_seq_length}: training.long_examples: drop leaves nothing"])
        return [rows[i] for i in keep], [encoded[i] for i in keep], len(long)
    fitted = [{"input_ids": e["input_ids"][:max_seq_length], "labels": e["labels"][:max_seq_length]}
              for e in encoded]
    keep = [i for i, e in enumerate(fitted) if not learns_nothing_when_cut(e, max_seq_length)]
    if not keep:
        raise DataError([f"{what}: cut at max_seq_length {max_seq_length}, no example keeps a "
                         "token to learn from (the answers come after the cut): raise "
                         "max_seq_length"])
    if len(keep) < len(fitted):
        import logging

        logging.getLogger("training.recipe").warning(
            "%s: %d example(s) cut at max_seq_length %d keep no token to learn from: left out",
            what, len(fitted) - len(keep), max_seq_length)
        return [rows[i] for i in keep], [fitted[i] for i in keep], len(long)
    return rows, fitted, len(long)

"""Llama-3's chat markup laid out without jinja, and the check that a tokenizer's template renders
exactly like it (probe conversations, cached per template). Only the token counter's shortcut
uses it (training encodes with the template itself): a template that fails the check is counted
by the encoder.
"""

from __future__ import annotations

# Llama-3's chat markup (see training.models.LLAMA3_CHAT_TEMPLATE).
HEADER_START, HEADER_END, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"


def render_llama3(messages: list[dict], bos: str) -> str:
    """What LLAMA3_CHAT_TEMPLATE renders (no generation prompt), without jinja."""
    return bos + "".join(
        f"{HEADER_START}{m['role']}{HEADER_END}\n\n{m['content'].strip()}{EOT}" for m in messages
    )


PROBES = [
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


_GENERATION_PROMPT = f"{HEADER_START}assistant{HEADER_END}\n\n"
_LLAMA3_VERDICTS: dict[tuple, bool] = {}


def _template_key(tokenizer) -> tuple:
    specials = getattr(tokenizer, "special_tokens_map", None) or {}
    return tokenizer.chat_template, tuple(sorted((k, str(v)) for k, v in specials.items()))


def renders_like_llama3(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders exactly like `render_llama3` (with and
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
                tokenizer.apply_chat_template(m, tokenize=False) == render_llama3(m, bos)
                for m in PROBES
            ) and all(
                tokenizer.apply_chat_template(m[:i], tokenize=False, add_generation_prompt=True)
                == render_llama3(m[:i], bos) + _GENERATION_PROMPT
                for m in PROBES
                for i in range(1, len(m))
            )
        except Exception:
            verdict = False
        if len(_LLAMA3_VERDICTS) > 64:
            _LLAMA3_VERDICTS.clear()
        _LLAMA3_VERDICTS[key] = verdict
    return verdict


def same_as_template(messages: list[dict], tokenizer) -> bool:
    """Whether `render_llama3` renders this conversation as the template does; if not, the
    template is no longer taken for Llama-3's."""
    try:
        same = tokenizer.apply_chat_template(messages, tokenize=False) == render_llama3(
            messages, tokenizer.bos_token or ""
        )
    except Exception:
        same = False
    if not same:
        _LLAMA3_VERDICTS[_template_key(tokenizer)] = False
    return same

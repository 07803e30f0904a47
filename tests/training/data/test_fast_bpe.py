"""fast_bpe: tiktoken with the tokenizer's own merges counts exactly what the tokenizer does, and
steps aside wherever that is not certain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tests.training.data.test_data import EXAMPLES, VARIED
from training.data.fast_bpe import LLAMA3_PATTERN, FastCounter, fast_counter
from training.data.token_counter import _plain_backend

TEXTS = [
    "Comment this function:\ndef f(a, b):\n    return sorted(set(a))",
    "# Don't  stop;  it'll   be fine\r\n\t\tx = 12345 + 6789",
    "  leading and trailing spaces   ",
    "\n\n\n",
    "",
    "café naïve — ünïcode 中文 😀",  # not ASCII: the tokenizer counts it
    "text with <|eot_id|> and <|begin_of_text|> inside",  # added tokens: the tokenizer counts it
    "I'M HERE, WE'VE GOT IT, they'RE 'S",
    "\x00\x01\x1f\x7f control bytes",
]


def _all_texts() -> list[str]:
    texts = list(TEXTS)
    for row in VARIED:
        texts += [m["content"] for m in row.get("messages", [])]
        texts += [row[k] for k in ("prompt", "completion", "text") if k in row]
    for path in sorted(EXAMPLES.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += ["\n\n" + m["content"].strip() for m in row.get("messages", [])]
    return texts


def _reference(backend, texts: list[str]) -> list[int]:
    return [len(backend.encode(t, add_special_tokens=False)) for t in texts]


def _byte_level(vocab_extra: list[str], merges: list[tuple[str, str]], pre_tokenizer=None):
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for token in vocab_extra:
        vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    return tok


def _trained(pre_tokenizer) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|eot_id|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_all_texts() * 3, trainer=trainer)
    return tok


LLAMA3_LAYOUT = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
])


def test_the_tiny_llama_counts_with_tiktoken_exactly(tiny_tokenizer):
    backend = _plain_backend(tiny_tokenizer)
    counter = fast_counter(backend)
    assert counter is not None, "the bundled tokenizer should take the fast path"
    texts = _all_texts()
    assert counter(texts) == _reference(backend, texts)
    assert counter.enabled, "no sampled disagreement"


@pytest.mark.parametrize("layout", ["gpt2", "llama3"])
def test_both_byte_level_layouts_are_recognised_and_exact(layout):
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False) if layout == "gpt2" else LLAMA3_LAYOUT
    backend = _trained(pre)
    counter = fast_counter(backend)
    assert counter is not None
    texts = _all_texts()
    assert counter(texts) == _reference(backend, texts)
    assert counter.enabled


def test_merges_that_tiktoken_would_apply_differently_keep_the_tokenizer():
    """'abc' exists as a token, but these merges never build it from 'a' + 'bc': the tokenizer
    gives [a, bc] where tiktoken, which ranks tokens rather than pairs, would give [abc]."""
    diverging = _byte_level(["bc", "ab", "abc"], [("b", "c"), ("a", "b"), ("ab", "c")])
    assert _reference(diverging, ["abc"]) == [2]
    assert fast_counter(diverging) is None
    consistent = _byte_level(["ab", "abc"], [("a", "b"), ("ab", "c")])
    counter = fast_counter(consistent)
    assert counter is not None and counter(["abc abcab"]) == _reference(consistent, ["abc abcab"])


def test_layouts_it_does_not_know_keep_the_tokenizer():
    unknown_regex = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\w+|\s+"), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    assert fast_counter(_trained(unknown_regex)) is None
    assert fast_counter(_trained(pre_tokenizers.ByteLevel(add_prefix_space=True))) is None
    normalized = _trained(pre_tokenizers.ByteLevel(add_prefix_space=False))
    normalized.normalizer = normalizers.NFKC()
    assert fast_counter(normalized) is None
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    assert fast_counter(wordpiece) is None


def test_a_sampled_disagreement_recounts_with_the_tokenizer_and_turns_the_fast_path_off():
    import tiktoken

    backend = _trained(pre_tokenizers.ByteLevel(add_prefix_space=False))
    bytes_only = tiktoken.Encoding("bytes", pat_str=r"\s+|\S+",
                                   mergeable_ranks={bytes([b]): b for b in range(256)},
                                   special_tokens={})
    counter = FastCounter(bytes_only, backend, "<|")
    texts = _all_texts()
    assert counter(texts) == _reference(backend, texts)
    assert not counter.enabled
    assert counter(TEXTS) == _reference(backend, TEXTS)


def test_a_vocabulary_that_ignores_merges_keeps_the_tokenizer():
    """With ignore_merges a word in the vocabulary is one token whatever the merges say: here
    'cbc' is one, but 'bcbc...' splits by the merges in ways tiktoken's ranking does not follow
    (it counted 9 where the tokenizer gives 12)."""
    tok = _byte_level(["bc", "cb", "cbc"], [("b", "c"), ("c", "b"), ("cb", "c")])
    spec = json.loads(tok.to_str())
    spec["model"]["ignore_merges"] = True
    ignoring = Tokenizer.from_str(json.dumps(spec))
    assert fast_counter(ignoring) is None
    assert fast_counter(tok) is None or fast_counter(tok)(["bcbcbc cbcb"]) == _reference(
        tok, ["bcbcbc cbcb"])


def test_the_counting_process_does_not_run_the_callers_script_again(tmp_path):
    """A script without a __main__ guard runs once, and the counting process ignores the
    Ctrl-C that its parent handles."""
    import subprocess
    import sys

    marker = tmp_path / "ran"
    script = tmp_path / "unguarded.py"
    script.write_text(f"""
import multiprocessing
from tokenizers import Tokenizer, models, pre_tokenizers
from training.data.fast_bpe import count_in_process, counting_process
with open({str(marker)!r}, "a") as f:
    f.write("ran\\n")
tok = Tokenizer(models.BPE({{c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}}, []))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
pool = counting_process(tok)
counts, enabled = pool.submit(count_in_process, ["abc", "de f"]).result()
[child] = multiprocessing.active_children()
ignored = [line for line in open(f"/proc/{{child.pid}}/status") if line.startswith("SigIgn")]
pool.shutdown()
print(counts, enabled, int(ignored[0].split()[1], 16) & 2)
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, cwd=str(Path(__file__).resolve().parents[3]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "[3, 4] True 2"
    assert marker.read_text() == "ran\n"

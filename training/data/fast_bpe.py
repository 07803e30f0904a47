"""Exact token counts for byte-level BPE tokenizers (GPT-2's and Llama-3's kind), 4-5x faster.

Validation counts the tokens of every row; for a million rows Hugging Face's tokenizer spends most
of its time around the BPE (building `Encoding` objects, Oniguruma's regex), not in it. tiktoken
runs the same algorithm - split with a regex, byte-level BPE by merge rank - in a fraction of the
time, so this module rebuilds the tokenizer's own merges as a tiktoken rank table and counts with
it, where that is provably the same tokenizer or checked to be:

- only a tokenizer whose JSON is exactly this shape: no normalizer; GPT-2's ByteLevel regex, or
  Llama-3's split regex followed by ByteLevel; a plain BPE model over all 256 bytes, one token per
  merge, without `ignore_merges` (otherwise `fast_counter` returns None and the caller keeps the
  Hugging Face tokenizer: Meta's own Llama-3 tokenizer.json sets `ignore_merges`, so it is
  counted by the tokenizer, exactly, at the speed of before);
- only ASCII text without the added tokens' common prefix (Unicode classes differ between the two
  regex engines, and added tokens are cut out before BPE): anything else is counted by the
  tokenizer itself;
- checked when built, on every vocabulary entry and on ASCII probes, and then on a sample of every
  batch: one disagreement recounts that batch with the tokenizer and turns the fast path off.

The tests compare its counts with the training encoder's on every bundled and generated dataset.
"""

from __future__ import annotations

import json
import os
import string

# the regex of `pre_tokenizers.ByteLevel(use_regex=True)` (GPT-2's) and Llama-3's split regex:
# both match every character, so no text falls between matches (tiktoken would skip it)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SAMPLE_EVERY = 512  # one distinct text in this many is recounted by the tokenizer itself


def common_prefix(strings: list[str]) -> str:
    """The longest string every one of `strings` starts with (cheap first test for "contains any
    of them")."""
    return os.path.commonprefix(strings)  # noqa: RUF071 - text, compared character by character


def _split_pattern(pre_tokenizer: dict | None) -> str | None:
    """The regex that pre-tokenizes, for the two byte-level layouts this module knows."""
    if not pre_tokenizer:
        return None
    if pre_tokenizer.get("type") == "ByteLevel":
        ok = pre_tokenizer.get("use_regex", True) and not pre_tokenizer.get("add_prefix_space")
        return GPT2_PATTERN if ok else None
    steps = pre_tokenizer.get("pretokenizers") or []
    if pre_tokenizer.get("type") != "Sequence" or len(steps) != 2:
        return None
    split, byte_level = steps
    if (split.get("type") == "Split" and split.get("behavior") == "Isolated"
            and not split.get("invert") and split.get("pattern") == {"Regex": LLAMA3_PATTERN}
            and byte_level.get("type") == "ByteLevel" and not byte_level.get("use_regex", True)
            and not byte_level.get("add_prefix_space")):
        return LLAMA3_PATTERN
    return None


def _mergeable_ranks(model: dict) -> dict[bytes, int] | None:
    """Bytes first, then each merge's result in merge order; None if a merge is not a plain pair
    of byte-level tokens or two merges make the same token (tiktoken ranks tokens, not pairs)."""
    if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback"):
        return None
    if model.get("ignore_merges"):
        # a word found in the vocabulary is one token whatever the merges say; tiktoken's whole
        # piece lookup agrees, but its merging of the rest ranks tokens, which such a vocabulary
        # (entries no merge builds) breaks in ways the checks below cannot see
        return None
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # ByteLevel vocabularies write each byte as one printable character (GPT-2's map)
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    vocab = model.get("vocab") or {}
    if any(c not in vocab for c in to_byte):
        return None  # a byte the tokenizer cannot encode: it would drop or replace it
    ranks = {bytes([b]): b for b in range(256)}
    for merge in model.get("merges") or []:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        try:
            token = bytes(to_byte[c] for c in left + right)
        except KeyError:
            return None
        if token in ranks:
            return None
        ranks[token] = len(ranks)
    return ranks


def _probes() -> list[str]:
    """Texts where a difference between the regex engines or the BPE variants would show."""
    texts = []
    for c in string.printable + "".join(map(chr, range(32))) + "\x7f":
        texts += [f"a{c}b", f" {c}{c}1", f"x {c}\n", f"{c}  {c}y", f"'ll{c}", f"12345{c}", c]
    texts += ["Don't  stop\n\n  it's 2024!!", "\t\tdef f(x):\r\n    return x  \n", "I'M  'VE"]
    return texts


class FastCounter:
    """Counts tokens like `backend.encode(text, add_special_tokens=False)`, with tiktoken's BPE
    where the text allows it."""

    def __init__(self, encoding, backend, added_prefix: str | None):
        self.encode = encoding.encode_ordinary
        self.backend = backend
        self.added_prefix = added_prefix
        self.enabled = True
        self.batches = 0

    def _slow(self, texts: list[str]) -> list[int]:
        return [len(e) for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def _eligible(self, text: str) -> bool:
        return text.isascii() and (self.added_prefix is None or self.added_prefix not in text)

    def __call__(self, texts: list[str]) -> list[int]:
        if not self.enabled:
            return self._slow(texts)
        counts, slow = [], []
        encode, prefix = self.encode, self.added_prefix
        for i, text in enumerate(texts):  # `_eligible`, inlined: this runs once per text
            if text.isascii() and (prefix is None or prefix not in text):
                counts.append(len(encode(text)))
            else:
                counts.append(0)
                slow.append(i)
        # a sample of the fast counts, checked against the tokenizer itself
        sample = [i for i in range(self.batches % SAMPLE_EVERY, len(texts), SAMPLE_EVERY)
                  if self._eligible(texts[i])]
        self.batches += 1
        if sample and self._slow([texts[i] for i in sample]) != [counts[i] for i in sample]:
            self.enabled = False
            return self._slow(texts)
        if slow:
            for i, n in zip(slow, self._slow([texts[i] for i in slow]), strict=True):
                counts[i] = n
        return counts


def fast_counter(backend) -> FastCounter | None:
    """A `FastCounter` for this Rust tokenizer (without truncation or padding), or None when it is
    not a byte-level BPE that tiktoken reproduces exactly."""
    try:
        import tiktoken
    except ImportError:  # an optional speed-up: counting stays exact without it
        return None
    spec = json.loads(backend.to_str())
    pattern = _split_pattern(spec.get("pre_tokenizer"))
    ranks = _mergeable_ranks(spec.get("model") or {})
    if spec.get("normalizer") is not None or pattern is None or ranks is None:
        return None
    added = [t["content"] for t in spec.get("added_tokens") or [] if t.get("content")]
    prefix = common_prefix(added) if added else None
    if prefix == "":
        return None  # no cheap test for "contains an added token"
    try:
        encoding = tiktoken.Encoding("validation", pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens={})
    except Exception:
        return None
    counter = FastCounter(encoding, backend, prefix)
    # every vocabulary entry that is text, on its own, and the probes: the BPE variants (merge
    # order, whole-word lookups) and the regex engines must agree on each
    texts = [t.decode("utf-8", "ignore") for t in ranks if len(t) > 1] + _probes()
    texts = [t for t in texts if t and counter._eligible(t)]
    if [len(encoding.encode_ordinary(t)) for t in texts] != counter._slow(texts):
        return None
    return counter


# -- a counting process: a million rows keep one core parsing and the other counting

_PROCESS_COUNTER: FastCounter | None = None


def _start_process_counter(tokenizer_json: str) -> None:
    """The counting process's initializer: the same checks, on the same tokenizer. Ctrl-C is the
    parent's to handle (it shuts this process down)."""
    import signal

    from tokenizers import Tokenizer

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _PROCESS_COUNTER
    _PROCESS_COUNTER = fast_counter(Tokenizer.from_str(tokenizer_json))


def _ready() -> None:
    """A first task, so that the process starts at once (see `counting_process`)."""


def count_in_process(texts: list[str]) -> tuple[list[int], bool]:
    """The counts, and whether the fast path is still on (a sampled disagreement turns it off
    here; the parent then turns its own off too)."""
    if _PROCESS_COUNTER is None:
        raise RuntimeError("the counting process could not build its counter")
    return _PROCESS_COUNTER(texts), _PROCESS_COUNTER.enabled


def counting_process(backend):
    """A one-process pool that runs `count_in_process` with this tokenizer, started now.

    Spawned (no forked copies of the tokenizer's or torch's threads), but without the usual
    re-import of the caller's `__main__`: a script without an ``if __name__ == "__main__"`` guard
    would otherwise run again inside the counting process. SIGINT is ignored while it starts
    (from the main thread; a process inherits an ignored signal), so it never prints a traceback
    for a Ctrl-C meant for the parent; a Ctrl-C in those few milliseconds is lost."""
    import multiprocessing
    import signal
    import sys
    from concurrent.futures import ProcessPoolExecutor

    main = sys.modules.get("__main__")
    hidden = {k: main.__dict__.pop(k) for k in ("__file__", "__spec__")
              if main is not None and k in main.__dict__}
    if main is not None:
        main.__spec__ = None  # multiprocessing reads it (None: not run with -m)
    try:
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: only it receives SIGINT and can change it
        handler = None
    try:
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_process_counter,
                                   initargs=(backend.to_str(),))
        pool.submit(_ready)  # the process is launched here, inside this block
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
        if main is not None:
            del main.__spec__
            main.__dict__.update(hidden)
    return pool

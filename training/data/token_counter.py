"""Exact token counts for validation, built for millions of rows.

Chat rows are counted by the training encoder itself (`encode_chats`, in batches), so what
validation accepts is what training can encode, row by row. One shortcut, for speed: a template
that renders exactly like Llama-3's markup (checked on probes and on each file's first chat row)
is laid out by string formatting, cut at the template's special tokens into pieces that the
tokenizer would encode independently anyway, and the distinct pieces are counted in batches: by
`fast_bpe` (tiktoken with the tokenizer's own merges) where it reproduces the tokenizer, else by the
Rust tokenizer on a worker thread while the caller parses the next lines. Counts equal
``len(encode_example(row, ...)["input_ids"])`` before truncation: the tests check that on every
bundled and generated dataset.
"""

from __future__ import annotations

import re
from collections import deque

from training.data.encoding import LONG_EXAMPLE_POLICIES, encode_chats
from training.data.fast_bpe import common_prefix, count_in_process, counting_process, fast_counter
from training.data.llama3 import (
    EOT,
    HEADER_END,
    HEADER_START,
    PROBES,
    render_llama3,
    renders_like_llama3,
    same_as_template,
)
from training.data.rows import CHAT, PROMPT_COMPLETION, ROLES
from training.data.scan import FileScan

_BATCH_ROWS = 4096  # rows per tokenizer batch
_PIECE_CACHE_MAX = 100_000  # repeated pieces whose token counts are remembered across batches
_PROCESS_AFTER_BATCHES = 8  # a file this long (8 x 4096 rows) pays for a counting process (~1 s)


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


class TokenCounter:
    """Counts the tokens of valid rows exactly as `encode_example` would, in batches.

    A row becomes a constant (its special tokens, and pieces already counted) plus pieces of text
    still to count. Distinct pieces of a batch are encoded together; while the worker thread
    encodes one batch (the Rust tokenizer releases the GIL), the caller parses the next."""

    def __init__(self, tokenizer, max_seq_length: int | None, long_examples: str = "error",
                 process_after_batches: int = _PROCESS_AFTER_BATCHES):
        if long_examples not in LONG_EXAMPLE_POLICIES:
            raise ValueError(f"long_examples must be one of {', '.join(LONG_EXAMPLE_POLICIES)}, "
                             f"got {long_examples!r}")
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.long_examples = long_examples
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.backend = _plain_backend(tokenizer)
        self.encode = getattr(self.backend, "encode_batch_fast", None) or getattr(
            self.backend, "encode_batch", None
        )
        # tiktoken's BPE with this tokenizer's merges, where it counts the same (fast_bpe.py)
        self.fast = fast_counter(self.backend) if self.backend is not None else None
        self.cache: dict[str, int] = {}
        self.chat_mode = self._chat_mode()  # "pieces" | "encoder"
        self.specials = _special_finder(tokenizer)
        self.executor = None
        # the Rust tokenizer releases the GIL for a whole batch, so a worker thread encodes while
        # the caller parses; the fast counter releases it once per text and is faster inline
        if self.backend is not None and self.fast is None:
            from concurrent.futures import ThreadPoolExecutor

            self.executor = ThreadPoolExecutor(1, thread_name_prefix="count-tokens")
        # ... so a long file's fast counts go to a process of their own instead (fast_bpe.py)
        self.process = None
        self.process_failed = False
        self.process_after_batches = process_after_batches
        self.batches = 0
        self.inflight: deque = deque()
        self.scan: FileScan | None = None
        self.chats: list[tuple[int, list[dict]]] = []
        self._new_batch()

    # -- chat rendering plans

    def _count_one(self, text: str) -> int:
        return self._count([text])[0]

    def _count(self, texts: list[str]) -> list[int]:
        if self.fast is not None:
            return self.fast(texts)
        if self.backend is not None:
            return [len(e) for e in self.encode(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _chat_mode(self) -> str:
        """How to count chat rows: "pieces" (Llama-3 markup, counted piece by piece) or "encoder"
        (any other template or tokenizer: `encode_chats`, as training encodes them)."""
        tok = self.tokenizer
        if self.backend is None or not renders_like_llama3(tok):
            return "encoder"
        bos = tok.bos_token or ""
        # Added tokens are cut out before the rest of the text is normalised and pre-tokenised, so
        # the pieces between markup tokens are encoded independently of each other: as long as each
        # markup string is one plain added token (no stripping of neighbouring spaces).
        markup = [HEADER_START, HEADER_END, EOT] + ([bos] if bos else [])
        added = {t.content: t for t in self.backend.get_added_tokens_decoder().values()}
        for s in markup:
            t = added.get(s)
            if t is None or t.lstrip or t.rstrip or t.single_word or t.normalized:
                return "encoder"
        for messages in PROBES:
            const, pieces = self._chat_pieces(messages, bos)
            whole = self._count_one(render_llama3(messages, bos))
            if const + sum(self._count(pieces)) != whole:
                return "encoder"
        self.chat_const = 1 if bos else 0
        self.role_counts = dict(zip(ROLES, self._count(list(ROLES)), strict=True))
        return "pieces"

    def _chat_pieces(self, messages: list[dict], bos: str) -> tuple[int, list[str]]:
        pieces = []
        for m in messages:
            pieces.append(m["role"])
            pieces.append("\n\n" + m["content"].strip())
        return (1 if bos else 0) + 3 * len(messages), pieces

    def _first_chat_row(self, messages: list[dict]) -> None:
        """Per file: the fast rendering matches the template (else every row goes through the
        encoder, which checks each row as training will encode it)."""
        if self.chat_mode == "pieces" and not same_as_template(messages, self.tokenizer):
            self.chat_mode = "encoder"

    def _encode_chats(self) -> None:
        """Count the pending chat rows with the training encoder; a row it refuses is a problem
        on that row's line."""
        pending, self.chats = self.chats, []
        try:
            encoded = encode_chats([m for _, m in pending], self.tokenizer)
        except Exception:
            for number, messages in pending:  # find which rows failed, and why
                try:
                    [(ids, _)] = encode_chats([messages], self.tokenizer)
                except ValueError as e:
                    self.scan.problem(number, str(e))
                except Exception as e:
                    self.scan.problem(number, f"chat template error: {e}")
                else:
                    self._done(number, len(ids))
            return
        for (number, _), (ids, _) in zip(pending, encoded, strict=True):
            self._done(number, len(ids))

    # -- batching

    def _new_batch(self) -> None:
        self.pieces: dict[str, int] = {}  # distinct pieces of this batch -> index
        self.repeated: set[int] = set()  # indices of pieces seen more than once in this batch
        self.rows: list[tuple[int, int, list[int]]] = []  # (line, tokens so far, pieces to add)

    def start(self, scan: FileScan) -> None:
        self.scan = scan
        self.first_chat = True
        # truncate: the rows still being counted, and those found too long, encoded as training
        # will encode them to see whether the cut leaves any token to learn from
        self.pending: dict[int, dict] = {}
        self.cut_rows: list[dict] = []
        self.cut_before_answer = 0
        self.chats: list[tuple[int, list[dict]]] = []  # (line, messages) for the encoder

    def add(self, number: int, row: dict, fmt: str) -> None:
        if self.long_examples == "truncate" and self.max_seq_length is not None:
            self.pending[number] = row
        specials = self.specials
        if fmt == CHAT:
            messages = row["messages"]
            if self.first_chat:
                self.first_chat = False
                self._first_chat_row(messages)
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
            else:
                # every row goes through the encoder: a template may render one row in a way
                # that cannot be masked, and training would find out late
                self.chats.append((number, messages))
                if len(self.chats) >= _BATCH_ROWS:
                    self._encode_chats()
                return
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
        if self.fast is not None:
            self.batches += 1
            if (self.process is None and not self.process_failed and self.fast.enabled
                    and self.batches >= self.process_after_batches):
                self.process = counting_process(self.backend)
            work = None
            if self.process is not None and self.fast.enabled:
                try:
                    work = self.process.submit(count_in_process, texts)
                except Exception:  # the counting process died: count here from now on
                    self._stop_process(failed=True)
            if work is None:
                work = self._count(texts)
        elif self.executor is not None:
            work = self.executor.submit(self._count, texts)
        else:
            work = self._count(texts)
        self.inflight.append((work, texts, self.repeated, self.rows))
        self._new_batch()
        while len(self.inflight) > 1:
            self._resolve()

    def _resolve(self) -> None:
        work, texts, repeated, rows = self.inflight.popleft()
        if isinstance(work, list):
            counts = work
        elif self.fast is not None:
            try:
                counts, enabled = work.result()
            except Exception:  # the counting process died or could not start: count here
                self._stop_process(failed=True)
                counts = self._count(texts)
            else:
                if not enabled:  # it found a disagreement: the tokenizer counts from now on
                    self.fast.enabled = False
        else:
            counts = work.result()
        cache = self.cache
        if len(cache) < _PIECE_CACHE_MAX:  # remember pieces that repeat (system prompts)
            cache.update((texts[i], counts[i]) for i in repeated)
        for number, const, todo in rows:
            n = const
            for i in todo:
                n += counts[i]
            self._done(number, n)

    def _stop_process(self, failed: bool = False) -> None:
        if self.process is not None:
            self.process.shutdown(wait=True, cancel_futures=True)
            self.process = None
        self.process_failed = self.process_failed or failed

    def _done(self, number: int, n: int) -> None:
        self.scan.lengths.append(n)
        row = self.pending.pop(number, None) if self.pending else None
        if self.max_seq_length is not None and n > self.max_seq_length:
            if self.long_examples == "error":
                self.scan.problem(number, f"{n} tokens, over max_seq_length {self.max_seq_length}")
            else:
                self.scan.too_long += 1
                if row is not None:
                    self.cut_rows.append(row)
                    if len(self.cut_rows) >= _BATCH_ROWS:
                        self._check_cuts()

    def _check_cuts(self) -> None:
        """Count the too-long rows whose cut at max_seq_length keeps no labelled token: training
        leaves them out (encoding.fit_to_length)."""
        import sys

        from training.data.encoding import encode_examples, learns_nothing_when_cut

        if not self.cut_rows:
            return
        self.cut_before_answer += sum(
            learns_nothing_when_cut(e, self.max_seq_length)
            for e in encode_examples(self.cut_rows, self.tokenizer, sys.maxsize))
        self.cut_rows.clear()

    def finish(self) -> None:
        """Count what is left of the current file."""
        if self.chats:
            self._encode_chats()
        if self.rows:
            self._submit()
        while self.inflight:
            self._resolve()
        self._check_cuts()
        scan, cut_out = self.scan, self.cut_before_answer
        if (scan is not None and self.long_examples == "drop" and scan.lengths
                and scan.too_long == len(scan.lengths)):  # nothing would be left
            scan.problem(0, f"all {scan.too_long} examples are over max_seq_length "
                            f"{self.max_seq_length} tokens: training.long_examples: drop "
                            "leaves nothing (raise max_seq_length, or truncate)")
        elif scan is not None and scan.lengths and cut_out == len(scan.lengths):
            scan.problem(0, f"all {cut_out} examples are cut at max_seq_length "
                            f"{self.max_seq_length} tokens before their answer: "
                            "training.long_examples: truncate leaves nothing to learn from "
                            "(raise max_seq_length)")
        elif scan is not None and scan.too_long:
            done = "dropped" if self.long_examples == "drop" else "truncated"
            cut = (f"; {cut_out} of them cut before the answer, left out" if cut_out else "")
            self.scan.warnings.append((0, f"{self.scan.too_long} example(s) over max_seq_length "
                                          f"{self.max_seq_length} tokens: {done} in training "
                                          f"(training.long_examples: {self.long_examples}){cut}"))

    def close(self) -> None:
        self._stop_process()
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
    return common_prefix(specials), re.compile("|".join(map(re.escape, specials)))

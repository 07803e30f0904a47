"""Training data: rows and their validation, the training encoding, and the report.

The package in the order data flows through it:

- `rows`: the three row formats (chat, prompt/completion, text), their structural checks and
  reading JSONL line by line (``path:line`` problems).
- `validation`: `validate_files` (every file streamed once: problems, warnings, summaries, exact
  token counts) and `load_examples` (the rows that training reads, after the same checks).
- `encoding`: `encode_examples`, the training view of rows (``input_ids`` and ``labels``, only
  what the model should learn labelled; chat labels from the template's ``{% generation %}``
  markers). Training and validation both encode with it.
- `token_counter`: exact token counts for validation, fast enough for millions of rows: the
  encoder, or for Llama-3's markup a shortcut equal to the encoder's lengths by test.
- `fast_bpe`: the counter's text counts for byte-level BPE tokenizers (GPT-2's and Llama-3's
  kind) by tiktoken with the tokenizer's own merges, checked against the tokenizer.
- `llama3`: Llama-3's chat markup without jinja (the counter's shortcut), and the check that a
  template renders like it.
- `report`: `print_report`, the tables and histogram that `train data validate` prints.

Nothing heavy is imported here: the CLI imports this package for ``train data validate`` without
a tokenizer. The names below are the package's interface; import them from ``training.data``.
"""

from training.data.encoding import (
    IGNORE_INDEX,
    LONG_EXAMPLE_POLICIES,
    chat_text_and_spans_jinja,
    encode_chats,
    encode_example,
    encode_examples,
    fit_to_length,
)
from training.data.report import REPORT_LIMIT, print_report
from training.data.rows import (
    CHAT,
    FORMATS,
    PROMPT_COMPLETION,
    ROLES,
    TEXT,
    DataError,
    detect_format,
    file_sha256,
)
from training.data.scan import FileSummary, LengthStats
from training.data.token_counter import TokenCounter
from training.data.validation import (
    ValidationReport,
    load_examples,
    same_data_warnings,
    validate_files,
)

__all__ = [
    "CHAT",
    "FORMATS",
    "IGNORE_INDEX",
    "LONG_EXAMPLE_POLICIES",
    "PROMPT_COMPLETION",
    "REPORT_LIMIT",
    "ROLES",
    "TEXT",
    "DataError",
    "FileSummary",
    "LengthStats",
    "TokenCounter",
    "ValidationReport",
    "chat_text_and_spans_jinja",
    "detect_format",
    "encode_chats",
    "encode_example",
    "encode_examples",
    "file_sha256",
    "fit_to_length",
    "load_examples",
    "print_report",
    "same_data_warnings",
    "validate_files",
]

"""Fine-tuning on a managed service (OpenAI, Azure OpenAI): the pure pieces, no network.

- the service's limits per model (tokens per example) and the dated training price table;
- the chat-format validation of a JSONL file against those limits, reported as ``path:line: what``
  (what `train submit --backend openai` checks before anything is uploaded);
- token counts as the service bills them (the price table and `estimate_hosted_cost` are in
  `training.hosted_cost`);
- the two job requests of a pair (identical but for the training file, suffix and metadata), and
  how a listed job is recognised as an arm of a pair;
- the per-step metrics in a job's result file.

The client side (uploads, jobs, polling, MLflow) is `training.backends.openai`.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from training.errors import BadInput

MIN_EXAMPLES = 10  # the service rejects a training file with fewer
MAX_FILE_BYTES = 512 * 1024 * 1024  # the Files API's limit for purpose "fine-tune"
MAX_SUFFIX = 40  # OpenAI allows 64; a shorter one stays valid on Azure OpenAI and in model names
TOOL = "paired-finetune"

# Fine-tunable base models (supervised): tokens per training example (longer ones are truncated
# by the service, so they are an error here). Azure OpenAI spells GPT-3.5 "gpt-35-turbo".
# gpt-4-0613 was never generally available for fine-tuning.
EXAMPLE_TOKEN_LIMITS = {
    "gpt-4.1-2025-04-14": 65_536,
    "gpt-4.1-mini-2025-04-14": 65_536,
    "gpt-4.1-nano-2025-04-14": 65_536,
    "gpt-4o-2024-08-06": 65_536,
    "gpt-4o-mini-2024-07-18": 65_536,
    "gpt-4o-mini": 65_536,
    "gpt-3.5-turbo-0125": 16_385,
    "gpt-3.5-turbo-1106": 16_385,
    "gpt-3.5-turbo": 16_385,
    "gpt-35-turbo-0125": 16_385,
    "gpt-35-turbo-1106": 16_385,
}

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call",
                "refusal"}
ROW_KEYS = {"messages", "tools", "functions", "parallel_tool_calls"}


class HostedInputError(BadInput):
    """A model, price table or file the service would refuse; the message says which and why."""


def base_of(model: str) -> str:
    """The base model of a model id: `ft:gpt-4o-mini-2024-07-18:org:suffix:id` continues training
    a fine-tuned model of gpt-4o-mini-2024-07-18."""
    return model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 2 else model


def example_token_limit(model: str, override: int | None = None) -> int:
    if override:
        return override
    base = base_of(model)
    if base in EXAMPLE_TOKEN_LIMITS:
        return EXAMPLE_TOKEN_LIMITS[base]
    hint = ""
    if base.startswith("gpt-4-") or base == "gpt-4":
        hint = " (GPT-4 fine-tuning was never generally available)"
    known = ", ".join(sorted(EXAMPLE_TOKEN_LIMITS))
    raise HostedInputError(
        f"base_model {model!r} is not a known fine-tunable model{hint}; known: {known}. For a "
        "newer model set openai.example_token_limit to its tokens per training example")


# --------------------------------------------------------------------------------------------------
# Token counts


def tiktoken_encoder(model: str) -> Callable[[str], int] | None:
    """A function counting a text's tokens with the model's tokenizer, or None when tiktoken or its
    encoding file (fetched once, then cached) is not available."""
    try:
        import tiktoken

        name = "cl100k_base" if "3.5" in base_of(model) or "35" in base_of(model) else "o200k_base"
        enc = tiktoken.get_encoding(name)
    except Exception:  # not installed, or offline without a cached encoding
        return None
    return lambda text: len(enc.encode(text, disallowed_special=()))


def approximate_tokens(text: str) -> int:
    """About 4 bytes of UTF-8 per token for English text: used only when tiktoken is unavailable."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def example_tokens(row: dict, count: Callable[[str], int]) -> int:
    """Tokens of one chat example as the service counts them (OpenAI cookbook's rule: 3 per message,
    1 more per name, 3 to prime the reply, plus the text of every value)."""
    total = 3
    for message in row["messages"]:
        total += 3
        for key, value in message.items():
            if key == "weight" or value is None:
                continue
            total += count(value if isinstance(value, str) else json.dumps(value))
            if key == "name":
                total += 1
    for key in ("tools", "functions"):
        if row.get(key):
            total += count(json.dumps(row[key]))
    return total


# --------------------------------------------------------------------------------------------------
# Validation


@dataclass
class HostedFile:
    """One file as the service will see it."""

    name: str  # control | experiment | eval
    path: str
    rows: int = 0
    sha256: str | None = None
    size: int = 0
    tokens: list[int] = field(default_factory=list)  # per example
    exact_tokens: bool = True

    def billed_tokens(self, limit: int) -> int:
        """Tokens of one epoch over this file (each example counted up to the limit)."""
        return sum(min(t, limit) for t in self.tokens)


@dataclass
class HostedReport:
    problems: list[str] = field(default_factory=list)  # path:line: what; exit 2
    warnings: list[str] = field(default_factory=list)
    files: dict[str, HostedFile] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")


def check_message(j: int, m) -> list[str]:
    if type(m) is not dict:
        return [f"message {j} is not an object (got {_type(m)})"]
    errors = []
    role = m.get("role")
    if role not in ROLES:
        errors.append(f"message {j}: role {role!r} is not one of {', '.join(ROLES)}")
    unknown = sorted(set(m) - MESSAGE_KEYS)
    if unknown:
        errors.append(f"message {j} ({role}): unknown key(s) {', '.join(map(repr, unknown))}")
    content = m.get("content")
    calls = m.get("tool_calls") or m.get("function_call")
    if content is None:
        if not (role == "assistant" and calls):
            errors.append(f"message {j} ({role}) has no content")
    elif isinstance(content, str):
        if not content.strip() and not calls:
            errors.append(f"message {j} ({role}): content is empty")
    elif isinstance(content, list):
        if not content or any(type(p) is not dict or "type" not in p for p in content):
            errors.append(f"message {j} ({role}): content parts must be objects with a 'type'")
    else:
        errors.append(f"message {j} ({role}): content must be a string, got {_type(content)}")
    if "name" in m and type(m["name"]) is not str:
        errors.append(f"message {j} ({role}): name must be a string")
    if "weight" in m:
        if role != "assistant":
            errors.append(f"message {j} ({role}): weight is allowed on assistant messages only")
        elif m["weight"] not in (0, 1) or type(m["weight"]) is bool:
            errors.append(f"message {j}: weight must be 0 or 1, got {m['weight']!r}")
    return errors


def check_row(row) -> list[str]:
    """What the service would reject in one example (empty when nothing)."""
    if type(row) is not dict:
        return [f"not a JSON object (got {_type(row)})"]
    if "messages" not in row:
        return ["no 'messages': the service fine-tunes chat models on chat examples only"]
    messages = row["messages"]
    if type(messages) is not list or not messages:
        return [f"messages must be a non-empty array, got {_type(messages)}"]
    errors = [e for j, m in enumerate(messages, 1) for e in check_message(j, m)]
    unknown = sorted(set(row) - ROW_KEYS)
    if unknown:
        errors.append(f"unknown key(s) {', '.join(map(repr, unknown))} (the service allows "
                      f"{', '.join(sorted(ROW_KEYS))})")
    learn = [m for m in messages if type(m) is dict and m.get("role") == "assistant"
             and m.get("weight", 1) != 0]
    if not errors and not learn:
        errors.append("no assistant message to learn from (none, or all with weight 0)")
    return errors


def scan_file(name: str, path: Path, limit: int, count: Callable[[str], int] | None,
              min_examples: int, report: HostedReport) -> HostedFile:
    """Check one file line by line; problems and warnings go to the report."""
    f = HostedFile(name, str(path), exact_tokens=count is not None)
    count = count or approximate_tokens
    digest, seen = hashlib.sha256(), {}
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        report.problems.append(f"{path}: cannot read ({e.strerror or e})")
        return f
    with handle:
        for number, raw in enumerate(handle, 1):
            digest.update(raw)
            f.size += len(raw)
            if not raw.strip():
                continue
            f.rows += 1
            try:
                row = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except UnicodeDecodeError:
                report.problems.append(f"{path}:{number}: not valid UTF-8")
                continue
            except (json.JSONDecodeError, RecursionError) as e:
                report.problems.append(f"{path}:{number}: not valid JSON ({getattr(e, 'msg', e)})")
                continue
            errors = check_row(row)
            report.problems += [f"{path}:{number}: {e}" for e in errors]
            if errors:
                continue
            key = hashlib.sha1(json.dumps(row["messages"], sort_keys=True).encode()).digest()
            first = seen.setdefault(key, number)
            if first != number:
                report.warnings.append(f"{path}:{number}: duplicate of line {first}")
            tokens = example_tokens(row, count)
            f.tokens.append(tokens)
            if tokens > limit:
                what = f"{tokens:,} tokens, over the model's limit of {limit:,} per example"
                if f.exact_tokens:
                    report.problems.append(f"{path}:{number}: {what} (the service truncates it)")
                else:
                    report.warnings.append(f"{path}:{number}: about {what} (estimated: tiktoken "
                                           "is not available to count exactly)")
    f.sha256 = digest.hexdigest()
    if f.size > MAX_FILE_BYTES:
        report.problems.append(f"{path}: {f.size:,} bytes, over the service's "
                               f"{MAX_FILE_BYTES:,}-byte file limit")
    if f.rows < min_examples:
        report.problems.append(f"{path}: {f.rows} examples; the service needs at least "
                               f"{min_examples}")
    return f


def validate_pair_files(files: dict[str, Path], limit: int,
                        count: Callable[[str], int] | None) -> HostedReport:
    """Both arms' training files (and the shared eval file) against the service's format and
    limits. `count` counts a text's tokens (None: estimated, and over-long examples only warned)."""
    report = HostedReport()
    for name, path in files.items():
        minimum = 1 if name == "eval" else MIN_EXAMPLES
        report.files[name] = scan_file(name, Path(path), limit, count, minimum, report)
    if not any(f.exact_tokens for f in report.files.values()) and report.files:
        report.warnings.append("token counts are estimates (about 4 bytes a token): install "
                               "tiktoken, with its encoding cached, to count them exactly")
    return report


# --------------------------------------------------------------------------------------------------
# Jobs of a pair


def suffix_for(pair_id: str, arm: str) -> str:
    """The fine-tuned model's name suffix: the pair and the arm, within MAX_SUFFIX characters."""
    suffix = f"{pair_id}-{arm}"
    if len(suffix) <= MAX_SUFFIX:
        return suffix
    tag = hashlib.sha256(pair_id.encode()).hexdigest()[:8]
    keep = MAX_SUFFIX - len(arm) - len(tag) - 2
    return f"{pair_id[:keep].rstrip('-.')}-{tag}-{arm}"


def job_request(*, model: str, seed: int, hyperparameters: dict, pair_id: str, arm: str,
                training_file: str, validation_file: str | None, metadata: dict[str, str]) -> dict:
    """The keyword arguments of `client.fine_tuning.jobs.create` for one arm. The two arms' requests
    differ only in training_file, suffix and metadata's arm and data hashes."""
    request = {
        "model": model,
        "training_file": training_file,
        "seed": seed,
        "suffix": suffix_for(pair_id, arm),
        "metadata": {"pair_id": pair_id, "arm": arm, "created_by": TOOL, **metadata},
        "method": {"type": "supervised", "supervised": {"hyperparameters": dict(hyperparameters)}},
    }
    if validation_file:
        request["validation_file"] = validation_file
    if len(request["metadata"]) > 16 or any(len(str(v)) > 512 for v in metadata.values()):
        raise ValueError("job metadata: at most 16 keys and 512 characters a value")
    return request


def arm_of(job: dict, pair_id: str) -> str | None:
    """The arm a listed job (as a dict) belongs to in this pair, else None: by its metadata, or
    where a service keeps no metadata, by the suffix (Azure OpenAI returns it; a finished OpenAI job
    carries it in the fine-tuned model's name)."""
    meta = job.get("metadata") or {}
    if meta.get("pair_id") == pair_id and meta.get("arm") in ("control", "experiment"):
        return meta["arm"]
    if meta.get("pair_id"):
        return None
    for arm in ("control", "experiment"):
        suffix = suffix_for(pair_id, arm)
        model = job.get("fine_tuned_model") or ""
        if job.get("suffix") == suffix or f":{suffix}:" in model:
            return arm
    return None


def differing_hyperparameters(jobs: Iterable[dict]) -> dict[str, list]:
    """Hyperparameters the service resolved differently for the arms (`auto` picks from each
    file's size), e.g. {"n_epochs": [3, 4]}."""
    seen: dict[str, list] = {}
    for job in jobs:
        for key, value in (job.get("hyperparameters") or {}).items():
            seen.setdefault(key, []).append(value)
    return {k: v for k, v in seen.items() if len(set(map(str, v))) > 1}


# --------------------------------------------------------------------------------------------------
# Results

RESULT_COLUMNS = {
    "train_loss": "train_loss",
    "train_accuracy": "train_token_accuracy",
    "train_mean_token_accuracy": "train_token_accuracy",
    "valid_loss": "eval_batch_loss",  # a sampled validation batch at this step
    "valid_mean_token_accuracy": "eval_batch_token_accuracy",
    "full_valid_loss": "eval_loss",  # the whole validation file (end of each epoch)
    "full_valid_mean_token_accuracy": "eval_token_accuracy",
}


def parse_results(content: bytes) -> list[tuple[int, dict[str, float]]]:
    """(step, metrics) from a job's result file: a CSV (`step,train_loss,train_accuracy,
    valid_loss,...`), which the service may deliver base64-encoded. Empty cells are skipped."""
    text = content.decode("utf-8", errors="replace").lstrip("\ufeff")
    if not text.lstrip().startswith("step"):
        try:
            text = base64.b64decode(content, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("result file is neither a CSV nor base64 of one") from None
    steps = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            step = int(float(row["step"]))
        except (KeyError, TypeError, ValueError):
            continue
        metrics = {}
        for column, name in RESULT_COLUMNS.items():
            try:
                value = float(row.get(column) or "nan")
            except ValueError:
                continue
            if math.isfinite(value):
                metrics[name] = value
        steps.append((step, metrics))
    return steps


def final_metrics(steps: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """The final_* metrics `train compare` reads, from the per-step metrics: the last value of each,
    eval_loss from the full validation file where the service computed it, else the last batch."""
    last: dict[str, float] = {}
    for _, metrics in steps:
        last.update(metrics)
    out = {f"final_{k}": v for k, v in last.items()}
    if "eval_loss" not in last and "eval_batch_loss" in last:
        out["final_eval_loss"] = last["eval_batch_loss"]
    if "final_eval_loss" in out:
        out["final_perplexity"] = math.exp(min(out["final_eval_loss"], 700.0))
    if steps:
        out["final_global_step"] = float(max(s for s, _ in steps))
    return out

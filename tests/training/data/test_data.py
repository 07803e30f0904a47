"""training.data: validation messages, summaries, exact token counts, loss masks and packing."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import pytest

from training.data import (
    DataError,
    ValidationReport,
    detect_format,
    encode_example,
    encode_examples,
    file_sha256,
    load_examples,
    print_report,
    validate_files,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "data"
EOT = "<|eot_id|>"


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


GOOD = chat(("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", "4."))
MULTI = chat(
    ("system", "You are a tutor."),
    ("user", "Name a prime."),
    ("assistant", "Seven is prime."),
    ("user", "And an even one?"),
    ("assistant", "Two, the only even prime."),
)


def write_lines(path: Path, lines: list) -> Path:
    """Each item: a dict (dumped as JSON), a str (written as is) or bytes (written raw)."""
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            if isinstance(line, str):
                line = line.encode("utf-8")
            f.write(line + b"\n")
    return path


def check_messages(messages: list[str], path: Path, expected: list[tuple[int, str]]) -> None:
    """messages are exactly `path:line: ...` for each (line, fragment), in order."""
    assert len(messages) == len(expected), "\n".join(messages)
    for message, (line, fragment) in zip(messages, expected, strict=True):
        prefix = f"{path}:{line}: " if line else f"{path}: "
        assert message.startswith(prefix), (message, prefix)
        assert fragment in message, (message, fragment)


# --------------------------------------------------------------------------------------------------
# Structural validation


def test_every_bad_line_is_reported_with_its_line_number(tmp_path):
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            GOOD,  # 1
            "",  # 2: blank, skipped
            '{"messages": [',  # 3
            b'\xff{"text": "x"}',  # 4
            "[1, 2]",  # 5
            {"question": "q", "answer": "a"},  # 6
            {"messages": "hello"},  # 7
            {"messages": []},  # 8
            chat(("user", ""), ("assistant", "a")),  # 9
            chat(("", "hi"), ("assistant", "a")),  # 10
            chat(("bot", "hi"), ("assistant", "a")),  # 11
            chat(("system", "s"), ("user", "only a question")),  # 12
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},
            {"messages": ["hi", {"role": "assistant", "content": "a"}]},  # 14
            chat(("assistant", "I speak first"), ("user", "ok")),  # 15
            GOOD,  # 16: duplicate of 1 (a warning)
            {"prompt": "no completion"},  # 17
            chat(("user", "hi"), ("assistant", "  \n ")),  # 18
            "   ",  # 19: blank
            {"messages": [{"content": "no role"}, {"role": "assistant"}]},  # 20
        ],
    )
    report = validate_files([path])
    assert not report.ok
    expected = [
        (3, "not valid JSON"),
        (4, "not valid UTF-8 (byte 0xff at column 1)"),
        (5, "not a JSON object (got an array)"),
        (6, "unknown format"),
        (7, "messages must be a list, got a string"),
        (8, "messages is empty"),
        (9, "message 1 (user): content is empty"),
        (10, "message 1: role is empty"),
        (11, "message 1: unknown role 'bot'"),
        (12, "no assistant message to learn from"),
        (13, "message 1 (user) content must be a string, got a number"),
        (14, "message 1 is not an object"),
        (15, "message 1 is an assistant turn"),
        (17, "'prompt' without 'completion'"),
        (18, "message 2 (assistant): content is empty"),
        (20, "message 1 has no role"),
        (20, "message 2 (assistant) has no content"),
    ]
    check_messages(report.problems, path, expected)
    check_messages(report.warnings, path, [(16, "duplicate of line 1")])
    [summary] = report.files
    assert summary.rows == 18  # non-blank lines
    assert summary.bad_rows == 16
    assert summary.duplicates == 1
    assert summary.format == "chat"

    with pytest.raises(DataError) as caught:
        load_examples(path)
    assert caught.value.problems == report.problems
    assert str(caught.value).splitlines() == report.problems


def test_prompt_completion_and_text_rows_are_checked(tmp_path):
    path = write_lines(
        tmp_path / "pc.jsonl",
        [
            {"prompt": "Q: 1+1?", "completion": " 2"},
            {"prompt": "Q", "completion": None},
            {"prompt": ["Q"], "completion": "A"},
            {"prompt": "Q", "completion": ""},
            {"prompt": "Q", "completion": "A", "text": "both"},
            {"completion": "A"},
        ],
    )
    check_messages(
        validate_files(path).problems,
        path,
        [
            (2, "completion must be a string, got null"),
            (3, "prompt must be a string, got an array"),
            (4, "completion is empty"),
            (5, "more than one format"),
            (6, "'completion' without 'prompt'"),
        ],
    )
    path = write_lines(tmp_path / "text.jsonl", [{"text": "hello"}, {"text": 3}, {"text": " "}])
    check_messages(
        validate_files(path).problems,
        path,
        [(2, "text must be a string, got a number"), (3, "text is empty")],
    )


def test_a_file_that_mixes_formats_is_a_problem(tmp_path):
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [{"text": "odd one out"}, GOOD, MULTI, {"prompt": "p", "completion": "c"}],
    )
    report = validate_files(path)
    check_messages(
        report.problems,
        path,
        [
            (1, "text row in a file of chat rows (line 2 is one)"),
            (4, "prompt_completion row in a file of chat rows"),
        ],
    )
    assert report.files[0].format == "chat"


def test_empty_missing_and_directory_inputs(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    blank = write_lines(tmp_path / "blank.jsonl", ["", "  ", "\t"])
    missing = tmp_path / "missing.jsonl"
    report = validate_files([empty, blank, missing])
    assert report.problems == [
        f"{empty}: empty file, no examples",
        f"{blank}: empty file, no examples",
        f"{missing}: no such file",
    ]
    assert [f.rows for f in report.files] == [0, 0, 0]
    assert report.files[2].sha256 is None

    nothing = tmp_path / "nothing"
    nothing.mkdir()
    assert validate_files(nothing).problems == [f"{nothing}: no .jsonl files in this directory"]

    with pytest.raises(DataError, match="no such file"):
        load_examples(missing)


def test_bom_crlf_and_a_last_line_without_newline(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n\r\n" + json.dumps(MULTI).encode()
    )
    report = validate_files(path)
    assert report.ok, report.problems
    assert report.files[0].rows == 2
    assert load_examples(path) == [GOOD, MULTI]


def test_good_files_give_the_right_summary(tiny_tokenizer):
    report = validate_files([EXAMPLES])  # a directory stands for its *.jsonl files
    assert report.ok, report.problems
    names = sorted(p.name for p in EXAMPLES.glob("*.jsonl"))
    assert [Path(f.path).name for f in report.files] == names
    for summary in report.files:
        raw = Path(summary.path).read_bytes()
        rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
        assert summary.rows == len(rows)
        assert summary.format == "chat"
        assert summary.sha256 == hashlib.sha256(raw).hexdigest() == file_sha256(summary.path)
        assert summary.bad_rows == 0
        assert summary.duplicates == len(rows) - len({json.dumps(r, sort_keys=True) for r in rows})
        assert summary.tokens is None  # no tokenizer
    assert len(report.warnings) == sum(f.duplicates for f in report.files)

    counted = validate_files([EXAMPLES], tokenizer=tiny_tokenizer, max_seq_length=1024)
    assert counted.ok
    for summary in counted.files:
        lengths = sorted(
            len(encode_example(r, tiny_tokenizer, 10_000)["input_ids"])
            for r in load_examples(summary.path)
        )
        stats = summary.tokens
        assert (stats.min, stats.max) == (lengths[0], lengths[-1])
        assert stats.median == lengths[(len(lengths) + 1) // 2 - 1]
        assert stats.p95 == lengths[-(-len(lengths) * 95 // 100) - 1]
        assert stats.mean == pytest.approx(sum(lengths) / len(lengths))
        assert sum(c for _, _, c in stats.histogram) == len(lengths)
        assert stats.histogram[0][0] == lengths[0] and stats.histogram[-1][1] == lengths[-1]


def test_detect_format():
    assert detect_format(GOOD) == "chat"
    assert detect_format({"prompt": "p", "completion": "c", "id": 3}) == "prompt_completion"
    assert detect_format({"text": "t"}) == "text"
    with pytest.raises(ValueError, match="unknown format"):
        detect_format({"input": "x"})
    with pytest.raises(ValueError, match="not a JSON object"):
        detect_format(["text"])


def test_file_sha256_streams_large_files(tmp_path):
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * 20_000  # 5 MB: several chunks
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# Token counts: exactly what training sees

VARIED = [
    GOOD,
    MULTI,
    chat(("user", "  padded with spaces \n"), ("assistant", "\tand tabs\t")),
    chat(("user", "Unicode: ünïcödé 日本語 🙂"), ("assistant", "ok 🙂")),
    chat(("user", "{{ not jinja }} {% raw %}"), ("assistant", "braces {}")),
    chat(("user", "a" * 300), ("assistant", "b " * 120)),
    chat(("system", "Be brief."), ("user", "Same system prompt"), ("assistant", "cached pieces")),
    chat(("user", f"text with a fake {EOT} inside"), ("assistant", "odd")),
    chat(("user", "q"), ("assistant", "first"), ("user", "q2"), ("assistant", "second")),
]


def row_lengths(rows, tokenizer) -> list[int]:
    return [len(encode_example(r, tokenizer, 100_000)["input_ids"]) for r in rows]


def flagged_lines(path, tokenizer, limit) -> set[int]:
    report = validate_files(path, tokenizer=tokenizer, max_seq_length=limit)
    found = [
        re.fullmatch(rf"{re.escape(str(path))}:(\d+): \d+ tokens, over max_seq_length {limit}", p)
        for p in report.problems
    ]
    assert all(found), report.problems
    return {int(m.group(1)) for m in found}


@pytest.mark.parametrize(
    "rows",
    [
        VARIED,
        [
            {"prompt": "Q: what is 2+2?\nA:", "completion": " 4"},
            {"prompt": "p " * 50, "completion": "c"},
        ],
        [{"text": "Plain text to learn from."}, {"text": "x " * 200}],
    ],
    ids=["chat", "prompt_completion", "text"],
)
def test_length_check_equals_encoded_length(tmp_path, tiny_tokenizer, rows):
    path = write_lines(tmp_path / "rows.jsonl", rows)
    lengths = row_lengths(rows, tiny_tokenizer)
    assert len(set(lengths)) > 1
    for limit in [*sorted(set(lengths)), min(lengths) - 1]:
        expected = {i + 1 for i, n in enumerate(lengths) if n > limit}
        assert flagged_lines(path, tiny_tokenizer, limit) == expected, limit
    report = validate_files(path, tokenizer=tiny_tokenizer, max_seq_length=min(lengths))
    longest = max(range(len(rows)), key=lambda i: lengths[i])
    assert (
        f"{path}:{longest + 1}: {lengths[longest]} tokens, over max_seq_length {min(lengths)}"
        in (report.problems)
    )
    assert validate_files(path, tokenizer=tiny_tokenizer).ok  # no limit: nothing is too long


def other_template(tokenizer):
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] | upper }}"
        "<|end_header_id|>\n{{ m['content'] }}<|eot_id|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>ASSISTANT<|end_header_id|>\n{% endif %}"
    )


def markup_token_eats_newlines(tokenizer):
    from tokenizers import AddedToken

    tokenizer.backend_tokenizer.add_special_tokens(
        [AddedToken("<|end_header_id|>", rstrip=True, special=True, normalized=False)]
    )


@pytest.mark.parametrize("change", [other_template, markup_token_eats_newlines])
def test_lengths_are_exact_for_other_templates_and_tokenizers(tmp_path, tiny_model_path, change):
    """Whatever the template or the tokenizer's added tokens, counts equal encode_example's."""
    from training.experiment.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_path)
    change(tokenizer)
    path = write_lines(tmp_path / "rows.jsonl", VARIED)
    lengths = row_lengths(VARIED, tokenizer)
    assert lengths != row_lengths(VARIED, load_tokenizer(tiny_model_path))
    for limit in sorted(set(lengths)):
        expected = {i + 1 for i, n in enumerate(lengths) if n > limit}
        assert flagged_lines(path, tokenizer, limit) == expected, limit
    # The assistant turn is what the template writes for it (here maybe a newline after <|eot_id|>).
    runs = [tokenizer.decode(r) for r in labelled_runs(encode_example(MULTI, tokenizer, 1024))]
    assert [r.rstrip("\n") for r in runs] == [
        "Seven is prime." + EOT,
        "Two, the only even prime." + EOT,
    ]


def test_special_token_text_in_content_is_a_warning(tmp_path, tiny_tokenizer):
    path = write_lines(tmp_path / "rows.jsonl", [GOOD, VARIED[7], {"messages": MULTI["messages"]}])
    assert validate_files(path).warnings == []  # needs the tokenizer to know its special tokens
    report = validate_files(path, tokenizer=tiny_tokenizer)
    assert report.ok
    assert report.warnings == [f"{path}:2: message 1 contains the special token '{EOT}' as text"]


# --------------------------------------------------------------------------------------------------
# encode_example: the loss mask


def labelled_runs(encoded) -> list[list[int]]:
    runs, current = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"], strict=True):
        if label == -100:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    return [*runs, current] if current else runs


def test_chat_labels_only_the_assistant_reply_and_its_end_of_turn(tiny_tokenizer):
    encoded = encode_example(GOOD, tiny_tokenizer, 1024)
    rendered = tiny_tokenizer.apply_chat_template(GOOD["messages"], tokenize=False)
    assert encoded["input_ids"] == tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert encoded["input_ids"][0] == tiny_tokenizer.bos_token_id
    runs = labelled_runs(encoded)
    assert [tiny_tokenizer.decode(r) for r in runs] == ["4." + EOT]


def test_multi_turn_labels_every_assistant_turn_and_nothing_else(tiny_tokenizer):
    encoded = encode_example(MULTI, tiny_tokenizer, 1024)
    runs = [tiny_tokenizer.decode(r) for r in labelled_runs(encoded)]
    assert runs == ["Seven is prime." + EOT, "Two, the only even prime." + EOT]
    learned = "".join(runs)
    for text in ("tutor", "Name a prime", "even one", "system", "user", "assistant"):
        assert text not in learned
    masked = [
        t for t, label in zip(encoded["input_ids"], encoded["labels"], strict=True) if label == -100
    ]
    assert "Name a prime." in tiny_tokenizer.decode(masked)


def test_prompt_completion_masks_the_prompt(tiny_tokenizer):
    row = {"prompt": "Translate: chat ->", "completion": " cat"}
    encoded = encode_example(row, tiny_tokenizer, 1024)
    prompt = tiny_tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    completion = tiny_tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    assert encoded["input_ids"] == [bos, *prompt, *completion, eos]
    assert encoded["labels"] == [-100] * (1 + len(prompt)) + completion + [eos]
    [run] = labelled_runs(encoded)
    assert tiny_tokenizer.decode(run) == " cat" + tiny_tokenizer.eos_token


def test_text_is_labelled_throughout_and_truncation(tiny_tokenizer):
    encoded = encode_example({"text": "All of this is learned."}, tiny_tokenizer, 1024)
    assert encoded["labels"] == encoded["input_ids"]
    assert encoded["input_ids"][0] == tiny_tokenizer.bos_token_id
    assert encoded["input_ids"][-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(encoded["input_ids"][1:-1]) == "All of this is learned."

    full = encode_example(MULTI, tiny_tokenizer, 1024)
    short = encode_example(MULTI, tiny_tokenizer, 10)
    assert short == {"input_ids": full["input_ids"][:10], "labels": full["labels"][:10]}
    with pytest.raises(ValueError, match="max_seq_length"):
        encode_example(GOOD, tiny_tokenizer, 0)


def test_a_template_that_rewrites_earlier_turns_is_reported(tmp_path, tiny_model_path):
    from training.experiment.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_path)
    # Like templates that drop earlier reasoning: only the last assistant turn keeps its content.
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
        "\n\n{% if m['role'] != 'assistant' or loop.last %}{{ m['content'] }}{% endif %}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
        "\n\n{% endif %}"
    )
    with pytest.raises(ValueError, match="chat template problem"):
        encode_example(MULTI, tokenizer, 1024)
    encode_example(GOOD, tokenizer, 1024)  # one assistant turn: fine
    path = write_lines(tmp_path / "rows.jsonl", [MULTI, GOOD])
    report = validate_files(path, tokenizer=tokenizer)
    check_messages(report.problems, path, [(1, "chat template problem")])
    # every row is checked, not only a file's first: what validation accepts, training encodes
    later = write_lines(tmp_path / "later.jsonl", [GOOD, GOOD, MULTI])
    report = validate_files(later, tokenizer=tokenizer)
    check_messages(report.problems, later, [(3, "chat template problem")])


def test_generation_markers_and_the_prefix_fallback_give_the_same_labels(tiny_model_path):
    """The project's template marks the assistant's part with {% generation %}: the markers render
    nothing, and the labels from the assistant mask equal those of the one fallback (rendering
    prefixes) that a template without markers takes."""
    from training.data.encoding import has_generation_markers
    from training.experiment.models import LLAMA3_CHAT_TEMPLATE, load_tokenizer

    marked = load_tokenizer(tiny_model_path)
    assert marked.chat_template == LLAMA3_CHAT_TEMPLATE and has_generation_markers(marked)
    plain = load_tokenizer(tiny_model_path)
    plain.chat_template = re.sub(r"\{% (end)?generation %\}", "", LLAMA3_CHAT_TEMPLATE)
    assert not has_generation_markers(plain)
    for row in VARIED:
        assert marked.apply_chat_template(row["messages"], tokenize=False) == (
            plain.apply_chat_template(row["messages"], tokenize=False))
    assert encode_examples(VARIED, marked, 10_000) == encode_examples(VARIED, plain, 10_000)


def test_chat_rows_need_a_chat_template_and_a_fast_tokenizer():
    from types import SimpleNamespace

    from training.data import encode_chats

    for tokenizer, why in [(SimpleNamespace(chat_template=None, is_fast=True), "no chat template"),
                           (SimpleNamespace(chat_template="{{ x }}", is_fast=False), "fast")]:
        with pytest.raises(ValueError, match=why):
            encode_chats([GOOD["messages"]], tokenizer)


def test_encode_examples_equals_encode_example_row_by_row(tiny_tokenizer):
    rows = [
        *VARIED,
        {"prompt": "Q: 2+2?", "completion": " 4"},
        {"text": "plain"},
        {"prompt": "p", "completion": "c", "id": 7},
    ]
    assert encode_examples(rows, tiny_tokenizer, 64) == [
        encode_example(r, tiny_tokenizer, 64) for r in rows
    ]
    assert encode_examples([], tiny_tokenizer, 64) == []


# --------------------------------------------------------------------------------------------------
# Packing: padding-free batches give exactly the loss of padded ones


def test_flattened_batch_loss_equals_padded_loss(tiny_model_path, tiny_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, DataCollatorWithFlattening

    rows = [
        MULTI,
        GOOD,
        {
            "prompt": "Question: why test packing?\nAnswer:",
            "completion": " To be sure it is exact.",
        },
        {"text": "A plain text example, labelled from start to end."},
        VARIED[5],
    ]
    features = [encode_example(r, tiny_tokenizer, 1024) for r in rows]
    sizes = [len(f["input_ids"]) for f in features]
    assert len(set(sizes)) > 1

    batch = DataCollatorWithFlattening()(features)
    assert set(batch) >= {"input_ids", "labels", "position_ids"}
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape == (1, sum(sizes))  # no padding at all
    assert batch["position_ids"][0].tolist() == [i for n in sizes for i in range(n)]
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    assert all(batch["labels"][0, s].item() == -100 for s in starts)  # no loss across examples

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_path, attn_implementation="sdpa", dtype=torch.float32
    ).eval()
    with torch.no_grad():
        flat = model(**batch, use_cache=False).loss.item()

        # Each example alone, averaged by the number of predicted tokens.
        total, count = 0.0, 0
        for f in features:
            ids = torch.tensor([f["input_ids"]])
            labels = torch.tensor([f["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            assert n > 0
            total += model(input_ids=ids, labels=labels, use_cache=False).loss.item() * n
            count += n
        alone = total / count

        # The same examples right-padded in one batch (labels -100, attention mask 0).
        width = max(sizes)
        pad = tiny_tokenizer.pad_token_id
        padded = model(
            input_ids=torch.tensor(
                [f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in features]
            ),
            attention_mask=torch.tensor([[1] * n + [0] * (width - n) for n in sizes]),
            labels=torch.tensor(
                [f["labels"] + [-100] * (width - len(f["labels"])) for f in features]
            ),
            use_cache=False,
        ).loss.item()

        # Sanity: without position_ids the examples would attend to each other and the loss differs.
        leaky = model(
            input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False
        ).loss.item()

    assert count == int((batch["labels"][0, 1:] != -100).sum())
    assert abs(leaky - flat) > 1e-4
    assert flat == pytest.approx(alone, abs=1e-5)
    assert flat == pytest.approx(padded, abs=1e-5)


# --------------------------------------------------------------------------------------------------
# The printed report


def test_print_report_lists_problems_with_a_cap_then_summary_and_histogram(
    tmp_path, tiny_tokenizer
):
    from rich.console import Console

    bad = write_lines(tmp_path / "bad.jsonl", [GOOD] + ["{oops"] * 60)
    good = write_lines(tmp_path / "good [v2].jsonl", VARIED)
    report = validate_files([bad, good], tokenizer=tiny_tokenizer, max_seq_length=1024)
    assert len(report.problems) == 60
    console = Console(file=io.StringIO(), width=250, record=True, color_system=None)
    print_report(report, console)
    out = console.export_text()
    assert "60 problems:" in out
    assert f"{bad}:2: not valid JSON" in out
    assert f"{bad}:51: not valid JSON" in out
    assert f"{bad}:52: not valid JSON" not in out  # only the first 50
    assert "... and 10 more" in out
    assert "good [v2].jsonl" in out  # brackets are not taken as markup
    t = report.files[1].tokens
    [row] = [line for line in out.splitlines() if "good [v2].jsonl" in line and " chat " in line]
    assert row.split()[-7:] == [
        "9",
        "chat",
        "0",
        "0",
        f"{t.min}/{t.median}/{t.p95}/{t.max}",
        f"{t.mean:.1f}",
        report.files[1].sha256[:8],
    ]
    assert f"token lengths of {good}:" in out
    assert "█" in out
    assert "fix the data before training" in out

    console = Console(file=io.StringIO(), width=250, record=True, color_system=None)
    print_report(validate_files(good), console)
    out = console.export_text()
    assert "OK: 1 files, 9 examples" in out
    assert "problem" not in out


def test_report_ok_and_rows():
    report = ValidationReport()
    assert report.ok and report.rows == 0
    report.problems.append("x: no such file")
    assert not report.ok


# ----------------------------------------------------------------------------- hostile files
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\uDBFF"])
def test_lone_surrogate_names_the_line_even_with_a_tokenizer(tmp_path, tiny_tokenizer, escape):
    path = tmp_path / "s.jsonl"
    good = json.dumps(GOOD)
    bad = json.dumps(GOOD).replace("4.", f"4. {escape}")
    pair = json.dumps(chat(("user", "ok \\ud83d\\ude00"), ("assistant", "fine")))  # one emoji
    path.write_text(f"{good}\n{bad}\n{pair}\n".replace("\\\\u", "\\u"))
    report = validate_files([path], tokenizer=tiny_tokenizer, max_seq_length=256)
    assert report.problems == [
        f"{path}:2: lone surrogate \\u{escape[2:].lower()} in message 3 content: not valid "
        "Unicode (half of an emoji?); fix or drop this row"]
    with pytest.raises(DataError, match=f"{path}:2: lone surrogate"):
        load_examples(path)


def test_a_number_python_will_not_parse_names_its_line(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"text": "a", "id": ' + "9" * 5000 + "}\n")
    report = validate_files([path], max_seq_length=256)
    assert report.problems == [
        f"{path}:2: not valid JSON here: a number with more than 4300 digits"]
    with pytest.raises(DataError, match=f"{path}:2: not valid JSON here"):
        load_examples(path)


@pytest.mark.parametrize("text", ['[{"text": "a"}, {"text": "b"}]\n',
                                  '[\n  {"text": "a"},\n  {"text": "b"}\n]\n',
                                  '  [{"text": "a"},\n{"text": "b"}]'])
def test_a_whole_file_json_array_gets_one_message(tmp_path, text):
    path = tmp_path / "rows.json"
    path.write_text(text)
    report = validate_files([path])
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{path}: a JSON array, not JSONL: write one JSON "
                                         "object per line")


@pytest.mark.parametrize("row,problem", [
    ({"text": ""}, "text is empty"),
    ({"foo": 1}, "text"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "assistant"),
])
def test_a_one_row_file_with_a_bad_row_gets_that_row_s_problem(tmp_path, row, problem):
    path = write_lines(tmp_path / "one.jsonl", [row])
    report = validate_files([path])
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{path}:1: ") and problem in report.problems[0]
    assert "several lines" not in report.problems[0]


def test_a_pretty_printed_object_gets_one_message(tmp_path):
    path = tmp_path / "row.json"
    path.write_text(json.dumps(GOOD, indent=2))
    report = validate_files([path])
    assert len(report.problems) == 1
    assert "one JSON object over several lines, not JSONL" in report.problems[0]


def test_jsonl_whose_first_row_is_an_array_is_still_checked_by_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(f'[1, 2]\n{json.dumps(GOOD)}\n[3]\n')
    assert validate_files([path]).problems == [
        f"{path}:1: not a JSON object (got an array)", f"{path}:3: not a JSON object (got an array)"]


@pytest.mark.parametrize("last", ["user", "system"])
def test_a_conversation_ending_without_an_assistant_turn_warns(tmp_path, last):
    path = tmp_path / "c.jsonl"
    row = chat(("user", "q"), ("assistant", "a"), (last, "dangling"))
    path.write_text(json.dumps(row) + "\n")
    report = validate_files([path])
    assert report.ok
    assert report.warnings == [f"{path}:1: conversation ends with a {last} turn: nothing after "
                               "the last assistant turn is learned"]


def test_fifo_symlink_loop_and_broken_link_are_problems_not_hangs(tmp_path):
    import os

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(tmp_path / "loop2.jsonl")
    (tmp_path / "loop2.jsonl").symlink_to(loop)
    broken = tmp_path / "broken.jsonl"
    broken.symlink_to(tmp_path / "gone.jsonl")
    report = validate_files([fifo, loop, broken])
    assert report.problems == [
        f"{fifo}: a FIFO (named pipe), not a regular file",
        f"{loop}: a symlink loop (too many levels of symbolic links)",
        f"{broken}: a broken symlink (to {tmp_path / 'gone.jsonl'}, which does not exist)"]
    with pytest.raises(DataError, match="FIFO"):
        load_examples(fifo)


def test_same_data_for_both_arms_or_an_arm_and_eval_warns(tmp_path):
    from training.data import same_data_warnings

    rows = [GOOD, MULTI]
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in rows))
    b.write_text(a.read_text())
    c.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    summaries = validate_files([a, b, c, a]).files
    same_file = same_data_warnings({"control": summaries[0], "experiment": summaries[3]})
    assert same_file == [f"control and experiment are the same file ({a}): the pair compares "
                         "nothing"]
    copies = same_data_warnings({"control": summaries[0], "eval": summaries[1]})
    assert copies == [f"control and eval are identical files ({a} and {b}): eval loss would "
                      "measure memorisation, not generalisation"]
    shuffled = same_data_warnings({"experiment": summaries[2], "eval": summaries[0]})
    assert "the same rows in another order" in shuffled[0]
    other = tmp_path / "d.jsonl"
    other.write_text(json.dumps(GOOD) + "\n")
    assert same_data_warnings({"control": summaries[0],
                               "experiment": validate_files([other]).files[0]}) == []


# ----------------------------------------------------------------------------- long examples
@pytest.mark.parametrize("policy", ["drop", "truncate"])
def test_a_long_example_policy_counts_instead_of_refusing(tmp_path, tiny_tokenizer, policy):
    path = write_lines(tmp_path / "rows.jsonl", VARIED)
    lengths = row_lengths(VARIED, tiny_tokenizer)
    limit = sorted(lengths)[len(lengths) // 2]
    n_long = sum(n > limit for n in lengths)
    assert n_long > 0
    refused = validate_files(path, tokenizer=tiny_tokenizer, max_seq_length=limit)
    assert len(refused.problems) == n_long  # the default, error: one problem per long row
    report = validate_files(path, tokenizer=tiny_tokenizer, max_seq_length=limit,
                            long_examples=policy)
    assert report.ok and report.files[0].too_long == n_long
    done = "dropped" if policy == "drop" else "truncated"
    assert f"{path}: {n_long} example(s) over max_seq_length {limit} tokens: {done}" in " ".join(
        report.warnings)


def test_fit_to_length_drops_truncates_or_refuses_as_the_policy_says(tiny_tokenizer):
    from training.data import fit_to_length

    lengths = row_lengths(VARIED, tiny_tokenizer)
    limit = sorted(lengths)[len(lengths) // 2]
    long = {i for i, n in enumerate(lengths) if n > limit}
    rows, encoded, n = fit_to_length(VARIED, tiny_tokenizer, limit, "drop")
    assert n == len(long) and rows == [r for i, r in enumerate(VARIED) if i not in long]
    assert encoded == [encode_example(r, tiny_tokenizer, limit) for r in rows]  # still aligned
    rows, encoded, n = fit_to_length(VARIED, tiny_tokenizer, limit, "truncate")
    cut = [encode_example(r, tiny_tokenizer, limit) for r in VARIED]
    kept = [i for i, e in enumerate(cut) if any(t != -100 for t in e["labels"])]  # an answer left
    assert n == len(long) and rows == [VARIED[i] for i in kept]
    assert encoded == [cut[i] for i in kept]
    assert max(len(e["input_ids"]) for e in encoded) == limit
    with pytest.raises(DataError, match=f"over max_seq_length {limit}"):
        fit_to_length(VARIED, tiny_tokenizer, limit, "error", "train.jsonl")
    assert fit_to_length(VARIED, tiny_tokenizer, max(lengths), "error")[2] == 0


def test_a_policy_that_leaves_nothing_to_learn_from_is_refused(tmp_path, tiny_tokenizer):
    from training.data import fit_to_length

    path = write_lines(tmp_path / "rows.jsonl", VARIED)
    shortest = min(row_lengths(VARIED, tiny_tokenizer))
    report = validate_files(path, tokenizer=tiny_tokenizer, max_seq_length=shortest - 1,
                            long_examples="drop")
    assert report.problems == [
        f"{path}: all {len(VARIED)} examples are over max_seq_length {shortest - 1} tokens: "
        "training.long_examples: drop leaves nothing (raise max_seq_length, or truncate)"]
    with pytest.raises(DataError, match="drop leaves nothing"):
        fit_to_length(VARIED, tiny_tokenizer, shortest - 1, "drop", "rows.jsonl")
    # cut before any answer: nothing to learn from (and a NaN eval loss), refused in training
    with pytest.raises(DataError, match="no example keeps a token to learn from"):
        fit_to_length(VARIED, tiny_tokenizer, 3, "truncate", "rows.jsonl")
    # ... and by validation first, which counts the rows training will leave out
    report = validate_files(path, tokenizer=tiny_tokenizer, max_seq_length=3,
                            long_examples="truncate")
    assert report.problems == [
        f"{path}: all {len(VARIED)} examples are cut at max_seq_length 3 tokens before their "
        "answer: training.long_examples: truncate leaves nothing to learn from (raise "
        "max_seq_length)"]


def test_validation_counts_the_truncated_rows_that_training_leaves_out(tmp_path, tiny_tokenizer):
    from training.data import fit_to_length

    path = write_lines(tmp_path / "rows.jsonl", VARIED)
    lengths = row_lengths(VARIED, tiny_tokenizer)
    for limit in sorted(set(lengths))[:-1]:
        rows, _, n_long = fit_to_length(VARIED, tiny_tokenizer, limit, "truncate")
        left_out = len(VARIED) - len(rows)
        if left_out == 0 or left_out == len(VARIED):
            continue
        report = validate_files(path, tokenizer=tiny_tokenizer, max_seq_length=limit,
                                long_examples="truncate")
        assert report.ok, report.problems
        assert f"{n_long} example(s) over max_seq_length {limit} tokens: truncated in training " \
               f"(training.long_examples: truncate); {left_out} of them cut before the answer, " \
               "left out" in " ".join(report.warnings), report.warnings
        break
    else:
        pytest.fail("no max_seq_length leaves some rows out and keeps others")


def _generated_rows() -> list[dict]:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_validate", Path(__file__).resolve().parents[3] / "bench" / "bench_validate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return list(bench.synthetic_rows(1000, seed=11))


@pytest.mark.parametrize("template,counting", [("llama3", "inline"), ("llama3", "process"),
                                               ("other", "inline")])
def test_the_fast_counter_equals_the_encoder_on_every_bundled_and_generated_dataset(
        tmp_path, tiny_model_path, template, counting):
    """validation's counter (token_counter) is a shortcut: on every dataset the project ships or
    generates, its multiset of lengths equals the training encoder's, row for row; also when a
    long file's counts come from a counting process (forced here from the first batch)."""
    from training.data.token_counter import TokenCounter
    from training.data.validation import _scan_file
    from training.experiment.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_path)
    if template == "other":
        other_template(tokenizer)
    datasets = {p.name: p for p in sorted(EXAMPLES.glob("*.jsonl"))}
    datasets["generated.jsonl"] = write_lines(tmp_path / "generated.jsonl", _generated_rows())
    datasets["varied.jsonl"] = write_lines(tmp_path / "varied.jsonl", VARIED)
    for name, path in datasets.items():
        counter = TokenCounter(tokenizer, None,
                                process_after_batches=1 if counting == "process" else 8)
        try:
            scan = _scan_file(str(path), counter=counter)
        finally:
            counter.close()
        assert not scan.problems, (name, scan.problems[:3])
        assert counter.chat_mode == ("pieces" if template == "llama3" else "encoder")
        assert counter.fast is not None and counter.fast.enabled, "fast_bpe counted the pieces"
        if counting == "process" and template == "llama3":
            assert counter.process_failed is False and counter.batches >= 1
        expected = sorted(row_lengths(load_examples(path), tokenizer))
        assert sorted(scan.lengths) == expected, name


def test_a_counting_process_that_dies_leaves_the_counts_exact(tmp_path, tiny_tokenizer):
    """The counting process killed (out of memory, say) between two files: the second file's
    batches are counted in this process, and its lengths are still the encoder's."""
    import multiprocessing

    from training.data.token_counter import TokenCounter
    from training.data.validation import _scan_file

    first = write_lines(tmp_path / "first.jsonl", _generated_rows())
    second = write_lines(tmp_path / "second.jsonl", VARIED)
    counter = TokenCounter(tiny_tokenizer, None, process_after_batches=1)
    try:
        _scan_file(str(first), counter=counter)
        children = multiprocessing.active_children()
        assert counter.process is not None and children
        for child in children:
            child.kill()
            child.join()
        scan = _scan_file(str(second), counter=counter)
    finally:
        counter.close()
    assert counter.process_failed and counter.process is None
    assert sorted(scan.lengths) == sorted(row_lengths(load_examples(second), tiny_tokenizer))

"""The hosted backend's pure pieces: limits, validation rules, tokens, cost, job requests, results."""

import base64
import json

import pytest

from training.experiment.config import ConfigError, parse_config
from training.hosted import service as hosted


def chat(*turns, **extra):
    roles = ["user", "assistant"] * len(turns)
    return {"messages": [{"role": r, "content": c} for r, c in zip(roles, turns, strict=False)],
            **extra}


def test_token_limits_know_the_fine_tunable_models():
    assert hosted.example_token_limit("gpt-4o-mini-2024-07-18") == 65_536
    assert hosted.example_token_limit("ft:gpt-4o-mini-2024-07-18:org:x:abc") == 65_536
    assert hosted.example_token_limit("gpt-35-turbo-0125") == 16_385  # Azure's spelling
    assert hosted.example_token_limit("gpt-5-ft-preview", override=1000) == 1000
    with pytest.raises(hosted.HostedInputError, match="GPT-4 fine-tuning was never"):
        hosted.example_token_limit("gpt-4-0613")


@pytest.mark.parametrize(("row", "problem"), [
    ([], "not a JSON object (got an array)"),
    ({"prompt": "a", "completion": "b"}, "no 'messages'"),
    ({"messages": []}, "messages must be a non-empty array"),
    (chat("hi"), "no assistant message to learn from"),
    ({"messages": [{"role": "user", "content": "q"},
                   {"role": "assistant", "content": "a", "weight": 0}]},
     "no assistant message to learn from (none, or all with weight 0)"),
    ({"messages": [{"role": "user", "content": "q", "weight": 1},
                   {"role": "assistant", "content": "a"}]},
     "message 1 (user): weight is allowed on assistant messages only"),
    ({"messages": [{"role": "user", "content": "q"},
                   {"role": "assistant", "content": "a", "weight": 0.5}]},
     "message 2: weight must be 0 or 1, got 0.5"),
    ({"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]},
     "message 1: role 'robot' is not one of"),
    ({"messages": [{"role": "user", "content": "q", "lang": "en"},
                   {"role": "assistant", "content": "a"}]}, "unknown key(s) 'lang'"),
    ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]},
     "message 1 (user): content is empty"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
     "message 1 (user) has no content"),
    (chat("q", "a", id=7), "unknown key(s) 'id'"),
])
def test_rows_the_service_would_reject(row, problem):
    assert any(problem in e for e in hosted.check_row(row)), hosted.check_row(row)


def test_rows_the_service_accepts():
    tool_call = {"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny.", "weight": 1}],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {}}}]}
    assert hosted.check_row(tool_call) == []
    assert hosted.check_row(chat("q", "a")) == []


def test_example_tokens_follow_the_cookbook_rule():
    words = lambda text: len(text.split())  # noqa: E731
    row = {"messages": [{"role": "user", "content": "one two"},
                        {"role": "assistant", "content": "three", "name": "bot", "weight": 1}]}
    # 3 (reply) + per message 3 + role + content (+ name and 1 more)
    assert hosted.example_tokens(row, words) == 3 + (3 + 1 + 2) + (3 + 1 + 1 + 1 + 1)


def test_validate_pair_files_counts_and_limits(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [chat("q " * 5, "a " * 5) for _ in range(10)] + [chat("q " * 50, "a")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    words = lambda text: len(text.split())  # noqa: E731
    report = hosted.validate_pair_files({"control": path}, 40, words)
    assert report.problems == [f"{path}:11: 62 tokens, over the model's limit of 40 per example "
                               "(the service truncates it)"]
    assert report.warnings[:2] == [f"{path}:2: duplicate of line 1", f"{path}:3: duplicate of line 1"]
    f = report.files["control"]
    assert (f.rows, f.tokens[0], f.billed_tokens(40)) == (11, 21, 10 * 21 + 40)
    # without a tokenizer: estimated, and over-long examples are only warned about
    report = hosted.validate_pair_files({"control": path}, 30, None)
    assert report.ok and any("about" in w and "estimated" in w for w in report.warnings)


def test_job_requests_differ_only_in_file_suffix_and_metadata():
    common = dict(model="gpt-4o-mini-2024-07-18", seed=3, validation_file="file-e",
                  hyperparameters={"n_epochs": "auto", "batch_size": 8,
                                   "learning_rate_multiplier": "auto"})
    pid = "a-very-long-experiment-name-for-a-pair-0123456789"
    c = hosted.job_request(pair_id=pid, arm="control", training_file="file-c",
                           metadata={"data_sha256": "c"}, **common)
    e = hosted.job_request(pair_id=pid, arm="experiment", training_file="file-x",
                           metadata={"data_sha256": "x"}, **common)
    assert {k for k in c if c[k] != e[k]} == {"training_file", "suffix", "metadata"}
    assert len(c["suffix"]) <= 40 and len(e["suffix"]) <= 40 and c["suffix"] != e["suffix"]
    assert e["suffix"].endswith("-experiment")
    assert hosted.arm_of({"metadata": c["metadata"]}, pid) == "control"
    assert hosted.arm_of({"metadata": c["metadata"]}, "another-pair") is None
    # a service that keeps no metadata: by the suffix or the fine-tuned model's name
    assert hosted.arm_of({"suffix": e["suffix"]}, pid) == "experiment"
    assert hosted.arm_of({"fine_tuned_model": f"ft:m:org:{c['suffix']}:x1"}, pid) == "control"


def test_differing_hyperparameters():
    jobs = [{"hyperparameters": {"n_epochs": 3, "batch_size": 1}},
            {"hyperparameters": {"n_epochs": 4, "batch_size": 1}}]
    assert hosted.differing_hyperparameters(jobs) == {"n_epochs": [3, 4]}


def test_result_files_plain_or_base64():
    csv = ("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,full_valid_loss,"
           "full_valid_mean_token_accuracy\n1,2.0,0.5,2.1,0.4,,\n2,1.0,0.7,1.2,0.6,1.1,0.65\n")
    for content in (csv.encode(), base64.b64encode(csv.encode())):
        steps = hosted.parse_results(content)
        assert steps[0] == (1, {"train_loss": 2.0, "train_token_accuracy": 0.5,
                                "eval_batch_loss": 2.1, "eval_batch_token_accuracy": 0.4})
        assert steps[1][1]["eval_loss"] == 1.1
    final = hosted.final_metrics(hosted.parse_results(csv.encode()))
    assert final["final_eval_loss"] == 1.1 and final["final_global_step"] == 2
    assert final["final_perplexity"] == pytest.approx(3.004166)


def test_config_openai_section():
    base = {"name": "x", "base_model": "gpt-4o-mini-2024-07-18", "training": {"epochs": 1},
            "arms": {"control": {"train": "a"}, "experiment": {"train": "b"}}}
    cfg = parse_config({**base, "backend": "azure-openai",
                        "openai": {"n_epochs": 3, "learning_rate_multiplier": 0.5}})
    assert (cfg.backend, cfg.openai.n_epochs, cfg.openai.batch_size) == ("azure-openai", 3, "auto")
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "backend": "gcp",
                      "openai": {"n_epochs": 0, "batch_size": "big", "method": "dpo"}})
    text = str(err.value)
    assert "openai.n_epochs: must be auto or an integer from 1 to 50, got 0" in text
    assert "openai.batch_size: must be auto or an integer from 1 to 256, got 'big'" in text
    assert "backend: Input should be 'azureml', 'openai' or 'azure-openai'" in text
    assert "openai.method: Input should be 'supervised'" in text


def test_a_hosted_base_model_is_the_service_model_id(tmp_path):
    """Not a folder or hub id to anchor: a fine-tuned `ft:...` model continues training."""
    data = {"name": "x", "base_model": "ft:gpt-4o-mini-2024-07-18:org:custom:abc1",
            "backend": "openai", "training": {"epochs": 1},
            "arms": {"control": {"train": "a"}, "experiment": {"train": "b"}}}
    cfg = parse_config(data, "f.yaml", tmp_path)
    assert cfg.base_model == data["base_model"]
    assert hosted.example_token_limit(cfg.base_model) == 65_536

"""experiment.yml: a pull request labelled `experiment` (or a dispatch) validates, estimates (the
budget guard), submits and compares a pair on Azure ML, and posts the verdict as one comment.

Checked statically (triggers, permissions, pins, OIDC, order, the CLI it calls) and, for the
steps with logic of their own, by running their scripts with a fake `train` / `gh`."""

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest

from tests.workflows.helpers import (
    CI,
    DEPLOY,
    EXPERIMENT,
    ROOT,
    ZIZMOR_CONFIG,
    check_jsonschema,
    load_workflow,
    output,
    zizmor,
)

SHA_PIN = re.compile(r"^\s*(?:-\s+)?uses:\s+([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # v\d+(?:\.\d+)*\s*$")
MARKER = "<!-- paired-finetune-verdict -->"
TRAIN = ".venv/bin/train"


@pytest.fixture(scope="module")
def wf() -> dict:
    return load_workflow(EXPERIMENT)


@pytest.fixture(scope="module")
def job(wf) -> dict:
    return wf["jobs"]["experiment"]


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


def step_running(job: dict, text: str) -> dict:
    (step,) = [s for s in job["steps"] if text in s.get("run", "")]
    return step


def index_of(job: dict, step: dict) -> int:
    return next(i for i, s in enumerate(job["steps"]) if s is step)


# ----------------------------------------------------------------------------- the checkers
def test_check_jsonschema_accepts_it():
    result = check_jsonschema(EXPERIMENT)
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("persona", ["regular", "pedantic"])
def test_zizmor_finds_nothing(persona):
    config = ZIZMOR_CONFIG if ZIZMOR_CONFIG.exists() else None
    result = zizmor(EXPERIMENT, config=config, persona=persona)
    assert result.returncode == 0, output(result)
    assert "No findings" in result.stdout, output(result)


def test_zizmor_catches_an_input_pasted_into_a_script(tmp_path):
    """The check above is live on this file: the experiment input expanded into the shell."""
    text = EXPERIMENT.read_text(encoding="utf-8")
    old = 'run: .venv/bin/train data upload --config "$EXPERIMENT"'
    assert old in text
    bad = text.replace(old, 'run: .venv/bin/train data upload --config "${{ inputs.experiment }}"')
    path = tmp_path / ".github" / "workflows" / "experiment.yml"
    path.parent.mkdir(parents=True)
    path.write_text(bad, encoding="utf-8")
    result = zizmor(path, persona="regular")
    assert result.returncode != 0, output(result)
    assert "template-injection" in result.stdout, output(result)


# ----------------------------------------------------------------------------- triggers
def test_triggers(wf):
    on = wf["on"]
    assert set(on) == {"pull_request", "workflow_dispatch"}
    pr = on["pull_request"]
    assert "labeled" in pr["types"] and "synchronize" in pr["types"]
    for path in ("experiments/**", "examples/data/**", "data/**"):
        assert path in pr["paths"]
    inputs = on["workflow_dispatch"]["inputs"]
    assert inputs["experiment"]["default"] == "experiments/paired-comments.yaml"
    assert inputs["stack"]["default"] == "dev"
    assert wf["env"]["EXPERIMENT"] == "${{ inputs.experiment || 'experiments/paired-comments.yaml' }}"
    assert wf["env"]["STACK"] == "${{ inputs.stack || 'dev' }}"


def test_only_labelled_same_repository_pull_requests_or_a_dispatch(job):
    condition = " ".join(job["if"].split())
    assert "github.event_name == 'workflow_dispatch'" in condition
    assert "contains(github.event.pull_request.labels.*.name, 'experiment')" in condition
    # Forks get no secrets and no OIDC token; another label on a labelled PR starts nothing.
    assert "github.event.pull_request.head.repo.full_name == github.repository" in condition
    assert "github.event.label.name == 'experiment'" in condition


def test_two_runs_on_one_pull_request_never_race(wf):
    concurrency = wf["concurrency"]
    assert "github.event.pull_request.number" in concurrency["group"]
    # Cancelling would leave the Azure ML jobs running unwatched.
    assert concurrency["cancel-in-progress"] is False


# ----------------------------------------------------------------------------- permissions
def test_permissions_are_least(wf):
    assert wf["permissions"] == {}
    assert wf["jobs"]["experiment"]["permissions"] == {"contents": "read", "id-token": "write"}
    assert wf["jobs"]["comment"]["permissions"] == {"actions": "read", "pull-requests": "write"}
    for name, job in wf["jobs"].items():
        # id-token exactly where Azure is logged in to; pull-requests only where it comments.
        assert ("id-token" in job["permissions"]) == bool(steps_using(job, "azure/login")), name
        comments = any("/comments" in s.get("run", "") for s in job["steps"])
        assert ("pull-requests" in job["permissions"]) == comments, name


def test_every_action_is_pinned_to_a_commit_with_its_version():
    uses = [line for line in EXPERIMENT.read_text(encoding="utf-8").splitlines() if "uses:" in line]
    assert uses
    pinned_elsewhere = {}
    for path in (CI, DEPLOY):
        for line in path.read_text(encoding="utf-8").splitlines():
            if match := SHA_PIN.match(line):
                pinned_elsewhere[match.group(1)] = line.split("@", 1)[1].strip()
    for line in uses:
        match = SHA_PIN.match(line)
        assert match, f"not pinned to a full SHA with a version: {line}"
        # the same release as the other workflows: one pin per action in the repository
        assert line.split("@", 1)[1].strip() == pinned_elsewhere[match.group(1)], line


def test_no_expression_is_expanded_inside_a_script(wf):
    for job in wf["jobs"].values():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), step


def test_checkouts_do_not_persist_credentials(wf):
    for job in wf["jobs"].values():
        for step in steps_using(job, "actions/checkout"):
            assert step["with"]["persist-credentials"] is False


# ----------------------------------------------------------------------------- Azure and Pulumi
def test_no_client_secret_anywhere():
    text = EXPERIMENT.read_text(encoding="utf-8")
    assert not re.search(r"CLIENT_SECRET", text, re.IGNORECASE)
    assert not re.search(r"client-secret|creds:|AZURE_CREDENTIALS", text, re.IGNORECASE)


def test_azure_login_is_oidc_from_repository_variables(job):
    (login,) = steps_using(job, "azure/login")
    assert login["with"] == {
        "client-id": "${{ vars.AZURE_CLIENT_ID }}",
        "tenant-id": "${{ vars.AZURE_TENANT_ID }}",
        "subscription-id": "${{ vars.AZURE_SUBSCRIPTION_ID }}",
    }
    # Before anything that talks to Azure (the upload is the first).
    upload = step_running(job, f"{TRAIN} data upload")
    assert index_of(job, login) < index_of(job, upload)


def test_the_sdk_keeps_a_fresh_oidc_token(job):
    """The az CLI's login lapses after about an hour; the SDK reads a token file kept fresh."""
    step = step_running(job, "AZURE_FEDERATED_TOKEN_FILE")
    assert "audience=api://AzureADTokenExchange" in step["run"]
    assert "ACTIONS_ID_TOKEN_REQUEST_TOKEN" in step["run"]
    assert step["env"]["AZURE_CLIENT_ID"] == "${{ vars.AZURE_CLIENT_ID }}"
    assert index_of(job, step) < index_of(job, step_running(job, f"{TRAIN} data upload"))


def test_pulumi_token_only_on_the_step_that_reads_the_stack_outputs(wf, job):
    (read,) = [s for s in job["steps"] if "pulumi " in s.get("run", "")]
    assert read["run"].strip() == 'pulumi stack output --json --stack "$STACK" > stack-outputs.json'
    for j in wf["jobs"].values():
        for step in j["steps"]:
            token = step.get("env", {}).get("PULUMI_ACCESS_TOKEN")
            assert (token == "${{ secrets.PULUMI_ACCESS_TOKEN }}") == (step is read), step
        assert "PULUMI_ACCESS_TOKEN" not in j.get("env", {})
    assert "PULUMI_ACCESS_TOKEN" not in wf["env"]
    for j in wf["jobs"].values():
        for step in j["steps"]:
            assert "--show-secrets" not in step.get("run", ""), step


def test_the_pulumi_cli_matches_the_sdk_pin(job):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (pin,) = [d for d in pyproject["project"]["optional-dependencies"]["infra"]
              if d.startswith("pulumi==")]
    (install,) = steps_using(job, "pulumi/actions")
    assert install["with"] == {"pulumi-version": pin.removeprefix("pulumi==")}  # no command


def test_installs_as_ci_does(job):
    (make,) = [s for s in job["steps"] if s.get("run", "").startswith("make install")]
    assert shlex.split(make["run"]) == [
        "make", "install", "TORCH_INDEX=https://download.pytorch.org/whl/cpu"]
    (setup,) = steps_using(job, "actions/setup-python")
    assert setup["with"]["python-version"] == "3.11"
    assert setup["with"]["cache"] == "pip"


def test_inputs_are_checked_before_anything_uses_them(job):
    first = job["steps"][0]
    assert "$EXPERIMENT" in first["run"] and "$STACK" in first["run"]
    assert "exit 2" in first["run"]


# ----------------------------------------------------------------------------- the train commands
def train_calls(workflow: dict) -> list[list[str]]:
    """Each `.venv/bin/train ...` command line of every script, as its words up to the first
    shell operator (a redirection, a pipe, `||`)."""
    calls = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            script = step.get("run", "").replace("\\\n", " ")
            for line in script.splitlines():
                if TRAIN not in line:
                    continue
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                words = list(lexer)
                words = words[words.index(TRAIN) + 1:]
                end = next((i for i, w in enumerate(words) if set(w) <= set("<>|&;")), len(words))
                calls.append(words[:end])
    return calls


def resolve(words: list[str]) -> tuple[click.Command, list[str], str]:
    """The click command that the words name, the words left, and its name."""
    from training.cli import main

    command, names = main, []
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        sub = command.commands.get(words[0])
        assert sub is not None, f"`train {' '.join(names + words[:1])}`: no such command"
        command, names, words = sub, [*names, words[0]], words[1:]
    assert not isinstance(command, click.Group), f"`train {' '.join(names)}` is a group"
    return command, words, " ".join(names)


def check_options(command: click.Command, words: list[str], name: str) -> None:
    options = {opt: p for p in command.params if isinstance(p, click.Option)
               for opt in p.opts + p.secondary_opts}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            break
        if word.startswith("-"):
            option, _, value = word.partition("=")
            assert option in options, f"`train {name}` has no option {option}"
            param = options[option]
            if not param.is_flag and not value:
                i += 1
                value = words[i]
            if isinstance(param.type, click.Choice) and not value.startswith("$"):
                assert value in param.type.choices, f"`train {name} {option} {value}`"
        i += 1


def test_every_train_command_exists_with_its_options(wf):
    """Against the real click group: a renamed command or option fails here, not on a runner.
    (`train submit --format json` is the contract of submit's JSON output.)"""
    calls = train_calls(wf)
    assert {resolve(words)[2] for words in calls} >= {
        "data validate", "estimate", "data upload", "submit", "compare"}
    for words in calls:
        check_options(*resolve(words))


def test_the_option_checker_catches_a_missing_option():
    command, words, name = resolve(["compare", "P", "--format", "json", "--no-such-option"])
    with pytest.raises(AssertionError, match="no option --no-such-option"):
        check_options(command, words, name)
    command, words, name = resolve(["compare", "P", "--format", "yaml"])
    with pytest.raises(AssertionError, match="--format yaml"):
        check_options(command, words, name)


def test_validate_before_estimate_before_submit_before_compare(job):
    order = [index_of(job, step_running(job, f"{TRAIN} {cmd}"))
             for cmd in ("data validate", "estimate", "data upload", "submit", "compare")]
    assert order == sorted(order)
    names = [s.get("uses", "").split("@")[0] for s in job["steps"]]
    assert names.index("actions/upload-artifact") > order[-1]


def test_the_budget_is_never_waived(wf):
    for job in wf["jobs"].values():
        for step in job["steps"]:
            assert "--allow-over-budget" not in step.get("run", ""), step
    submit = [w for w in train_calls(wf) if w[0] == "submit"]
    assert submit and all("--wait" in w and w[w.index("--format"):][:2] == ["--format", "json"]
                          for w in submit)


def test_compare_writes_the_three_files(job):
    script = step_running(job, f"{TRAIN} compare")["run"]
    assert "--format json --plot compare.png > verdict.json" in script
    assert "--format markdown > verdict.md" in script


# ----------------------------------------------------------------------------- artifacts, comment
def test_the_verdict_is_uploaded_as_an_artifact(job):
    (upload,) = steps_using(job, "actions/upload-artifact")
    paths = upload["with"]["path"].split()
    assert {"verdict.json", "verdict.md", "compare.png"} <= set(paths)
    assert upload["with"]["name"] == "verdict-${{ github.run_id }}"
    assert upload["if"] == "${{ !cancelled() }}"  # a failing verdict is uploaded too


def test_one_job_comments_on_pull_requests_only_after_a_verdict(wf):
    comment = wf["jobs"]["comment"]
    assert comment["needs"] == "experiment"
    condition = " ".join(comment["if"].split())
    assert "github.event_name == 'pull_request'" in condition
    assert "!cancelled()" in condition and "needs.experiment.outputs.verdict != ''" in condition
    assert not steps_using(comment, "actions/checkout")  # no code of the pull request runs there
    (step,) = comment["steps"]
    assert MARKER in step["run"]
    assert step["env"]["GH_TOKEN"] == "${{ github.token }}"


# ----------------------------------------------------------------------------- the scripts, run
def executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def fake_train(tmp_path: Path, body: str) -> None:
    """`.venv/bin/train` in tmp_path: records its argv in train.log, then runs `body`."""
    executable(tmp_path / TRAIN,
               f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{tmp_path}/train.log"\n{body}\n')
    python = tmp_path / ".venv" / "bin" / "python"
    if not python.exists():
        python.symlink_to(sys.executable)


def run_step(tmp_path: Path, step: dict, env: dict | None = None) -> tuple:
    """The step's script as Actions runs `shell: bash` (-e, pipefail), in tmp_path."""
    for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_STEP_SUMMARY"):
        (tmp_path / name).touch()
    environ = {
        **os.environ,
        "EXPERIMENT": "experiments/exp.yaml",
        "STACK": "dev",
        **{name: str(tmp_path / name) for name in ("GITHUB_OUTPUT", "GITHUB_ENV",
                                                   "GITHUB_STEP_SUMMARY")},
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        **(env or {}),
    }
    result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                             step["run"]], cwd=tmp_path, env=environ, capture_output=True,
                            text=True, timeout=60)
    outputs = dict(line.split("=", 1) for line in
                   (tmp_path / "GITHUB_OUTPUT").read_text().splitlines() if "=" in line)
    return result, outputs


needs_jq = pytest.mark.skipif(shutil.which("jq") is None, reason="jq (on every GitHub runner)")


@needs_jq
@pytest.mark.parametrize("estimate, fails", [
    ({"cost_usd": 40.5, "worst_case_usd": 80, "budget_usd": 200, "over_budget": []}, False),
    ({"cost_usd": 400, "worst_case_usd": 800, "budget_usd": 200,
      "over_budget": ["the estimate 400.00 USD exceeds budget_usd 200.00"]}, True),
    ({"cost_usd": 40.5}, True),  # no over_budget at all: fails closed
    (None, True),  # nothing printed: fails closed
])
def test_the_estimate_step_fails_over_budget(tmp_path, job, estimate, fails):
    fake_train(tmp_path, "" if estimate is None else f"echo '{json.dumps(estimate)}'")
    result, _ = run_step(tmp_path, step_running(job, f"{TRAIN} estimate"))
    assert (result.returncode != 0) == fails, output(result)
    if estimate and estimate.get("over_budget"):
        assert "::error::over budget: the estimate 400.00 USD" in result.stdout


@needs_jq
def test_the_estimate_step_fails_when_estimate_does(tmp_path, job):
    fake_train(tmp_path, "echo 'error: bad config' >&2; exit 2")
    result, _ = run_step(tmp_path, step_running(job, f"{TRAIN} estimate"))
    assert result.returncode == 2, output(result)


SUBMITTED = {"pair_id": "paired-comments-1a2b3c", "state": "Completed",
             "jobs": [{"name": "paired-comments-1a2b3c-control", "arm": "control",
                       "status": "Completed"}]}


@needs_jq
@pytest.mark.parametrize("printed, code, pair_id, rc", [
    (SUBMITTED, 0, "paired-comments-1a2b3c", 0),
    # a job failed: the step fails, and the pair id still comes out for the verdict
    ({**SUBMITTED, "state": "Failed"}, 1, "paired-comments-1a2b3c", 1),
    (None, 2, None, 2),  # bad input: no JSON, no pair
    (None, 0, None, 1),  # success without a pair id is a failure
    # a pair id that would write a second output line is refused
    ({**SUBMITTED, "pair_id": "x\nverdict=0"}, 0, None, 1),
])
def test_the_submit_step_takes_the_pair_id(tmp_path, job, printed, code, pair_id, rc):
    text = "" if printed is None else json.dumps(printed)
    fake_train(tmp_path, f"echo {shlex.quote(text)}\nexit {code}")
    result, outputs = run_step(tmp_path, step_running(job, f"{TRAIN} submit"))
    assert result.returncode == rc, output(result)
    assert outputs.get("pair_id") == pair_id
    assert "verdict" not in outputs
    assert "submit --config experiments/exp.yaml --outputs-file stack-outputs.json --wait " \
           "--format json" in (tmp_path / "train.log").read_text()


COMPARE = """
case "$*" in
  *"--format json"*) echo '{"verdict": {"exit_code": %(code)s}}'; exit %(code)s ;;
  *"--format markdown"*) echo '## Verdict: %(word)s'; exit %(code)s ;;
esac
"""


@needs_jq
@pytest.mark.parametrize("code", [0, 1])
def test_the_compare_step_keeps_a_failing_verdict(tmp_path, job, code):
    fake_train(tmp_path, COMPARE % {"code": code, "word": "pass" if code == 0 else "fail"})
    step = step_running(job, f"{TRAIN} compare")
    result, outputs = run_step(tmp_path, step, {"PAIR_ID": "p-1"})
    assert result.returncode == 0, output(result)
    assert outputs == {"verdict": str(code)}
    assert (tmp_path / "verdict.md").read_text().startswith("## Verdict")
    assert "## Verdict" in (tmp_path / "GITHUB_STEP_SUMMARY").read_text()
    # the last step fails the run on that verdict
    last = job["steps"][-1]
    assert "steps.compare.outputs.verdict" in last["env"]["VERDICT"]
    result, _ = run_step(tmp_path, last, {"VERDICT": str(code)})
    assert (result.returncode == 0) == (code == 0)


@needs_jq
def test_the_compare_step_without_a_verdict_fails(tmp_path, job):
    fake_train(tmp_path, "echo 'error: no pair p-1' >&2; exit 2")
    result, outputs = run_step(tmp_path, step_running(job, f"{TRAIN} compare"), {"PAIR_ID": "p-1"})
    assert result.returncode == 2, output(result)
    assert "verdict" not in outputs


def test_the_validate_step_passes_the_config_and_its_data_files(tmp_path, job):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "exp.yaml").write_text(
        "arms:\n  control:\n    train: ../data/control/train.jsonl\n"
        "  experiment:\n    train: /abs/experiment.jsonl\neval: ../data/eval.jsonl\n")
    fake_train(tmp_path, "")
    result, _ = run_step(tmp_path, step_running(job, f"{TRAIN} data validate"))
    assert result.returncode == 0, output(result)
    assert (tmp_path / "train.log").read_text().splitlines() == [
        "data validate --config experiments/exp.yaml -- experiments/../data/control/train.jsonl "
        "/abs/experiment.jsonl experiments/../data/eval.jsonl"]


GH = """#!/usr/bin/env bash
printf '%%s\\n' "$*" >> "%(log)s"
case "$1 $2" in
  "run download")
    dir="${@: -1}"; mkdir -p "$dir"; echo '## Verdict: pass' > "$dir/verdict.md" ;;
  "api --paginate")
    filter="${@: -1}"; jq -r "$filter" "%(comments)s" ;;
  "api --method") ;;
esac
"""


@needs_jq
@pytest.mark.parametrize("comments, expected", [
    ([], "POST repos/o/r/issues/7/comments"),
    ([{"id": 11, "user": {"login": "someone"}, "body": MARKER + " quoted"},
      {"id": 12, "user": {"login": "github-actions[bot]"}, "body": "another bot comment"},
      {"id": 13, "user": {"login": "github-actions[bot]"}, "body": MARKER + "\nold verdict"}],
     "PATCH repos/o/r/issues/comments/13"),
    ([{"id": 11, "user": {"login": "someone"}, "body": MARKER + "\nnot ours"}],
     "POST repos/o/r/issues/7/comments"),
])
def test_the_comment_is_updated_not_duplicated(tmp_path, wf, comments, expected):
    (tmp_path / "comments.json").write_text(json.dumps(comments))
    executable(tmp_path / "bin" / "gh", GH % {"log": tmp_path / "gh.log",
                                              "comments": tmp_path / "comments.json"})
    (step,) = wf["jobs"]["comment"]["steps"]
    env = {"GH_REPO": "o/r", "PR_NUMBER": "7", "RUN_ID": "99",
           "RUN_URL": "https://github.com/o/r/actions/runs/99"}
    result, _ = run_step(tmp_path, step, env)
    assert result.returncode == 0, output(result)
    calls = (tmp_path / "gh.log").read_text().splitlines()
    assert calls[0] == "run download 99 --name verdict-99 --dir verdict"
    (write,) = [c for c in calls if c.startswith("api --method")]
    assert write == f"api --method {expected} -F body=@comment.md"
    body = (tmp_path / "comment.md").read_text()
    assert body.startswith(MARKER + "\n## Verdict: pass")
    assert "verdict-99" in body

"""The workflows pass both offline checkers, and each checker demonstrably catches what it is for.

check-jsonschema (the vendored GitHub workflow schema) checks structure; zizmor (offline, default
persona) checks security: template injection, persisted credentials, permissions, unpinned actions.
A checker that never fails proves nothing, so each one is also run on deliberately broken copies
of a small workflow that it otherwise accepts.
"""

from pathlib import Path

import pytest

from tests.workflows.helpers import (
    CI,
    DEPLOY,
    ZIZMOR_CONFIG,
    check_jsonschema,
    output,
    zizmor,
)

CHECKOUT = "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1"

# Clean under both checkers, at zizmor's strictest everyday persona (pedantic) too; each case
# below changes one thing.
GOOD = f"""\
name: sample
on:
  pull_request:
permissions: {{}}
concurrency:
  group: sample-${{{{ github.ref }}}}
  cancel-in-progress: true
jobs:
  check:
    name: check
    runs-on: ubuntu-24.04
    permissions:
      contents: read
    steps:
      - uses: {CHECKOUT}
        with:
          persist-credentials: false
      - name: Greet
        env:
          TITLE: ${{{{ github.event.pull_request.title }}}}
        run: echo "checking $TITLE"
"""

# audit id -> (zizmor persona, the faulty workflow)
ZIZMOR_CASES = {
    # An action by a movable tag instead of a commit SHA.
    "unpinned-uses": ("regular", GOOD.replace(CHECKOUT, "actions/checkout@v4")),
    # Attacker-controlled text expanded straight into the shell script.
    "template-injection": (
        "regular",
        GOOD.replace(
            'run: echo "checking $TITLE"',
            'run: echo "checking ${{ github.event.pull_request.title }}"',
        ),
    ),
    # The checkout leaves the token in .git/config for every later step.
    "artipacked": (
        "regular",
        GOOD.replace("        with:\n          persist-credentials: false\n", ""),
    ),
    # Every scope, read and write, for a job that only reads. zizmor's default persona keeps
    # this finding to itself; the pedantic one reports it (and the workflows are clean there too).
    "excessive-permissions": (
        "pedantic",
        GOOD.replace("permissions: {}\n", "permissions: write-all\n").replace(
            "    permissions:\n      contents: read\n", ""
        ),
    ),
}

SCHEMA_CASES = {
    "job without runs-on": GOOD.replace("    runs-on: ubuntu-24.04\n", ""),
    "steps is a string": GOOD[: GOOD.index("    steps:")] + "    steps: make test\n",
    "unknown step key": GOOD.replace(
        "      - name: Greet\n", "      - name: Greet\n        runs: x\n"
    ),
    "no trigger": GOOD.replace("on:\n  pull_request:\n", ""),
}


def write_workflow(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sample.yml"
    path.write_text(text, encoding="utf-8")
    return path


def test_check_jsonschema_accepts_both_workflows():
    result = check_jsonschema(CI, DEPLOY)
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("persona", ["regular", "pedantic"])
def test_zizmor_finds_nothing_in_both_workflows(persona):
    config = ZIZMOR_CONFIG if ZIZMOR_CONFIG.exists() else None
    result = zizmor(CI, DEPLOY, config=config, persona=persona)
    assert result.returncode == 0, output(result)
    assert "No findings" in result.stdout, output(result)


def test_the_sample_workflow_is_clean(tmp_path):
    """The control: without the deliberate faults, both checkers accept the sample."""
    path = write_workflow(tmp_path, GOOD)
    for result in (check_jsonschema(path), zizmor(path, persona="pedantic")):
        assert result.returncode == 0, output(result)


@pytest.mark.parametrize("audit", sorted(ZIZMOR_CASES))
def test_zizmor_catches(tmp_path, audit):
    persona, text = ZIZMOR_CASES[audit]
    result = zizmor(write_workflow(tmp_path, text), persona=persona)
    assert result.returncode != 0, output(result)
    assert audit in result.stdout, output(result)


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_check_jsonschema_catches(tmp_path, case):
    result = check_jsonschema(write_workflow(tmp_path, SCHEMA_CASES[case]))
    assert result.returncode == 1, output(result)
    assert "Schema validation errors" in result.stdout + result.stderr, output(result)


# Faults planted in the real workflows, checked the way the project checks them (its zizmor.yml
# included): a config that silenced an audit, or a workflow shaped so that a checker skips it,
# would pass the synthetic cases above and fail here.
REAL_FAULTS = {
    "unpinned-uses": (
        "actions/setup-python@5fda3b95a4ea91299a34e894583c3862153e4b97 # v7.0.0",
        "actions/setup-python@v5",
    ),
    "artipacked": ("        with:\n          persist-credentials: false\n", ""),
    "template-injection": (
        "        run: make test\n",
        '        run: echo "${{ github.event.pull_request.title }}" && make test\n',
    ),
}


@pytest.mark.parametrize("audit", sorted(REAL_FAULTS))
def test_zizmor_catches_a_fault_planted_in_the_real_ci_workflow(tmp_path, audit):
    old, new = REAL_FAULTS[audit]
    text = CI.read_text(encoding="utf-8")
    assert old in text, f"the ci workflow changed: update the planted fault for {audit}"
    path = write_workflow(tmp_path, text.replace(old, new, 1))
    config = ZIZMOR_CONFIG if ZIZMOR_CONFIG.exists() else None
    result = zizmor(path, config=config, persona="regular")
    assert result.returncode != 0, output(result)
    assert audit in result.stdout, output(result)


def test_check_jsonschema_catches_a_fault_planted_in_the_real_deploy_workflow(tmp_path):
    """A misspelt job key (the job would run with no timeout) in the real deploy workflow."""
    text = DEPLOY.read_text(encoding="utf-8")
    assert "    timeout-minutes:" in text
    path = write_workflow(tmp_path, text.replace("    timeout-minutes:", "    timeout-minute:", 1))
    result = check_jsonschema(path)
    assert result.returncode == 1, output(result)
    assert "Schema validation errors" in result.stdout + result.stderr, output(result)

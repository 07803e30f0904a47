"""ci.yml installs and tests exactly as the README says: through the Makefile, with `make test`."""

import re
import shlex

import pytest

from tests.workflows.helpers import CI, DEPLOY, ROOT, load_workflow

SHA_PIN = re.compile(r"^\s*(?:-\s+)?uses:\s+([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # v\d+(?:\.\d+)*\s*$")


@pytest.fixture(scope="module")
def ci() -> dict:
    return load_workflow(CI)


def readme_commands() -> list[str]:
    """The commands of the README's first ```bash block, comments dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert block, "README.md has no ```bash block"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [c for c in commands if c]


def run_lines(workflow: dict) -> list[str]:
    """Every line of every run: script of every job, stripped."""
    lines = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            lines += [line.strip() for line in step.get("run", "").splitlines() if line.strip()]
    return lines


def makefile() -> str:
    return (ROOT / "Makefile").read_text(encoding="utf-8")


def makefile_targets() -> dict[str, str]:
    """target -> its prerequisites, for the plain rules of the Makefile."""
    rules = re.findall(r"^([A-Za-z][\w.-]*):(?!=)[ \t]*(.*)$", makefile(), re.MULTILINE)
    return {name: prereqs.strip() for name, prereqs in rules}


def test_readme_names_the_two_commands():
    assert readme_commands() == ["make run", "make test"]


def test_ci_runs_the_readme_test_command(ci):
    (test_command,) = [c for c in readme_commands() if "test" in shlex.split(c)]
    assert test_command in run_lines(ci)


def test_ci_installs_through_the_makefile(ci):
    """The install is the Makefile's own (the stamp rule that `make test` depends on)."""
    targets = makefile_targets()
    make_calls = [shlex.split(line) for line in run_lines(ci) if line.startswith("make")]
    assert ["make", "install"] in [call[:2] for call in make_calls]
    for call in make_calls:
        assert call[1] in targets, f"ci.yml runs `{' '.join(call)}`, not a Makefile target"
    # `make install` and `make test` go through the same rule: test -> lint -> $(STAMP).
    assert targets["install"] == "$(STAMP)"
    assert targets["lint"] == "$(STAMP)"
    assert targets["test"] == "lint"


def test_ci_runs_ruff_through_the_makefile(ci):
    assert "make lint" in run_lines(ci)
    assert re.search(r"^lint:.*\n\t.*ruff check", makefile(), re.MULTILINE)


def test_torch_comes_from_the_cpu_index_through_the_makefile(ci):
    """On a GitHub runner PyPI's torch pulls CUDA: the Makefile's own pin, from the CPU index."""
    (torch_install,) = [line for line in makefile().splitlines()
                        if "torch==" in line and line.startswith("\t")]
    assert "$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))" in torch_install
    assert "pip install" in torch_install and torch_install.strip().startswith("$(BIN)/python")
    installs = [line for line in run_lines(ci) if "pip install" in line]
    assert installs == [], "every install goes through the Makefile"
    make_install = [shlex.split(line) for line in run_lines(ci) if line.startswith("make install")]
    assert make_install == [["make", "install", "TORCH_INDEX=https://download.pytorch.org/whl/cpu"]]


def test_ci_runs_on_every_push_and_pull_request(ci):
    assert set(ci["on"]) == {"push", "pull_request"}
    # No branch or path filters: every push and every pull request.
    assert ci["on"]["push"] is None
    assert ci["on"]["pull_request"] is None


def test_ci_sets_up_python_with_a_pip_cache(ci):
    (job,) = ci["jobs"].values()
    (setup,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert setup["with"]["cache"] == "pip"
    assert "pyproject.toml" in setup["with"]["cache-dependency-path"]
    # The README: Python 3.11 or newer; pyproject's requires-python agrees.
    assert setup["with"]["python-version"] == "3.11"


def test_ci_has_least_permissions(ci):
    assert ci["permissions"] == {}
    for job in ci["jobs"].values():
        assert job["permissions"] == {"contents": "read"}


def test_no_step_is_allowed_to_fail(ci):
    for job in ci["jobs"].values():
        assert not job.get("continue-on-error")
        for step in job["steps"]:
            assert not step.get("continue-on-error"), step


@pytest.mark.parametrize("path", [CI, DEPLOY], ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_version(path):
    uses = [line for line in path.read_text(encoding="utf-8").splitlines() if "uses:" in line]
    assert uses
    for line in uses:
        assert SHA_PIN.match(line), f"{path.name}: not pinned to a full SHA with a version: {line}"


@pytest.mark.parametrize("path", [CI, DEPLOY], ids=lambda p: p.name)
def test_checkouts_do_not_persist_credentials(path):
    workflow = load_workflow(path)
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


@pytest.mark.parametrize("path", [CI, DEPLOY], ids=lambda p: p.name)
def test_no_expression_is_expanded_inside_a_script(path):
    """Values reach run: scripts through env:, never as ${{ }} pasted into the shell text."""
    workflow = load_workflow(path)
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), step

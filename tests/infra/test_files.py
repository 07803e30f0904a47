"""The files around the program: Pulumi.yaml, the job environment, the deploy page (docs/deploy.md)."""

import re
import tomllib
from pathlib import Path

import yaml

from infra import program
from infra.config_load import config_keys, full_key

REPO = Path(__file__).resolve().parents[2]


def test_project_file_runs_the_program_in_the_repo_virtualenv():
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert project["name"] == "paired-finetune"
    assert project["main"] == "infra/"
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"]["virtualenv"] == ".venv"
    assert (REPO / project["main"] / "__main__.py").is_file()


def _requirement(line: str) -> tuple[str, str]:
    name, _, version = line.partition("==")
    return re.sub(r"[-_.]+", "-", name).lower().strip(), version.strip()


def test_environment_pins_match_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = (
        pyproject["dependencies"]
        + pyproject["optional-dependencies"]["train"]
        + pyproject["optional-dependencies"]["azure"]
    )
    conda = yaml.safe_load((REPO / "environment" / "conda.yml").read_text())
    (pip,) = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    packages = [line for line in pip if not line.startswith("-")]
    assert all("==" in line for line in packages), "every package is pinned exactly"
    assert dict(map(_requirement, packages)) == dict(map(_requirement, wanted))
    assert "python=3.11" in conda["dependencies"]
    # The CUDA build of torch, from PyTorch's CUDA 12.x index.
    assert any(
        re.fullmatch(r"--extra-index-url https://download\.pytorch\.org/whl/cu12\d", o) for o in pip
    )


def _deploy_page() -> str:
    """The estate's page: what the README's section on deploying became."""
    return (REPO / "docs" / "deploy.md").read_text()


def test_deploy_page_documents_every_config_key_and_output():
    section = _deploy_page()
    rows = re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)
    documented = [key for key in rows if ":" in key]
    assert documented == [full_key(alias, "paired-finetune") for alias in config_keys()]
    for output in program.OUTPUT_KEYS:
        assert f"`{output}`" in section
    for command in (
        "pulumi login",
        "pulumi stack init dev",
        "az login",
        "pulumi up",
        "pulumi destroy",
        "--policy-pack infra/policy",
    ):
        assert command in section

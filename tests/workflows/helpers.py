"""Shared helpers for the workflow tests: paths, YAML loading, the two offline checkers."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
DEPLOY = WORKFLOWS / "deploy.yml"
EXPERIMENT = WORKFLOWS / "experiment.yml"
ZIZMOR_CONFIG = ROOT / "zizmor.yml"


def load_workflow(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the bare key `on` as the boolean True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def tool(name: str) -> Path:
    """An executable installed next to this interpreter (the project's .venv)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}: install the dev extra")
    return path


def run_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(tool(name)), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def zizmor(
    *paths: Path, config: Path | None = None, persona: str = "regular"
) -> subprocess.CompletedProcess:
    """zizmor offline, at the given persona (regular is its default), with `config` if given."""
    args: list[str | Path] = ["--offline", "--no-progress", "--color", "never"]
    args += ["--persona", persona]
    if config is not None:
        args += ["--config", config]
    else:
        args.append("--no-config")
    return run_tool("zizmor", *args, *paths)


def check_jsonschema(*paths: Path) -> subprocess.CompletedProcess:
    return run_tool(
        "check-jsonschema",
        "--builtin-schema",
        "vendor.github-workflows",
        "--color",
        "never",
        *paths,
    )


def output(result: subprocess.CompletedProcess) -> str:
    return f"exit code {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"

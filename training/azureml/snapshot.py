"""The code snapshot of a pair's jobs: the `training` package and the resolved experiment file,
nothing else. The same content gives the same snapshot hash, so submitting again uploads nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from training.azureml.jobs import CONFIG_FILE

# What the code snapshot never carries, whatever is next to the package.
AMLIGNORE = """\
# The code snapshot of a pair's jobs: the training package and the resolved experiment file.
__pycache__/
*.pyc
.venv/
runs/
mlruns/
mlflow.db
tests/
.git/
.paired-finetune-snapshot
"""


SNAPSHOT_MARKER = ".paired-finetune-snapshot"  # a folder this tool wrote (and may rewrite)


def stage_code(dest: Path, config_yaml: str) -> Path:
    """The code snapshot: the `training` package and the resolved experiment file, nothing else.

    The same content gives the same snapshot hash, so submitting again uploads nothing."""
    import training

    package = Path(training.__file__).resolve().parent
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "training"
    if target.is_dir() and not target.is_symlink() and (dest / SNAPSHOT_MARKER).exists():
        shutil.rmtree(target)  # only a snapshot this tool wrote before
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
    (dest / ".amlignore").write_text(AMLIGNORE)
    (dest / SNAPSHOT_MARKER).write_text("written by `train submit --dry-run`\n")
    return dest


def snapshot_files(code_dir: Path) -> list[str]:
    """What the SDK would upload from `code_dir`, after its ignore file (relative paths)."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    files = get_upload_files_from_folder(code_dir, ignore_file=get_ignore_file(code_dir))
    return sorted(rel for _, rel in files)

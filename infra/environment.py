"""The training environment: a GPU base image plus the repo's `environment/conda.yml`."""

import hashlib
from pathlib import Path

import pulumi
from pulumi_azure_native import machinelearningservices as ml

from infra.config import StackConfig
from infra.workspace import Estate

CONDA_FILE = Path(__file__).resolve().parent.parent / "environment" / "conda.yml"


def environment_version(image: str, conda: str) -> str:
    """A version derived from what the environment is built from: same inputs, same version."""
    return hashlib.sha256(f"{image}\n{conda}".encode()).hexdigest()[:12]


def declare_environment(cfg: StackConfig, estate: Estate) -> str:
    """Register the environment; return its `name:version` for the stack output."""
    conda = CONDA_FILE.read_text()
    version = cfg.environment_version or environment_version(cfg.environment_image, conda)
    ml.EnvironmentVersion(
        "training-environment",
        name=cfg.environment_name,
        version=version,
        workspace_name=estate.workspace.name,
        resource_group_name=estate.resource_group.name,
        properties=ml.EnvironmentVersionPropertiesArgs(
            image=cfg.environment_image,
            conda_file=conda,
            os_type=ml.OperatingSystemType.LINUX,
            description="Training environment of the paired fine-tuning jobs (torch, transformers, "
            "peft, mlflow), pinned like pyproject.toml's train and azure extras.",
            tags=cfg.resource_tags,
        ),
        # An environment version is immutable and past jobs refer to it: a new version is
        # registered next to it rather than replacing it.
        opts=pulumi.ResourceOptions(retain_on_delete=True),
    )
    return f"{cfg.environment_name}:{version}"

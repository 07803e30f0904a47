"""The typed, validated stack configuration: `StackConfig` and `ConfigError`.

Every key of the stack config (`pulumi config set KEY VALUE`) is a field of `StackConfig`, named by
its camelCase alias; its validators hold Azure's naming rules and the cross-field checks.
`infra.config_load` reads the keys from the Pulumi runtime and validates them with this model.
"""

import datetime as dt
import posixpath
import re
from typing import Any, Literal

import pulumi
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

# 1x A100 80 GB. The guide's Standard_NC6s_v3 (V100) was retired on 2025-09-30.
DEFAULT_GPU_VM_SIZE = "Standard_NC24ads_A100_v4"
DEFAULT_CPU_VM_SIZE = "Standard_D4s_v3"
# Azure ML's GPU base image (OpenMPI, CUDA 12.6, Ubuntu 24.04, conda), pinned to a dated tag so an
# environment version always means the same image.
DEFAULT_ENVIRONMENT_IMAGE = "mcr.microsoft.com/azureml/openmpi5.0-cuda12.6-ubuntu24.04:20250407.v1"

# The key that holds the location lives in the provider's namespace, not the project's.
LOCATION_KEY = "azure-native:location"
# Fields that come from the Pulumi runtime, not from stack config keys.
RUNTIME_FIELDS = ("project", "stack")

# Azure's naming rules, matched against the whole value.
_LOCATION = re.compile(r"[a-z][a-z0-9]+")
_RESOURCE_GROUP = re.compile(r"[-\w.()]{0,89}[-\w()]")
_WORKSPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{2,32}")
_SUFFIX = re.compile(r"[a-z0-9]{3,8}")
_CONTAINER = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]")
_CLUSTER_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9-]{0,14}[a-zA-Z0-9]")
_VM_SIZE = re.compile(r"Standard_[A-Za-z0-9_]+")
_GPU_VM_SIZE = re.compile(r"Standard_N[A-Za-z0-9_]+")  # NC, ND, NV, NG: the GPU families
_RETIRED_GPU_VM_SIZE = re.compile(r"Standard_(NC\d+r?(s_v2|s_v3)?|ND\d+r?s)")
MAX_EXTRA_TAGS = 47
_DATASTORE = re.compile(r"[a-z0-9_]{1,255}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,49}")
_ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_IMAGE = re.compile(r"[a-z0-9.-]+(:[0-9]+)?/[^\s:@]+[:@]\S+")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
# RFC 2606 / 6761: names that never receive mail
_RESERVED_MAIL_DOMAIN = re.compile(
    r"@(.+\.)?(example\.(com|net|org)|[^@]*\.(example|test|invalid|localhost))$", re.IGNORECASE)
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

Priority = Literal["Dedicated", "LowPriority"]
PrincipalType = Literal["User", "Group", "ServicePrincipal"]


class ConfigError(pulumi.RunError):
    """A bad stack configuration: one message naming every offending key, no stack trace."""


def _check(pattern: re.Pattern[str], value: str, rule: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{value!r} is not valid: {rule}")
    return value


class StackConfig(BaseModel):
    """The stack configuration. Field aliases are the config keys (`paired-finetune:<alias>`)."""

    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True)

    # From the Pulumi runtime (not config keys).
    project: str
    stack: str

    location: str = Field(description="Azure region for every resource, e.g. `eastus` (required).")
    resource_group_name: str = Field(
        "", description="Resource group to create. Default `rg-<project>-<stack>`."
    )
    workspace_name: str = Field(
        "", description="Azure ML workspace name (3-33 chars). Default `mlw-<project>-<stack>`."
    )
    name_suffix: str | None = Field(
        None,
        description="Suffix (3-8 lowercase letters/digits) of the globally unique names (storage, "
        "key vault, registry). Default: a hash of subscription/project/stack.",
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="Extra tags for every resource, merged over `project`, `stack`, `managed-by`.",
    )
    workspace_public_network_access: Literal["Enabled", "Disabled"] = Field(
        "Enabled", description="Public network access to the workspace: `Enabled` or `Disabled`."
    )
    storage_sku: Literal[
        "Standard_LRS", "Standard_ZRS", "Standard_GRS", "Standard_RAGRS", "Standard_GZRS"
    ] = Field("Standard_LRS", description="Storage account redundancy SKU.")
    dataset_container: str = Field(
        "training-data", description="Blob container that holds the datasets."
    )
    key_vault_retention_days: int = Field(
        7, ge=7, le=90, description="Key vault soft-delete retention, 7-90 days."
    )
    log_retention_days: int = Field(
        30, ge=30, le=730, description="Log Analytics retention, 30-730 days."
    )
    container_registry: bool = Field(
        True,
        description="Declare a container registry (admin user disabled) for the workspace. Without "
        "one, Azure ML creates its own on the first image build, with the admin user enabled.",
    )
    container_registry_sku: Literal["Basic", "Standard", "Premium"] = Field(
        "Basic", description="Container registry SKU."
    )
    gpu_cluster_name: str = Field("gpu-cluster", description="GPU cluster name (2-16 chars).")
    gpu_vm_size: str = Field(DEFAULT_GPU_VM_SIZE, description="GPU cluster VM size.")
    gpu_min_nodes: int = Field(0, ge=0, description="GPU cluster minimum nodes (0 scales to zero).")
    gpu_max_nodes: int = Field(2, ge=1, le=100, description="GPU cluster maximum nodes.")
    gpu_priority: Priority = Field("Dedicated", description="`Dedicated` or `LowPriority` (spot).")
    cpu_cluster_name: str = Field("cpu-cluster", description="CPU cluster name (2-16 chars).")
    cpu_vm_size: str = Field(DEFAULT_CPU_VM_SIZE, description="CPU cluster VM size.")
    cpu_min_nodes: int = Field(0, ge=0, description="CPU cluster minimum nodes (0 scales to zero).")
    cpu_max_nodes: int = Field(4, ge=1, le=100, description="CPU cluster maximum nodes.")
    cpu_priority: Priority = Field("Dedicated", description="`Dedicated` or `LowPriority` (spot).")
    idle_seconds_before_scale_down: int = Field(
        900, ge=60, le=86400, description="Idle seconds before a cluster node is released."
    )
    datastore_name: str = Field(
        "training_data", description="Azure ML datastore on the dataset container."
    )
    data_asset_version: str = Field("1", description="Version of the registered data assets.")
    # The default paths carry the version, so registering new data never overwrites the bytes an
    # older version (and every run that used it) names.
    control_data_path: str = Field(
        "",
        description="Blob path of `control-train` in the container. "
        "Default `datasets/control/v<dataAssetVersion>/train.jsonl`.",
    )
    experiment_data_path: str = Field(
        "",
        description="Blob path of `experiment-train` in the container. "
        "Default `datasets/experiment/v<dataAssetVersion>/train.jsonl`.",
    )
    eval_asset: bool | None = Field(
        None,
        description="Declare the shared `eval` data asset. Default: only when `evalDataPath` is set.",
    )
    eval_data_path: str | None = Field(
        None,
        description="Blob path of the shared `eval` asset. Default (with `evalAsset: true`) "
        "`datasets/eval/v<dataAssetVersion>/eval.jsonl`; unset and no `evalAsset`: no eval asset.",
    )
    environment_name: str = Field(
        "paired-finetune-train", description="Azure ML environment for the training jobs."
    )
    environment_image: str = Field(
        DEFAULT_ENVIRONMENT_IMAGE, description="GPU base image of the training environment."
    )
    environment_version: str | None = Field(
        None,
        description="Environment version. Default: a hash of the image and `environment/conda.yml`, "
        "so a changed file registers a new version.",
    )
    budget_amount: float = Field(
        200.0, gt=0, le=10_000_000, allow_inf_nan=False,
        description="Monthly budget (USD) on the group, a finite amount above 0.",
    )
    budget_thresholds: list[float] = Field(
        default_factory=lambda: [50.0, 80.0, 100.0],
        min_length=1,
        max_length=5,
        description="Alert thresholds, percent of the budget (1-5 values, each 0-1000).",
    )
    budget_contact_emails: list[str] = Field(
        min_length=1, description="E-mail addresses for budget alerts (required)."
    )
    budget_start_date: dt.date | None = Field(
        None,
        description="First day of the budget (`YYYY-MM-01`). Default: the first of the current "
        "month when the budget is created.",
    )
    data_contributors: dict[str, PrincipalType] = Field(
        default_factory=dict,
        description="Who may upload and read the datasets (the storage account takes no keys): "
        "Entra object id -> `User`, `Group` or `ServicePrincipal`.",
    )

    # Defaults derived from project and stack; they go through the same checks as set values.
    @model_validator(mode="before")
    @classmethod
    def _derive_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "project" in data and "stack" in data:
            data = dict(data)
            project, stack = data["project"], data["stack"]
            data["resourceGroupName"] = data.get("resourceGroupName") or f"rg-{project}-{stack}"
            data["workspaceName"] = data.get("workspaceName") or f"mlw-{project}-{stack}"
            version = str(data.get("dataAssetVersion") or "1")
            version = version if _VERSION.fullmatch(version) else "1"  # reported on its own key
            for key, arm, file in (
                ("controlDataPath", "control", "train"),
                ("experimentDataPath", "experiment", "train"),
            ):
                data[key] = data.get(key) or f"datasets/{arm}/v{version}/{file}.jsonl"
        return data

    @field_validator("location")
    @classmethod
    def _location(cls, v: str) -> str:
        return _check(_LOCATION, v, "use the short region name, e.g. eastus")

    @field_validator("resource_group_name")
    @classmethod
    def _resource_group(cls, v: str) -> str:
        return _check(_RESOURCE_GROUP, v, "1-90 letters, digits, - _ . ( ), not ending in .")

    @field_validator("workspace_name")
    @classmethod
    def _workspace(cls, v: str) -> str:
        return _check(
            _WORKSPACE, v, "3-33 letters, digits, - and _, starting with a letter or digit"
        )

    @field_validator("name_suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        return v if v is None else _check(_SUFFIX, v, "3-8 lowercase letters or digits")

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_EXTRA_TAGS:
            raise ValueError(
                f"{len(v)} tags: at most {MAX_EXTRA_TAGS} (Azure allows 50 per resource and the "
                "program adds project, stack and managed-by)"
            )
        for key, value in v.items():
            if not key or len(key) > 512 or re.search(r"[<>%&\\?/]", key):
                raise ValueError(f"tag name {key!r} is not valid: 1-512 chars, none of <>%&\\?/")
            if len(value) > 256:
                raise ValueError(f"tag {key!r}: value longer than 256 characters")
        return v

    @field_validator("dataset_container")
    @classmethod
    def _container(cls, v: str) -> str:
        return _check(_CONTAINER, v, "3-63 lowercase letters, digits and single hyphens")

    @field_validator("gpu_cluster_name", "cpu_cluster_name")
    @classmethod
    def _cluster_name(cls, v: str) -> str:
        return _check(_CLUSTER_NAME, v, "2-16 letters, digits, -; starting with a letter")

    @field_validator("cpu_cluster_name")
    @classmethod
    def _distinct_clusters(cls, v: str, info: ValidationInfo) -> str:
        if v == info.data.get("gpu_cluster_name"):
            raise ValueError(f"{v!r} is already the name of the GPU cluster (gpuClusterName)")
        return v

    @field_validator("gpu_vm_size", "cpu_vm_size")
    @classmethod
    def _vm_size(cls, v: str, info: ValidationInfo) -> str:
        _check(_VM_SIZE, v, "an Azure VM size like Standard_D4s_v3")
        gpu = _GPU_VM_SIZE.fullmatch(v) is not None
        if info.field_name == "gpu_vm_size" and not gpu:
            raise ValueError(
                f"{v!r} has no GPU: the GPU cluster takes an N-series size, e.g. "
                f"{DEFAULT_GPU_VM_SIZE}"
            )
        if info.field_name == "cpu_vm_size" and gpu:
            raise ValueError(f"{v!r} is a GPU (N-series) size: the CPU cluster takes e.g. "
                             f"{DEFAULT_CPU_VM_SIZE}")
        if _RETIRED_GPU_VM_SIZE.fullmatch(v):
            raise ValueError(
                f"{v!r} is retired (NC v1-v3 and ND v1 were retired by 2025-09-30): "
                f"use e.g. {DEFAULT_GPU_VM_SIZE}"
            )
        return v

    @field_validator("gpu_max_nodes", "cpu_max_nodes")
    @classmethod
    def _max_at_least_min(cls, v: int, info: ValidationInfo) -> int:
        arm = info.field_name.split("_")[0]  # "gpu" or "cpu"
        low = info.data.get(f"{arm}_min_nodes")
        if low is not None and v < low:
            raise ValueError(f"must be at least {arm}MinNodes ({low}), got {v}")
        return v

    @field_validator("datastore_name")
    @classmethod
    def _datastore(cls, v: str) -> str:
        return _check(_DATASTORE, v, "lowercase letters, digits and _ only")

    @field_validator("data_asset_version", "environment_version")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        return v if v is None else _check(_VERSION, v, "letters, digits, . _ - (at most 50)")

    @field_validator("control_data_path", "experiment_data_path", "eval_data_path")
    @classmethod
    def _blob_path(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v or v.startswith("/") or ".." in v.split("/") or "://" in v or re.search(r"\s", v):
            raise ValueError(
                f"{v!r} is not valid: a path inside the dataset container, like "
                "datasets/control/train.jsonl (no leading /, no .., no spaces, not a URI)"
            )
        return v

    @model_validator(mode="after")
    def _eval_path(self) -> "StackConfig":
        if self.eval_asset is False and self.eval_data_path is not None:
            raise ValueError(
                "evalAsset is false but evalDataPath is set: remove one of them "
                "(`pulumi config rm evalDataPath` for no eval asset)"
            )
        if self.eval_asset and self.eval_data_path is None:
            path = f"datasets/eval/v{self.data_asset_version}/eval.jsonl"
            object.__setattr__(self, "eval_data_path", path)  # frozen: derived once, here
        return self

    @model_validator(mode="after")
    def _distinct_data_paths(self) -> "StackConfig":
        # one blob behind two assets: both arms (or an arm and the eval set) would be one file
        paths = {"controlDataPath": self.control_data_path,
                 "experimentDataPath": self.experiment_data_path,
                 "evalDataPath": self.eval_data_path}
        seen: dict[str, str] = {}
        for key, path in paths.items():
            if path is None:
                continue
            normal = posixpath.normpath(path)
            if normal in seen:
                raise ValueError(
                    f"{self.project}:{key} {path!r} is the same blob as "
                    f"{self.project}:{seen[normal]}: each data asset needs its own file"
                )
            seen[normal] = key
        return self

    @field_validator("environment_name")
    @classmethod
    def _asset_name(cls, v: str) -> str:
        return _check(_ASSET_NAME, v, "letters, digits, . _ -, starting with a letter or digit")

    @field_validator("environment_image")
    @classmethod
    def _image(cls, v: str) -> str:
        return _check(_IMAGE, v, "an image reference like registry/repository:tag")

    @field_validator("budget_thresholds")
    @classmethod
    def _thresholds(cls, v: list[float]) -> list[float]:
        for t in v:
            if not 0 < t <= 1000:
                raise ValueError(f"{t:g} is out of range: each threshold is a percent in (0, 1000]")
        if len(set(v)) != len(v):
            raise ValueError("thresholds must be distinct")
        return v

    @field_validator("budget_contact_emails")
    @classmethod
    def _emails(cls, v: list[str]) -> list[str]:
        for email in v:
            _check(_EMAIL, email, "an e-mail address like ml-team@contoso.com")
            if _RESERVED_MAIL_DOMAIN.search(email):  # the dev stack file's placeholder
                raise ValueError(f"{email!r} is at a reserved example domain that receives no "
                                 "mail: the budget alerts would reach nobody; set your team's "
                                 "address (pulumi config set --path "
                                 "'budgetContactEmails[0]' you@yourcompany.com)")
        return v

    @field_validator("budget_start_date")
    @classmethod
    def _start_date(cls, v: dt.date | None) -> dt.date | None:
        if v is not None and (v.day != 1 or v < dt.date(2017, 6, 1)):
            raise ValueError(f"{v} is not valid: the first day of a month, like 2026-01-01")
        return v

    @field_validator("data_contributors")
    @classmethod
    def _principals(cls, v: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for principal in v:
            _check(_GUID, principal, "keys are Entra object ids (GUIDs)")
            if principal.lower() in seen:  # one principal twice: Azure refuses the second grant
                raise ValueError(f"{principal!r} is {seen[principal.lower()]!r} again (object "
                                 "ids are not case-sensitive)")
            seen[principal.lower()] = principal
        return v

    # Derived values.
    @property
    def resource_tags(self) -> dict[str, str]:
        return {"project": self.project, "stack": self.stack, "managed-by": "pulumi", **self.tags}

    @property
    def idle_time_before_scale_down(self) -> str:
        return f"PT{self.idle_seconds_before_scale_down}S"  # ISO 8601 duration

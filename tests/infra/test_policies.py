"""The CrossGuard policy pack, run against the resources the program declares.

The mocks record each resource's type token and inputs exactly as the engine would hand them to
the policy pack; each policy's `validate` is called with them (wrapped like the analyzer wraps
them) and a recording `report_violation`. Every policy passes on the program's own resources and
fires on a deliberately bad one.
"""

import copy
import runpy
import sys
from pathlib import Path

import pulumi_policy
import pytest
import yaml
from pulumi_policy import (
    PolicyResource,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import unknown_checking_proxy

from infra.policy import policies
from tests.infra.conftest import Recorded, run_program

POLICY_DIR = Path(policies.__file__).resolve().parent
BY_NAME = {p.name: p for p in policies.POLICIES}
RESOURCE_POLICIES = [p for p in policies.POLICIES if isinstance(p, ResourceValidationPolicy)]


def resource_violations(policy, resource_type: str, props: dict) -> list[str]:
    found: list[str] = []
    args = ResourceValidationArgs(
        resource_type=resource_type,
        props=unknown_checking_proxy(props),
        urn=f"urn:pulumi:dev::paired-finetune::{resource_type}::test",
        name="test",
        opts=None,
        provider=None,
    )
    policy.validate(args, lambda message, urn=None: found.append(message))
    return found


def stack_violations(resources: list[Recorded]) -> list[str]:
    found: list[str] = []
    policy_resources = [
        PolicyResource(
            resource_type=r.type,
            props=unknown_checking_proxy(r.outputs),
            urn=f"urn:pulumi:dev::paired-finetune::{r.type}::{r.name}",
            name=r.name,
            opts=None,
            provider=None,
            parent=None,
            dependencies=[],
            property_dependencies={},
        )
        for r in resources
    ]
    BY_NAME["budget-exists"].validate(
        StackValidationArgs(resources=policy_resources),
        lambda message, urn=None: found.append(message),
    )
    return found


PROGRAM_RUNS = {
    "defaults": {},
    "eval-no-registry-low-priority": {
        "evalDataPath": "datasets/eval/eval.jsonl",
        "containerRegistry": False,
        "gpuPriority": "LowPriority",
    },
}


@pytest.mark.parametrize("overrides", PROGRAM_RUNS.values(), ids=PROGRAM_RUNS.keys())
def test_the_program_passes_every_policy(overrides):
    program_run = run_program(**overrides)
    for policy in RESOURCE_POLICIES:
        for resource in program_run.resources:
            assert resource_violations(policy, resource.type, resource.inputs) == [], (
                policy.name,
                resource.name,
            )
    assert stack_violations(program_run.resources) == []


def _set(props: dict, path: str, value) -> dict:
    """A copy of props with the dotted path set (None deletes the key)."""
    props = copy.deepcopy(props)
    *parents, last = path.split(".")
    target = props
    for key in parents:
        target = target[key]
    if value is None:
        target.pop(last, None)
    else:
        target[last] = value
    return props


CLUSTER = "properties.properties"

# (policy, resource logical name in the program, property path, bad value; None = left unset)
BAD_RESOURCES = [
    ("storage-no-public-blob-access", "storage", "allowBlobPublicAccess", True),
    ("storage-no-public-blob-access", "storage", "allowBlobPublicAccess", None),
    ("storage-tls12-https-only", "storage", "minimumTlsVersion", "TLS1_0"),
    ("storage-tls12-https-only", "storage", "minimumTlsVersion", None),
    ("storage-tls12-https-only", "storage", "enableHttpsTrafficOnly", False),
    ("storage-shared-key-disabled", "storage", "allowSharedKeyAccess", True),
    ("storage-shared-key-disabled", "storage", "allowSharedKeyAccess", None),
    ("keyvault-purge-protection", "key-vault", "properties.enablePurgeProtection", False),
    ("keyvault-purge-protection", "key-vault", "properties.enablePurgeProtection", None),
    ("keyvault-purge-protection", "key-vault", "properties.enableSoftDelete", False),
    ("keyvault-rbac-authorization", "key-vault", "properties.enableRbacAuthorization", False),
    (
        "keyvault-rbac-authorization",
        "key-vault",
        "properties.accessPolicies",
        [{"objectId": "x", "tenantId": "y", "permissions": {"secrets": ["get"]}}],
    ),
    ("aml-cluster-scales-to-zero", "gpu-cluster", f"{CLUSTER}.scaleSettings.minNodeCount", 1),
    (
        "aml-cluster-scales-to-zero",
        "cpu-cluster",
        f"{CLUSTER}.scaleSettings.nodeIdleTimeBeforeScaleDown",
        None,
    ),
    (
        "aml-cluster-scales-to-zero",
        "cpu-cluster",
        f"{CLUSTER}.scaleSettings.nodeIdleTimeBeforeScaleDown",
        "",
    ),
    (
        "aml-cluster-scales-to-zero",
        "gpu-cluster",
        f"{CLUSTER}.scaleSettings.nodeIdleTimeBeforeScaleDown",
        "P365D",
    ),
    (
        "aml-cluster-ssh-disabled",
        "gpu-cluster",
        f"{CLUSTER}.remoteLoginPortPublicAccess",
        "Enabled",
    ),
    (
        "aml-cluster-ssh-disabled",
        "cpu-cluster",
        f"{CLUSTER}.remoteLoginPortPublicAccess",
        "NotSpecified",
    ),
    (
        "aml-cluster-ssh-disabled",
        "gpu-cluster",
        f"{CLUSTER}.userAccountCredentials",
        {"adminUserName": "azureuser", "adminUserPassword": "secret"},
    ),
    ("registry-admin-user-disabled", "container-registry", "adminUserEnabled", True),
]


@pytest.mark.parametrize(
    ("policy_name", "resource_name", "path", "bad"),
    BAD_RESOURCES,
    ids=[f"{p}:{path.rsplit('.', 1)[-1]}={bad!r}"[:80] for p, _, path, bad in BAD_RESOURCES],
)
def test_each_policy_fires_on_a_bad_resource(default_run, policy_name, resource_name, path, bad):
    good = default_run.named(resource_name)
    bad_props = _set(good.inputs, path, bad)
    fired = {
        policy.name
        for policy in RESOURCE_POLICIES
        if resource_violations(policy, good.type, bad_props)
    }
    assert fired == {policy_name}
    message = " ".join(resource_violations(BY_NAME[policy_name], good.type, bad_props))
    assert path.rsplit(".", 1)[-1] in message


def test_every_policy_has_a_bad_resource_test():
    tested = {name for name, *_ in BAD_RESOURCES} | {"budget-exists"}
    assert tested == set(BY_NAME)


def test_budget_policy_fires_without_a_budget(default_run):
    without = [r for r in default_run.resources if r.type != "azure-native:consumption:Budget"]
    assert stack_violations(without) != []


@pytest.mark.parametrize("amount", [0, -1, float("inf"), float("nan"), "100", True, None])
def test_budget_policy_fires_on_a_budget_that_is_no_budget(default_run, amount):
    changed = [
        Recorded(r.type, r.name, r.inputs, r.id, {**r.outputs, "amount": amount})
        if r.type == "azure-native:consumption:Budget"
        else r
        for r in default_run.resources
    ]
    assert stack_violations(changed) != []


def test_cluster_policies_match_the_compute_type_in_any_case(default_run):
    good = default_run.named("gpu-cluster")
    bad = _set(good.inputs, f"{CLUSTER}.scaleSettings.minNodeCount", 1)
    bad = _set(bad, "properties.computeType", "amlcompute")
    assert resource_violations(BY_NAME["aml-cluster-scales-to-zero"], good.type, bad)
    assert not resource_violations(BY_NAME["aml-cluster-scales-to-zero"], good.type, good.inputs)


def test_versioned_type_tokens_are_checked_too(default_run):
    storage = default_run.named("storage")
    bad = _set(storage.inputs, "allowSharedKeyAccess", True)
    assert resource_violations(
        BY_NAME["storage-shared-key-disabled"], "azure-native:storage/v20240101:StorageAccount", bad
    )


def test_policies_ignore_other_resources_and_non_cluster_computes(default_run):
    cluster = default_run.named("gpu-cluster")
    instance = _set(cluster.inputs, "properties.computeType", "ComputeInstance")
    instance = _set(instance, f"{CLUSTER}.remoteLoginPortPublicAccess", "Enabled")
    for policy in RESOURCE_POLICIES:
        assert resource_violations(policy, cluster.type, instance) == []
        assert resource_violations(policy, "azure-native:resources:ResourceGroup", {}) == []


def test_pack_main_builds_the_policy_pack(monkeypatch):
    built = {}
    monkeypatch.setattr(pulumi_policy, "PolicyPack", lambda **kwargs: built.update(kwargs))
    # Pulumi runs the pack with its directory on sys.path.
    monkeypatch.syspath_prepend(str(POLICY_DIR))
    try:
        runpy.run_path(str(POLICY_DIR), run_name="__main__")
    finally:
        sys.modules.pop("policies", None)  # the pack's sibling import, not ours to keep
    assert built["name"] == "paired-finetune-guardrails"
    assert [p.name for p in built["policies"]] == list(BY_NAME)
    assert built["enforcement_level"] == pulumi_policy.EnforcementLevel.MANDATORY
    assert isinstance(built["policies"][-1], StackValidationPolicy)


def test_pack_definition_uses_the_repo_virtualenv():
    pack = yaml.safe_load((POLICY_DIR / "PulumiPolicy.yaml").read_text())
    assert pack["runtime"]["name"] == "python"
    venv = (POLICY_DIR / pack["runtime"]["options"]["virtualenv"]).resolve()
    assert venv == POLICY_DIR.parents[1] / ".venv"

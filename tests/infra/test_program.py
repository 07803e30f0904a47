"""The program under mocks: every resource with the properties stated, and the stack outputs."""

import datetime as dt
import runpy
from collections import Counter
from pathlib import Path

import pulumi
import pytest

from infra import environment, naming, program
from infra.config import ConfigError
from infra.roles import ACR_PULL, STORAGE_BLOB_DATA_CONTRIBUTOR, STORAGE_BLOB_DATA_READER
from tests.infra.conftest import (
    BASE_CONFIG,
    PROJECT,
    SUBSCRIPTION_ID,
    TENANT_ID,
    run,
    run_program,
)

REPO = Path(__file__).resolve().parents[2]

RG = "azure-native:resources:ResourceGroup"
STORAGE = "azure-native:storage:StorageAccount"
CONTAINER = "azure-native:storage:BlobContainer"
VAULT = "azure-native:keyvault:Vault"
LOGS = "azure-native:operationalinsights:Workspace"
INSIGHTS = "azure-native:applicationinsights:Component"
REGISTRY = "azure-native:containerregistry:Registry"
WORKSPACE = "azure-native:machinelearningservices:Workspace"
COMPUTE = "azure-native:machinelearningservices:Compute"
DATASTORE = "azure-native:machinelearningservices:Datastore"
DATA = "azure-native:machinelearningservices:DataVersion"
ENVIRONMENT = "azure-native:machinelearningservices:EnvironmentVersion"
ROLE = "azure-native:authorization:RoleAssignment"
BUDGET = "azure-native:consumption:Budget"

# Where tags go: top-level `tags`, or inside `properties` for Azure ML assets. The rest (blob
# container, role assignment, budget) take no tags in the Azure API.
TAGGED = {RG, STORAGE, VAULT, LOGS, INSIGHTS, REGISTRY, WORKSPACE, COMPUTE}
TAGGED_IN_PROPERTIES = {DATASTORE, DATA, ENVIRONMENT}
UNTAGGABLE = {CONTAINER, ROLE, BUDGET}


def role_definition(role_id: str) -> str:
    return f"/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.Authorization/roleDefinitions/{role_id}"


def test_declares_the_whole_estate(default_run):
    counts = Counter(r.type for r in default_run.resources)
    assert counts == {
        RG: 1,
        STORAGE: 1,
        CONTAINER: 1,
        VAULT: 1,
        LOGS: 1,
        INSIGHTS: 1,
        REGISTRY: 1,
        WORKSPACE: 1,
        COMPUTE: 2,
        DATASTORE: 1,
        DATA: 2,
        ENVIRONMENT: 1,
        ROLE: 5,
        BUDGET: 1,
    }


def test_every_resource_is_tagged(default_run):
    expected = {"project": PROJECT, "stack": "dev", "managed-by": "pulumi"}
    assert {r.type for r in default_run.resources} <= TAGGED | TAGGED_IN_PROPERTIES | UNTAGGABLE
    for r in default_run.resources:
        if r.type in TAGGED:
            assert r.inputs["tags"] == expected, r.name
        elif r.type in TAGGED_IN_PROPERTIES:
            assert r.inputs["properties"]["tags"] == expected, r.name


def test_extra_tags_from_config_reach_every_resource():
    tagged = run_program(tags={"owner": "ml-team", "cost-center": "42"})
    for r in tagged.resources:
        tags = r.inputs.get("tags") or r.inputs.get("properties", {}).get("tags")
        if r.type not in UNTAGGABLE:
            assert tags["owner"] == "ml-team" and tags["cost-center"] == "42", r.name
            assert tags["managed-by"] == "pulumi"


def test_resource_group(default_run):
    rg = default_run.one(RG)
    assert rg.inputs["resourceGroupName"] == "rg-paired-finetune-dev"
    assert rg.inputs["location"] == "eastus"


def test_storage_account_is_identity_only(default_run):
    account = default_run.one(STORAGE).inputs
    assert account["allowBlobPublicAccess"] is False
    assert account["allowSharedKeyAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2"
    assert account["enableHttpsTrafficOnly"] is True
    assert account["defaultToOAuthAuthentication"] is True
    assert account["allowCrossTenantReplication"] is False
    assert account["isHnsEnabled"] is False  # Azure ML's default storage cannot be ADLS Gen2
    assert account["kind"] == "StorageV2"
    assert account["sku"] == {"name": "Standard_LRS"}
    assert account["location"] == "eastus"


def test_global_names_carry_a_suffix_derived_from_the_subscription(default_run):
    suffix = naming.default_suffix(SUBSCRIPTION_ID, PROJECT, "dev")
    assert default_run.one(STORAGE).inputs["accountName"] == f"stpairedfidev{suffix}"
    assert default_run.one(VAULT).inputs["vaultName"] == f"kvpairedfidev{suffix}"
    assert default_run.one(REGISTRY).inputs["registryName"] == f"crpairedfinetunedev{suffix}"


def test_name_suffix_from_config():
    configured = run_program(nameSuffix="x7k2")
    assert configured.one(STORAGE).inputs["accountName"] == "stpairedfidevx7k2"
    assert configured.one(VAULT).inputs["vaultName"] == "kvpairedfidevx7k2"
    assert configured.one(REGISTRY).inputs["registryName"] == "crpairedfinetunedevx7k2"


def test_dataset_container_is_private(default_run):
    container = default_run.one(CONTAINER).inputs
    assert container["containerName"] == "training-data"
    assert container["publicAccess"] == "None"
    assert container["accountName"] == default_run.one(STORAGE).inputs["accountName"]


def test_key_vault_rbac_soft_delete_purge_protection(default_run):
    vault = default_run.one(VAULT).inputs
    props = vault["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    assert props["softDeleteRetentionInDays"] == 7
    assert props["tenantId"] == TENANT_ID
    assert "accessPolicies" not in props
    assert props["sku"] == {"family": "A", "name": "standard"}


def test_log_analytics_and_workspace_based_application_insights(default_run):
    logs = default_run.one(LOGS)
    insights = default_run.one(INSIGHTS).inputs
    assert logs.inputs["retentionInDays"] == 30
    assert logs.inputs["sku"] == {"name": "PerGB2018"}
    assert insights["workspaceResourceId"] == logs.id
    assert insights["ingestionMode"] == "LogAnalytics"
    assert insights["kind"] == "web"


def test_container_registry_has_no_admin_user(default_run):
    registry = default_run.one(REGISTRY).inputs
    assert registry["adminUserEnabled"] is False
    assert registry["sku"] == {"name": "Basic"}


def test_workspace(default_run):
    workspace = default_run.one(WORKSPACE).inputs
    assert workspace["workspaceName"] == "mlw-paired-finetune-dev"
    assert workspace["identity"] == {"type": "SystemAssigned"}
    assert workspace["systemDatastoresAuthMode"] == "Identity"
    assert workspace["publicNetworkAccess"] == "Enabled"
    assert workspace["storageAccount"] == default_run.one(STORAGE).id
    assert workspace["keyVault"] == default_run.one(VAULT).id
    assert workspace["applicationInsights"] == default_run.one(INSIGHTS).id
    assert workspace["containerRegistry"] == default_run.one(REGISTRY).id


def test_workspace_public_network_access_is_configurable():
    workspace = run_program(workspacePublicNetworkAccess="Disabled").one(WORKSPACE).inputs
    assert workspace["publicNetworkAccess"] == "Disabled"


@pytest.mark.parametrize(
    ("name", "vm_size", "max_nodes"),
    [("gpu-cluster", "Standard_NC24ads_A100_v4", 2), ("cpu-cluster", "Standard_D4s_v3", 4)],
)
def test_clusters(default_run, name, vm_size, max_nodes):
    cluster = default_run.named(name).inputs
    assert cluster["computeName"] == name
    assert cluster["workspaceName"] == "mlw-paired-finetune-dev"
    assert cluster["identity"] == {"type": "SystemAssigned"}
    assert cluster["properties"]["computeType"] == "AmlCompute"
    assert cluster["properties"]["disableLocalAuth"] is True
    aml = cluster["properties"]["properties"]
    assert aml["vmSize"] == vm_size
    assert aml["vmPriority"] == "Dedicated"
    assert aml["remoteLoginPortPublicAccess"] == "Disabled"
    assert "userAccountCredentials" not in aml
    assert aml["scaleSettings"] == {
        "minNodeCount": 0,
        "maxNodeCount": max_nodes,
        "nodeIdleTimeBeforeScaleDown": "PT900S",
    }


def test_cluster_sizes_and_priority_come_from_config():
    configured = run_program(
        gpuVmSize="Standard_NC48ads_A100_v4",
        gpuMaxNodes=3,
        gpuPriority="LowPriority",
        cpuMaxNodes=8,
        idleSecondsBeforeScaleDown=300,
    )
    gpu = configured.named("gpu-cluster").inputs["properties"]["properties"]
    cpu = configured.named("cpu-cluster").inputs["properties"]["properties"]
    assert gpu["vmSize"] == "Standard_NC48ads_A100_v4"
    assert gpu["vmPriority"] == "LowPriority"
    assert gpu["scaleSettings"]["maxNodeCount"] == 3
    assert cpu["vmPriority"] == "Dedicated"
    assert cpu["scaleSettings"]["maxNodeCount"] == 8
    assert gpu["scaleSettings"]["nodeIdleTimeBeforeScaleDown"] == "PT300S"


def test_role_assignments_are_scoped_to_the_container_and_registry(default_run):
    container_id = default_run.one(CONTAINER).id
    registry_id = default_run.one(REGISTRY).id
    roles = {r.name: r.inputs for r in default_run.of_type(ROLE)}
    expected = {
        "gpu-cluster-datasets": (
            "principal-gpu-cluster",
            STORAGE_BLOB_DATA_CONTRIBUTOR,
            container_id,
        ),
        "cpu-cluster-datasets": (
            "principal-cpu-cluster",
            STORAGE_BLOB_DATA_CONTRIBUTOR,
            container_id,
        ),
        "gpu-cluster-acr-pull": ("principal-gpu-cluster", ACR_PULL, registry_id),
        "cpu-cluster-acr-pull": ("principal-cpu-cluster", ACR_PULL, registry_id),
        "workspace-datasets-reader": (
            "principal-workspace",
            STORAGE_BLOB_DATA_READER,
            container_id,
        ),
    }
    assert set(roles) == set(expected)
    for name, (principal, role_id, scope) in expected.items():
        assert roles[name]["principalId"] == principal, name
        assert roles[name]["roleDefinitionId"] == role_definition(role_id), name
        assert roles[name]["scope"] == scope, name
    # Managed identities are service principals, and say so (azure-native would send "User").
    assert {r["principalType"] for r in roles.values()} == {"ServicePrincipal"}


def test_no_role_is_broader_than_a_container_or_registry(default_run):
    allowed = {default_run.one(CONTAINER).id, default_run.one(REGISTRY).id}
    for role in default_run.of_type(ROLE):
        assert role.inputs["scope"] in allowed, role.name


def test_data_contributors_from_config():
    group, user = "11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000"
    configured = run_program(dataContributors={group: "Group", user: "User"})
    roles = {r.name: r.inputs for r in configured.of_type(ROLE)}
    assert len(roles) == 7
    for principal, principal_type in ((group, "Group"), (user, "User")):
        role = roles[f"datasets-contributor-{principal}"]
        assert role["principalId"] == principal
        assert role["principalType"] == principal_type
        assert role["roleDefinitionId"] == role_definition(STORAGE_BLOB_DATA_CONTRIBUTOR)
        assert role["scope"] == configured.one(CONTAINER).id


def test_registry_only_when_configured():
    without = run_program(containerRegistry=False)
    assert without.of_type(REGISTRY) == []
    assert "containerRegistry" not in without.one(WORKSPACE).inputs
    assert not [r for r in without.of_type(ROLE) if r.inputs["roleDefinitionId"].endswith(ACR_PULL)]
    assert len(without.of_type(ROLE)) == 3


def test_datastore_is_identity_based(default_run):
    datastore = default_run.one(DATASTORE).inputs
    props = datastore["properties"]
    assert datastore["name"] == "training_data"
    assert props["datastoreType"] == "AzureBlob"
    assert props["credentials"] == {"credentialsType": "None"}
    assert props["serviceDataAccessAuthIdentity"] == "WorkspaceSystemAssignedIdentity"
    assert props["accountName"] == default_run.one(STORAGE).inputs["accountName"]
    assert props["containerName"] == "training-data"


def datastore_uri(path: str, rg="rg-paired-finetune-dev", ws="mlw-paired-finetune-dev") -> str:
    return (
        f"azureml://subscriptions/{SUBSCRIPTION_ID}/resourcegroups/{rg}/workspaces/{ws}"
        f"/datastores/training_data/paths/{path}"
    )


def test_data_assets(default_run):
    assets = {r.inputs["name"]: r.inputs for r in default_run.of_type(DATA)}
    assert set(assets) == {"control-train", "experiment-train"}
    for name, arm in (("control-train", "control"), ("experiment-train", "experiment")):
        assert assets[name]["version"] == "1"
        assert assets[name]["properties"]["dataType"] == "uri_file"
        assert assets[name]["properties"]["dataUri"] == datastore_uri(f"datasets/{arm}/v1/train.jsonl")


def test_eval_asset_and_version_from_config():
    configured = run_program(dataAssetVersion="3", evalAsset="true")
    assets = {r.inputs["name"]: r.inputs for r in configured.of_type(DATA)}
    assert set(assets) == {"control-train", "experiment-train", "eval"}
    assert {a["version"] for a in assets.values()} == {"3"}
    assert assets["eval"]["properties"]["dataUri"] == datastore_uri("datasets/eval/v3/eval.jsonl")
    assert assets["control-train"]["properties"]["dataUri"] == datastore_uri(
        "datasets/control/v3/train.jsonl"
    )
    assert configured.outputs["data_assets"]["eval"] == {"name": "eval", "version": "3"}


def test_training_environment(default_run):
    env = default_run.one(ENVIRONMENT).inputs
    conda = (REPO / "environment" / "conda.yml").read_text()
    assert env["name"] == "paired-finetune-train"
    assert env["properties"]["image"].startswith("mcr.microsoft.com/azureml/openmpi5.0-cuda12")
    assert env["properties"]["condaFile"] == conda
    assert env["properties"]["osType"] == "Linux"
    assert env["version"] == environment.environment_version(env["properties"]["image"], conda)
    assert default_run.outputs["training_environment"] == f"paired-finetune-train:{env['version']}"


def test_environment_version_changes_with_its_inputs():
    image = "mcr.microsoft.com/azureml/openmpi5.0-cuda12.6-ubuntu24.04:1"
    version = environment.environment_version
    assert version(image, "a") == version(image, "a")
    assert version(image, "a") != version(image, "b")
    assert version(image, "a") != version(image + "0", "a")
    pinned = run_program(environmentVersion="7", environmentName="train-env")
    assert pinned.outputs["training_environment"] == "train-env:7"


def test_versioned_assets_are_kept_when_replaced(default_run):
    # Immutable versions that past runs refer to: a config bump registers a new one beside it,
    # and the old one stays in Azure (the engine gets retainOnDelete for exactly these).
    retained = {r.name for r in default_run.resources if r.options["retain_on_delete"]}
    versioned = {r.name for r in default_run.resources if r.type in (DATA, ENVIRONMENT)}
    assert len(versioned) == 3 and retained == versioned
    # the estate itself is not retained: `pulumi destroy` must remove it
    assert not default_run.one(WORKSPACE).options["retain_on_delete"]
    assert not default_run.one(RG).options["retain_on_delete"]


def test_budget(default_run):
    budget = default_run.one(BUDGET).inputs
    assert budget["amount"] == 200
    assert budget["category"] == "Cost"
    assert budget["timeGrain"] == "Monthly"
    assert budget["scope"] == default_run.one(RG).id
    start = dt.date.fromisoformat(budget["timePeriod"]["startDate"][:10])
    assert start == dt.date.today().replace(day=1)
    notifications = budget["notifications"]
    assert sorted(n["threshold"] for n in notifications.values()) == [50, 80, 100]
    for notification in notifications.values():
        assert notification["enabled"] is True
        assert notification["contactEmails"] == ["ml-team@contoso.com"]
        assert notification["operator"] == "GreaterThanOrEqualTo"


def test_budget_from_config():
    configured = run_program(
        budgetAmount=75.5,
        budgetThresholds=[90, 110],
        budgetContactEmails=["a@contoso.com", "b@contoso.com"],
        budgetStartDate="2026-02-01",
    )
    budget = configured.one(BUDGET).inputs
    assert budget["amount"] == 75.5
    assert budget["timePeriod"]["startDate"] == "2026-02-01T00:00:00Z"
    assert sorted(n["threshold"] for n in budget["notifications"].values()) == [90, 110]
    assert all(
        n["contactEmails"] == ["a@contoso.com", "b@contoso.com"]
        for n in budget["notifications"].values()
    )


def test_stack_outputs_are_what_the_training_cli_reads(default_run):
    """The contract is between two programs: what infra exports must be exactly what `train`
    reads (training.stack.StackOutputs), and must parse there as `pulumi stack output --json`
    would hand it over."""
    import json

    from training.experiment.stack import StackOutputs, parse_outputs

    outputs = default_run.outputs
    assert set(outputs) == set(program.OUTPUT_KEYS) == set(StackOutputs.model_fields)
    parsed = parse_outputs(json.loads(json.dumps(outputs)), "pulumi stack output --json")
    assert parsed.model_dump(mode="json") == outputs
    assert parsed.data_assets["control"].id == "azureml:control-train:1"
    assert outputs["gpu_vm_size"] == "Standard_NC24ads_A100_v4"
    assert outputs["cpu_vm_size"] == "Standard_D4s_v3"
    assert outputs["subscription_id"] == SUBSCRIPTION_ID
    assert outputs["resource_group"] == "rg-paired-finetune-dev"
    assert outputs["location"] == "eastus"
    assert outputs["workspace_name"] == "mlw-paired-finetune-dev"
    assert outputs["gpu_cluster"] == "gpu-cluster"
    assert outputs["cpu_cluster"] == "cpu-cluster"
    assert outputs["datastore"] == "training_data"
    assert outputs["data_assets"] == {
        "control": {"name": "control-train", "version": "1"},
        "experiment": {"name": "experiment-train", "version": "1"},
    }
    name, _, version = outputs["training_environment"].partition(":")
    assert name == "paired-finetune-train" and version
    assert all(isinstance(v, str) for k, v in outputs.items() if k != "data_assets")


def test_outputs_follow_renamed_resources():
    outputs = run_program(
        resourceGroupName="rg-custom",
        workspaceName="ws-custom",
        gpuClusterName="a100",
        cpuClusterName="cpu",
        datastoreName="pairs",
        location="westeurope",
    ).outputs
    assert (outputs["resource_group"], outputs["workspace_name"]) == ("rg-custom", "ws-custom")
    assert (outputs["gpu_cluster"], outputs["cpu_cluster"]) == ("a100", "cpu")
    assert outputs["datastore"] == "pairs"


def test_bad_config_stops_before_any_resource():
    recorded = []

    def entry():
        try:
            return program.main()
        finally:
            recorded.extend(pulumi.runtime.settings.SETTINGS.monitor.resources)

    with pytest.raises(ConfigError, match=r"paired-finetune:gpuMaxNodes: must be at least"):
        run({**BASE_CONFIG, f"{PROJECT}:gpuMinNodes": "2", f"{PROJECT}:gpuMaxNodes": "1"}, entry)
    assert recorded == []


def test_entry_point_exports_the_outputs(monkeypatch):
    exported = {}
    monkeypatch.setattr(pulumi, "export", lambda key, value: exported.setdefault(key, value))

    def entry():
        runpy.run_path(str(REPO / "infra"), run_name="__main__")

    entry_run = run(BASE_CONFIG, entry)
    assert set(exported) == set(program.OUTPUT_KEYS)
    assert len(entry_run.resources) == 20

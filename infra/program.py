"""The whole estate, declared from a validated config, and the stack outputs.

The stack outputs are a contract (docs/architecture.md): the training CLI reads exactly these keys
from `pulumi stack output --json`.
"""

from typing import Any

import pulumi
from pulumi_azure_native import authorization

from infra.budget import declare_budget
from infra.compute import declare_clusters
from infra.config import StackConfig
from infra.config_load import load_config
from infra.data import declare_data_assets, declare_datastore
from infra.environment import declare_environment
from infra.roles import declare_role_assignments
from infra.workspace import declare_workspace

OUTPUT_KEYS = (
    "subscription_id",
    "resource_group",
    "location",
    "workspace_name",
    "gpu_cluster",
    "cpu_cluster",
    "datastore",
    "data_assets",
    "training_environment",
    "gpu_vm_size",
    "cpu_vm_size",
)


def declare(cfg: StackConfig) -> dict[str, Any]:
    """Declare every resource; return the stack outputs (keys: OUTPUT_KEYS)."""
    # Where we deploy: the subscription for resource ids, the tenant for the key vault.
    client = authorization.get_client_config_output()

    estate = declare_workspace(
        cfg, tenant_id=client.tenant_id, subscription_id=client.subscription_id
    )
    clusters = declare_clusters(cfg, estate.workspace, estate.resource_group.name)
    datastore = declare_datastore(cfg, estate)
    data_assets = declare_data_assets(cfg, estate, datastore, client.subscription_id)
    training_environment = declare_environment(cfg, estate)
    declare_role_assignments(cfg, estate, clusters, client.subscription_id)
    declare_budget(cfg, estate.resource_group)

    return {
        "subscription_id": client.subscription_id,
        "resource_group": estate.resource_group.name,
        "location": cfg.location,
        "workspace_name": estate.workspace.name,
        "gpu_cluster": clusters["gpu"].name,
        "cpu_cluster": clusters["cpu"].name,
        "datastore": datastore.name,
        "data_assets": data_assets,
        "training_environment": training_environment,
        # what `train estimate` prices and the memory plan sizes (the clusters' VM sizes)
        "gpu_vm_size": cfg.gpu_vm_size,
        "cpu_vm_size": cfg.cpu_vm_size,
    }


def main() -> dict[str, Any]:
    """What `pulumi up` runs: validate the config first, then declare and export."""
    cfg = load_config()
    outputs = declare(cfg)
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs

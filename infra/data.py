"""The datastore on the dataset container and the registered data assets of a pair."""

import pulumi
from pulumi_azure_native import machinelearningservices as ml

from infra.config import StackConfig
from infra.workspace import Estate

# Asset names are part of the contract with the training CLI (stack output `data_assets`).
CONTROL_ASSET = "control-train"
EXPERIMENT_ASSET = "experiment-train"
EVAL_ASSET = "eval"


def declare_datastore(cfg: StackConfig, estate: Estate) -> ml.Datastore:
    # No credentials stored: jobs read with the cluster's identity, the studio with the
    # workspace's (both granted in roles.py), as the storage account accepts no keys.
    return ml.Datastore(
        "datastore",
        name=cfg.datastore_name,
        workspace_name=estate.workspace.name,
        resource_group_name=estate.resource_group.name,
        properties=ml.AzureBlobDatastoreArgs(
            datastore_type="AzureBlob",
            account_name=estate.storage_account.name,
            container_name=estate.dataset_container.name,
            endpoint="core.windows.net",
            protocol="https",
            credentials=ml.NoneDatastoreCredentialsArgs(credentials_type="None"),
            service_data_access_auth_identity=(
                ml.ServiceDataAccessAuthIdentity.WORKSPACE_SYSTEM_ASSIGNED_IDENTITY
            ),
            description="Control, experiment and evaluation datasets (identity-based access).",
            tags=cfg.resource_tags,
        ),
    )


def declare_data_assets(
    cfg: StackConfig,
    estate: Estate,
    datastore: ml.Datastore,
    subscription_id: pulumi.Input[str],
) -> dict[str, dict[str, str]]:
    """Register the assets; return {arm: {"name", "version"}} for the stack output."""
    declared = {
        "control": (CONTROL_ASSET, cfg.control_data_path, "Training data of the control arm."),
        "experiment": (
            EXPERIMENT_ASSET,
            cfg.experiment_data_path,
            "Training data of the experiment arm.",
        ),
    }
    if cfg.eval_data_path is not None:
        declared["eval"] = (
            EVAL_ASSET,
            cfg.eval_data_path,
            "Shared evaluation set: both arms of a pair are compared on it.",
        )

    assets = {}
    for arm, (asset_name, path, description) in declared.items():
        # The long azureml:// form is what the service stores; it names the datastore, so the
        # asset resolves in jobs without any further lookup.
        data_uri = pulumi.Output.concat(
            "azureml://subscriptions/", subscription_id,
            "/resourcegroups/", estate.resource_group.name,
            "/workspaces/", estate.workspace.name,
            "/datastores/", datastore.name,
            "/paths/", path,
        )  # fmt: skip
        ml.DataVersion(
            f"data-{asset_name}",
            name=asset_name,
            version=cfg.data_asset_version,
            workspace_name=estate.workspace.name,
            resource_group_name=estate.resource_group.name,
            properties=ml.UriFileDataVersionArgs(
                data_type="uri_file",
                data_uri=data_uri,
                description=description,
                tags=cfg.resource_tags,
            ),
            # Versions are immutable and past runs refer to them: when the version in config
            # moves on, the old one stays registered instead of being deleted.
            opts=pulumi.ResourceOptions(retain_on_delete=True),
        )
        assets[arm] = {"name": asset_name, "version": cfg.data_asset_version}
    return assets

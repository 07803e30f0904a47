"""The Azure ML workspace and what it depends on: resource group, storage, key vault, monitoring,
container registry."""

from dataclasses import dataclass

import pulumi
from pulumi_azure_native import (
    applicationinsights,
    containerregistry,
    keyvault,
    operationalinsights,
    resources,
    storage,
)
from pulumi_azure_native import machinelearningservices as ml

from infra import naming
from infra.config import StackConfig


@dataclass(frozen=True)
class Estate:
    resource_group: resources.ResourceGroup
    storage_account: storage.StorageAccount
    dataset_container: storage.BlobContainer
    registry: containerregistry.Registry | None
    workspace: ml.Workspace


def declare_workspace(
    cfg: StackConfig, tenant_id: pulumi.Input[str], subscription_id: pulumi.Input[str]
) -> Estate:
    tags = cfg.resource_tags
    names = naming.global_names(cfg.project, cfg.stack, cfg.name_suffix, subscription_id)
    # Log Analytics names allow letters, digits and inner hyphens only.
    monitoring_name = cfg.workspace_name.replace("_", "-").strip("-")

    resource_group = resources.ResourceGroup(
        "resource-group",
        resource_group_name=cfg.resource_group_name,
        location=cfg.location,
        tags=tags,
    )

    # The workspace's default storage and the datasets' home. Identity only: no shared keys, no
    # anonymous blobs, TLS 1.2+, HTTPS only. No hierarchical namespace: Azure ML's default
    # storage must be a plain blob account.
    storage_account = storage.StorageAccount(
        "storage",
        account_name=names.storage_account,
        resource_group_name=resource_group.name,
        location=cfg.location,
        kind=storage.Kind.STORAGE_V2,
        sku=storage.SkuArgs(name=cfg.storage_sku),
        access_tier=storage.AccessTier.HOT,
        allow_blob_public_access=False,
        allow_shared_key_access=False,
        default_to_o_auth_authentication=True,
        allow_cross_tenant_replication=False,
        minimum_tls_version=storage.MinimumTlsVersion.TLS1_2,
        enable_https_traffic_only=True,
        is_hns_enabled=False,
        tags=tags,
    )

    dataset_container = storage.BlobContainer(
        "dataset-container",
        container_name=cfg.dataset_container,
        account_name=storage_account.name,
        resource_group_name=resource_group.name,
        public_access=storage.PublicAccess.NONE,
    )

    # Azure ML keeps its secrets here. RBAC instead of access policies; purge protection so a
    # deleted vault (and what it held) can be recovered for the retention period.
    key_vault = keyvault.Vault(
        "key-vault",
        vault_name=names.key_vault,
        resource_group_name=resource_group.name,
        location=cfg.location,
        properties=keyvault.VaultPropertiesArgs(
            tenant_id=tenant_id,
            sku=keyvault.SkuArgs(family=keyvault.SkuFamily.A, name=keyvault.SkuName.STANDARD),
            enable_rbac_authorization=True,
            enable_soft_delete=True,
            soft_delete_retention_in_days=cfg.key_vault_retention_days,
            enable_purge_protection=True,
            enabled_for_deployment=False,
            enabled_for_disk_encryption=False,
            enabled_for_template_deployment=False,
        ),
        tags=tags,
    )

    log_analytics = operationalinsights.Workspace(
        "log-analytics",
        workspace_name=f"log-{monitoring_name}",
        resource_group_name=resource_group.name,
        location=cfg.location,
        sku=operationalinsights.WorkspaceSkuArgs(
            name=operationalinsights.WorkspaceSkuNameEnum.PER_GB2018
        ),
        retention_in_days=cfg.log_retention_days,
        tags=tags,
    )

    # Workspace-based Application Insights: its data lands in the Log Analytics workspace above.
    app_insights = applicationinsights.Component(
        "app-insights",
        resource_name_=f"appi-{monitoring_name}",
        resource_group_name=resource_group.name,
        location=cfg.location,
        kind="web",
        application_type=applicationinsights.ApplicationType.WEB,
        ingestion_mode=applicationinsights.IngestionMode.LOG_ANALYTICS,
        workspace_resource_id=log_analytics.id,
        tags=tags,
    )

    # Our own registry, so that Azure ML does not create one with the admin user enabled on the
    # first image build. Clusters pull with their managed identities (roles.py).
    registry = None
    if cfg.container_registry:
        registry = containerregistry.Registry(
            "container-registry",
            registry_name=names.container_registry,
            resource_group_name=resource_group.name,
            location=cfg.location,
            sku=containerregistry.SkuArgs(name=cfg.container_registry_sku),
            admin_user_enabled=False,
            tags=tags,
        )

    # System-assigned identity: Azure ML grants it what it needs on the storage account, key vault
    # and registry linked here when it creates the workspace. The system datastores use that
    # identity, since the storage account has no keys to hand out.
    workspace = ml.Workspace(
        "workspace",
        workspace_name=cfg.workspace_name,
        resource_group_name=resource_group.name,
        location=cfg.location,
        friendly_name=f"{cfg.project} ({cfg.stack})",
        description="Paired fine-tuning: control vs experiment on the same base model.",
        sku=ml.SkuArgs(name="Basic", tier=ml.SkuTier.BASIC),
        identity=ml.ManagedServiceIdentityArgs(type=ml.ManagedServiceIdentityType.SYSTEM_ASSIGNED),
        storage_account=storage_account.id,
        key_vault=key_vault.id,
        application_insights=app_insights.id,
        container_registry=registry.id if registry else None,
        system_datastores_auth_mode=ml.SystemDatastoresAuthMode.IDENTITY,
        public_network_access=cfg.workspace_public_network_access,
        hbi_workspace=False,
        tags=tags,
    )

    return Estate(
        resource_group=resource_group,
        storage_account=storage_account,
        dataset_container=dataset_container,
        registry=registry,
        workspace=workspace,
    )

"""Role assignments: who may touch the datasets and the images, and nothing broader.

Built-in role definitions by id (the ids are the same in every tenant). Each assignment is scoped
to the one resource it is about: the dataset container, not the storage account; the registry,
not the resource group. Azure ML itself grants the workspace's system-assigned identity its roles
on the storage account, key vault and registry when it creates the workspace.
"""

import pulumi
from pulumi_azure_native import authorization
from pulumi_azure_native import machinelearningservices as ml

from infra.config import StackConfig
from infra.workspace import Estate

STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"


def _principal_id(resource: ml.Compute | ml.Workspace) -> pulumi.Output[str]:
    return resource.identity.apply(lambda identity: identity.principal_id)


def declare_role_assignments(
    cfg: StackConfig,
    estate: Estate,
    clusters: dict[str, ml.Compute],
    subscription_id: pulumi.Input[str],
) -> list[authorization.RoleAssignment]:
    def role(role_id: str) -> pulumi.Output[str]:
        return pulumi.Output.from_input(subscription_id).apply(
            lambda sub: (
                f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{role_id}"
            )
        )

    def assign(name, principal_id, role_id, scope, principal_type, description):
        return authorization.RoleAssignment(
            name,
            principal_id=principal_id,
            # Always stated: azure-native would send "User", and Azure rejects a wrong type.
            # Managed identities are service principals (which also spares Azure a directory
            # lookup that can fail right after the identity was created).
            principal_type=principal_type,
            role_definition_id=role(role_id),
            scope=scope,
            description=description,
        )

    container = estate.dataset_container.id
    assignments = []
    for key, cluster in clusters.items():
        # Jobs read the datasets and write outputs with the cluster's identity.
        assignments.append(
            assign(
                f"{key}-cluster-datasets",
                _principal_id(cluster),
                STORAGE_BLOB_DATA_CONTRIBUTOR,
                container,
                authorization.PrincipalType.SERVICE_PRINCIPAL,
                f"{key} cluster reads/writes the dataset container",
            )
        )
        if estate.registry is not None:
            # The admin user is off: clusters pull the training image with their identity.
            assignments.append(
                assign(
                    f"{key}-cluster-acr-pull",
                    _principal_id(cluster),
                    ACR_PULL,
                    estate.registry.id,
                    authorization.PrincipalType.SERVICE_PRINCIPAL,
                    f"{key} cluster pulls images from the workspace registry",
                )
            )

    # The studio previews the datastore with the workspace identity (datastore's
    # serviceDataAccessAuthIdentity); reading is all it needs.
    assignments.append(
        assign(
            "workspace-datasets-reader",
            _principal_id(estate.workspace),
            STORAGE_BLOB_DATA_READER,
            container,
            authorization.PrincipalType.SERVICE_PRINCIPAL,
            "workspace identity previews the dataset container",
        )
    )

    # People upload datasets with their own identity (there are no keys). Listed in config
    # rather than "whoever runs pulumi up", which would move between people and CI.
    for principal, principal_type in cfg.data_contributors.items():
        assignments.append(
            assign(
                f"datasets-contributor-{principal}",
                principal,
                STORAGE_BLOB_DATA_CONTRIBUTOR,
                container,
                principal_type,
                "dataset contributor from stack config",
            )
        )
    return assignments

"""The GPU and CPU compute clusters the training jobs run on."""

import pulumi
from pulumi_azure_native import machinelearningservices as ml

from infra.config import StackConfig


def _cluster(
    resource_name: str,
    cfg: StackConfig,
    workspace: ml.Workspace,
    resource_group_name: pulumi.Input[str],
    *,
    name: str,
    vm_size: str,
    min_nodes: int,
    max_nodes: int,
    priority: str,
    description: str,
) -> ml.Compute:
    # Scales to zero when idle, so an idle estate costs nothing; no public SSH port; a managed
    # identity reads the datasets and pulls images (roles.py), and no local keys.
    return ml.Compute(
        resource_name,
        compute_name=name,
        workspace_name=workspace.name,
        resource_group_name=resource_group_name,
        location=cfg.location,
        identity=ml.ManagedServiceIdentityArgs(type=ml.ManagedServiceIdentityType.SYSTEM_ASSIGNED),
        properties=ml.AmlComputeArgs(
            compute_type="AmlCompute",
            description=description,
            disable_local_auth=True,
            properties=ml.AmlComputePropertiesArgs(
                vm_size=vm_size,
                vm_priority=priority,
                os_type=ml.OsType.LINUX,
                scale_settings=ml.ScaleSettingsArgs(
                    min_node_count=min_nodes,
                    max_node_count=max_nodes,
                    node_idle_time_before_scale_down=cfg.idle_time_before_scale_down,
                ),
                remote_login_port_public_access=ml.RemoteLoginPortPublicAccess.DISABLED,
            ),
        ),
        tags=cfg.resource_tags,
    )


def declare_clusters(
    cfg: StackConfig, workspace: ml.Workspace, resource_group_name: pulumi.Input[str]
) -> dict[str, ml.Compute]:
    gpu = _cluster(
        "gpu-cluster",
        cfg,
        workspace,
        resource_group_name,
        name=cfg.gpu_cluster_name,
        vm_size=cfg.gpu_vm_size,
        min_nodes=cfg.gpu_min_nodes,
        max_nodes=cfg.gpu_max_nodes,
        priority=cfg.gpu_priority,
        description="Training: both arms of a pair run here in parallel.",
    )
    cpu = _cluster(
        "cpu-cluster",
        cfg,
        workspace,
        resource_group_name,
        name=cfg.cpu_cluster_name,
        vm_size=cfg.cpu_vm_size,
        min_nodes=cfg.cpu_min_nodes,
        max_nodes=cfg.cpu_max_nodes,
        priority=cfg.cpu_priority,
        description="Data checks, evaluation and other light jobs.",
    )
    return {"gpu": gpu, "cpu": cpu}

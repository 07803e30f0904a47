"""The CrossGuard policies of the estate, as plain objects so tests can call their `validate`.

They read resource inputs as the engine sends them (camelCase keys, enums as strings) and match
type tokens with or without an API version (`azure-native:storage:StorageAccount` and
`azure-native:storage/v20240101:StorageAccount`). A property left unset fails where Azure's default
is the insecure one (shared keys, public blobs, TLS, SSH); the program always sets them.
"""

import math
import re
from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

STORAGE_ACCOUNT = ("storage", "StorageAccount")
KEY_VAULT = ("keyvault", "Vault")
COMPUTE = ("machinelearningservices", "Compute")
REGISTRY = ("containerregistry", "Registry")
BUDGET = ("consumption", "Budget")


def is_type(resource_type: str, kind: tuple[str, str]) -> bool:
    module, name = kind
    return re.fullmatch(rf"azure-native:{module}(/v[0-9a-z]+)?:{name}", resource_type) is not None


def _get(props: Mapping[str, Any], *path: str) -> Any:
    value: Any = props
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _storage_no_public_blobs(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if (
        is_type(args.resource_type, STORAGE_ACCOUNT)
        and args.props.get("allowBlobPublicAccess") is not False
    ):
        report("allowBlobPublicAccess must be false: no anonymous access to blobs.")


def _storage_tls_https(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_type(args.resource_type, STORAGE_ACCOUNT):
        return
    if args.props.get("minimumTlsVersion") not in ("TLS1_2", "TLS1_3"):
        report(
            f"minimumTlsVersion must be TLS1_2 or newer (is {args.props.get('minimumTlsVersion')!r})."
        )
    if args.props.get("enableHttpsTrafficOnly") is not True:
        report("enableHttpsTrafficOnly must be true: no plain HTTP.")


def _storage_no_shared_key(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if (
        is_type(args.resource_type, STORAGE_ACCOUNT)
        and args.props.get("allowSharedKeyAccess") is not False
    ):
        report("allowSharedKeyAccess must be false: identities (Entra ID) only, no account keys.")


def _key_vault_purge_protection(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_type(args.resource_type, KEY_VAULT):
        return
    if _get(args.props, "properties", "enablePurgeProtection") is not True:
        report("properties.enablePurgeProtection must be true.")
    if _get(args.props, "properties", "enableSoftDelete") is False:
        report("properties.enableSoftDelete must not be false.")


def _key_vault_rbac(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_type(args.resource_type, KEY_VAULT):
        return
    if _get(args.props, "properties", "enableRbacAuthorization") is not True:
        report("properties.enableRbacAuthorization must be true (RBAC, not access policies).")
    if _get(args.props, "properties", "accessPolicies"):
        report("properties.accessPolicies must be empty: grant access with role assignments.")


def _aml_cluster_properties(args: ResourceValidationArgs) -> Mapping[str, Any] | None:
    if not is_type(args.resource_type, COMPUTE):
        return None
    if str(_get(args.props, "properties", "computeType")).lower() != "amlcompute":
        return None  # instances, attached computes: not clusters (the service ignores case)
    return _get(args.props, "properties", "properties") or {}


def _cluster_scales_to_zero(args: ResourceValidationArgs, report: ReportViolation) -> None:
    cluster = _aml_cluster_properties(args)
    if cluster is None:
        return
    low = _get(cluster, "scaleSettings", "minNodeCount") or 0
    if low != 0:
        report(f"scaleSettings.minNodeCount must be 0 so an idle cluster costs nothing (is {low}).")
    idle = _get(cluster, "scaleSettings", "nodeIdleTimeBeforeScaleDown")
    seconds = _iso_seconds(idle)
    if seconds is None or seconds > MAX_IDLE_SECONDS:
        report("scaleSettings.nodeIdleTimeBeforeScaleDown must be an ISO 8601 duration of at most "
               f"a day (e.g. PT15M) so idle nodes are released (is {idle!r}).")


MAX_IDLE_SECONDS = 86_400
_ISO_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")


def _iso_seconds(value: Any) -> float | None:
    """PT15M -> 900.0; None for anything that is not a day-or-shorter style ISO 8601 duration."""
    match = _ISO_DURATION.fullmatch(value) if isinstance(value, str) else None
    if not match or value in ("P", "PT") or value.endswith("T"):
        return None
    days, hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + secs


def _cluster_ssh_disabled(args: ResourceValidationArgs, report: ReportViolation) -> None:
    cluster = _aml_cluster_properties(args)
    if cluster is None:
        return
    access = cluster.get("remoteLoginPortPublicAccess")
    if access != "Disabled":
        # NotSpecified means open on clusters without a virtual network.
        report(f"remoteLoginPortPublicAccess must be Disabled (is {access!r}).")
    if cluster.get("userAccountCredentials"):
        report("userAccountCredentials must not be set: no SSH admin user on the nodes.")


def _registry_admin_disabled(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if is_type(args.resource_type, REGISTRY) and args.props.get("adminUserEnabled"):
        report("adminUserEnabled must be false: pull with managed identities (AcrPull).")


def _budget_exists(args: StackValidationArgs, report: ReportViolation) -> None:
    budgets = [r for r in args.resources if is_type(r.resource_type, BUDGET)]
    if not any(_positive_amount(r.props.get("amount")) for r in budgets):
        report(
            "The stack must declare a consumption budget (azure-native:consumption:Budget) "
            "with a positive, finite amount."
        )


def _positive_amount(amount: Any) -> bool:
    return (isinstance(amount, int | float) and not isinstance(amount, bool)
            and math.isfinite(amount) and amount > 0)


POLICIES = [
    ResourceValidationPolicy(
        name="storage-no-public-blob-access",
        description="Storage accounts allow no anonymous (public) blob access.",
        validate=_storage_no_public_blobs,
    ),
    ResourceValidationPolicy(
        name="storage-tls12-https-only",
        description="Storage accounts accept TLS 1.2 or newer, over HTTPS only.",
        validate=_storage_tls_https,
    ),
    ResourceValidationPolicy(
        name="storage-shared-key-disabled",
        description="Storage accounts accept identities only: shared key access is off.",
        validate=_storage_no_shared_key,
    ),
    ResourceValidationPolicy(
        name="keyvault-purge-protection",
        description="Key vaults have soft delete and purge protection on.",
        validate=_key_vault_purge_protection,
    ),
    ResourceValidationPolicy(
        name="keyvault-rbac-authorization",
        description="Key vaults use RBAC authorization, not access policies.",
        validate=_key_vault_rbac,
    ),
    ResourceValidationPolicy(
        name="aml-cluster-scales-to-zero",
        description="Azure ML compute clusters have 0 minimum nodes and release idle nodes.",
        validate=_cluster_scales_to_zero,
    ),
    ResourceValidationPolicy(
        name="aml-cluster-ssh-disabled",
        description="Azure ML compute clusters have no public SSH port and no admin user.",
        validate=_cluster_ssh_disabled,
    ),
    ResourceValidationPolicy(
        name="registry-admin-user-disabled",
        description="Container registries have the admin user disabled.",
        validate=_registry_admin_disabled,
    ),
    StackValidationPolicy(
        name="budget-exists",
        description="Every stack declares a cost budget.",
        validate=_budget_exists,
    ),
]

# Violations block `pulumi preview`/`up`; a single policy can be relaxed per run with
# `--policy-pack-config` (e.g. {"aml-cluster-scales-to-zero": "advisory"}).
ENFORCEMENT_LEVEL = EnforcementLevel.MANDATORY

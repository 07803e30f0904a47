"""Names for the globally unique resources, derived deterministically from project, stack, suffix.

Azure's rules: storage accounts 3-24 lowercase letters and digits; key vaults 3-24 letters, digits
and hyphens, starting with a letter; container registries 5-50 letters and digits. All three are
global DNS names, so each carries a short suffix (config `nameSuffix`, by default a hash of
subscription/project/stack) to avoid collisions with everyone else's `paired-finetune/dev`. The
subscription, not the Pulumi organization, goes into the hash: moving the stack's state to another
backend must not rename (replace) the storage account.
"""

import hashlib
import re
from dataclasses import dataclass

import pulumi


def _alnum(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def default_suffix(subscription_id: str, project: str, stack: str) -> str:
    return hashlib.sha256(f"{subscription_id}/{project}/{stack}".encode()).hexdigest()[:6]


def storage_account_name(project: str, stack: str, suffix: str) -> str:
    # 2 + 8 + 6 + (at most 8) = 24 characters at most.
    return f"st{_alnum(project)[:8]}{_alnum(stack)[:6]}{suffix}"


def key_vault_name(project: str, stack: str, suffix: str) -> str:
    # Letters and digits only: always valid (starts with "kv", no double hyphens), 24 at most.
    return f"kv{_alnum(project)[:8]}{_alnum(stack)[:6]}{suffix}"


def container_registry_name(project: str, stack: str, suffix: str) -> str:
    return f"cr{_alnum(project)[:20]}{_alnum(stack)[:20]}{suffix}"


@dataclass(frozen=True)
class GlobalNames:
    storage_account: pulumi.Output[str]
    key_vault: pulumi.Output[str]
    container_registry: pulumi.Output[str]


def global_names(
    project: str, stack: str, suffix: str | None, subscription_id: pulumi.Input[str]
) -> GlobalNames:
    """The three names, with the configured suffix or the default one."""
    resolved = (
        pulumi.Output.from_input(suffix)
        if suffix
        else pulumi.Output.from_input(subscription_id).apply(
            lambda sub: default_suffix(sub, project, stack)
        )
    )
    return GlobalNames(
        storage_account=resolved.apply(lambda s: storage_account_name(project, stack, s)),
        key_vault=resolved.apply(lambda s: key_vault_name(project, stack, s)),
        container_registry=resolved.apply(lambda s: container_registry_name(project, stack, s)),
    )

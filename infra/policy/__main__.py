"""The policy pack: `pulumi preview --policy-pack infra/policy` runs this directory.

Pulumi puts this directory on sys.path, so `policies` imports as a sibling module: the pack is
self-contained and can be published on its own (`pulumi policy publish`).
"""

from policies import ENFORCEMENT_LEVEL, POLICIES
from pulumi_policy import PolicyPack

PolicyPack(
    name="paired-finetune-guardrails",
    description="Secure and cost-safe defaults for the paired fine-tuning Azure ML estate.",
    enforcement_level=ENFORCEMENT_LEVEL,
    policies=POLICIES,
)

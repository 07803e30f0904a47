"""Run the Pulumi program under mocks and record what it declares.

`run_program(config)` runs `infra.program.main` (config loading included) with fresh mocks and a
fresh config map, and returns every resource's type token, logical name and inputs (camelCase, as
the engine gets them) plus the resolved stack outputs. Runs are cached per config, since the
program is deterministic for a given config; every run starts from a clean runtime.
"""

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest

PROJECT = "paired-finetune"
STACK = "dev"
SUBSCRIPTION_ID = "00000000-0000-0000-0000-0000000000aa"
TENANT_ID = "00000000-0000-0000-0000-0000000000bb"
DEPLOYER_OBJECT_ID = "00000000-0000-0000-0000-0000000000cc"
CLIENT_ID = "00000000-0000-0000-0000-0000000000dd"

BASE_CONFIG = {
    "azure-native:location": "eastus",
    f"{PROJECT}:budgetContactEmails": ["ml-team@contoso.com"],
}

# Which input carries the resource's own name (what azure-native returns as the `name` output).
NAME_INPUT = {
    "azure-native:resources:ResourceGroup": "resourceGroupName",
    "azure-native:storage:StorageAccount": "accountName",
    "azure-native:storage:BlobContainer": "containerName",
    "azure-native:keyvault:Vault": "vaultName",
    "azure-native:operationalinsights:Workspace": "workspaceName",
    "azure-native:applicationinsights:Component": "resourceName",
    "azure-native:containerregistry:Registry": "registryName",
    "azure-native:machinelearningservices:Workspace": "workspaceName",
    "azure-native:machinelearningservices:Compute": "computeName",
    "azure-native:machinelearningservices:Datastore": "name",
    "azure-native:machinelearningservices:DataVersion": "version",
    "azure-native:machinelearningservices:EnvironmentVersion": "version",
    "azure-native:consumption:Budget": "budgetName",
}


@dataclass
class Recorded:
    type: str
    name: str
    inputs: dict[str, Any]
    id: str
    outputs: dict[str, Any]
    # resource options as the engine gets them: retain_on_delete, protect, delete_before_replace
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    resources: list[Recorded]
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, token: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == token]

    def one(self, token: str) -> Recorded:
        found = self.of_type(token)
        assert len(found) == 1, f"expected one {token}, found {[r.name for r in found]}"
        return found[0]

    def named(self, name: str) -> Recorded:
        (found,) = [r for r in self.resources if r.name == name]
        return found


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers like azure-native would, and records every resource's inputs."""

    def __init__(self) -> None:
        self.resources: list[Recorded] = []
        self.calls: list[str] = []
        self.options: dict[tuple[str, str], dict[str, Any]] = {}  # (type, name) -> options

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        own_name = args.inputs.get(NAME_INPUT.get(args.typ, ""), args.name)
        resource_id = f"/subscriptions/{SUBSCRIPTION_ID}/mock/{args.typ}/{own_name}"
        outputs = {**args.inputs, "name": own_name}
        if "identity" in args.inputs:
            outputs["identity"] = {
                **args.inputs["identity"],
                "principalId": f"principal-{args.name}",
                "tenantId": TENANT_ID,
            }
        options = self.options.get((args.typ, args.name), {})
        self.resources.append(
            Recorded(args.typ, args.name, args.inputs, resource_id, outputs, options))
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append(args.token)
        if args.token == "azure-native:authorization:getClientConfig":
            # A bare dict: the mock monitor iterates the failures of a (result, failures) pair.
            return {
                "clientId": CLIENT_ID,
                "objectId": DEPLOYER_OBJECT_ID,
                "subscriptionId": SUBSCRIPTION_ID,
                "tenantId": TENANT_ID,
            }
        raise AssertionError(f"unexpected invoke {args.token}")


def _as_config_value(value: Any) -> str:
    # The engine hands every config value to the program as a string; objects and lists as JSON.
    return value if isinstance(value, str) else json.dumps(value)


def run(config: dict[str, Any], entry=None, stack: str = STACK) -> Run:
    """Run the program (or `entry`) once under fresh mocks with exactly this config."""
    from infra import program

    mocks = RecordingMocks()
    pulumi.runtime.settings.ROOT.set(None)  # a fresh root stack for every run
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False)
    pulumi.runtime.set_all_config({k: _as_config_value(v) for k, v in config.items()})
    _record_options(pulumi.runtime.settings.SETTINGS.monitor, mocks)
    result = Run(mocks.resources)

    @pulumi.runtime.test
    def _run():
        outputs = (entry or program.main)()
        return pulumi.Output.from_input(outputs or {}).apply(result.outputs.update)

    try:
        _run()
    finally:
        pulumi.runtime.set_all_config({})
    return result


def _record_options(monitor, mocks: RecordingMocks) -> None:
    """`Mocks.new_resource` never sees resource options; the monitor's register request carries
    them (what the engine would act on), so record them from there."""
    register = monitor.RegisterResource

    def recording(request):
        mocks.options[(request.type, request.name)] = {
            "retain_on_delete": bool(request.retainOnDelete),
            "protect": bool(request.protect),
            "delete_before_replace": bool(request.deleteBeforeReplace),
        }
        return register(request)

    monitor.RegisterResource = recording


@functools.cache
def _cached(frozen: str) -> Run:
    return run(json.loads(frozen))


def run_program(**overrides: Any) -> Run:
    """The program with BASE_CONFIG plus `overrides` (keys without the project namespace)."""
    config = {**BASE_CONFIG, **{f"{PROJECT}:{k}": v for k, v in overrides.items()}}
    return _cached(json.dumps(config, sort_keys=True))


@pytest.fixture
def default_run() -> Run:
    return run_program()

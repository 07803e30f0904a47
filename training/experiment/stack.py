"""The Pulumi stack outputs: where the estate is, read into a typed object.

`pulumi stack output --json --show-secrets --stack S` (run in the folder that holds `Pulumi.yaml`),
or the same JSON saved earlier (the deploy workflow's `stack-outputs-<stack>` artifact). Every
problem is a `StackError` whose message says what to do; the CLI turns it into exit 2.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from training.errors import BadInput

PULUMI_TIMEOUT_S = 120
# Azure resource names the outputs carry: letters, digits and the few separators Azure allows.
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.()-]{0,89}$"


class StackError(BadInput):
    """The stack outputs could not be read or are not what the CLI needs."""


class DataAsset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
    version: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v):
        # `pulumi config set dataAssetVersion 2` may come back as a number
        v = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
        if isinstance(v, str) and v.lower() == "latest":
            # the pair id derives from the version: it must name fixed bytes
            raise ValueError("expected a fixed data asset version, not `latest`")
        return v

    @property
    def id(self) -> str:
        return f"azureml:{self.name}:{self.version}"


class StackOutputs(BaseModel):
    """Exactly what `infra/program.py` exports (unknown extra keys are ignored: newer stacks)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    subscription_id: str = Field(pattern=r"^[0-9a-fA-F-]{36}$")
    resource_group: str = Field(pattern=_NAME)
    location: str = Field(pattern=r"^[a-z0-9]+$")
    workspace_name: str = Field(pattern=_NAME)
    gpu_cluster: str = Field(pattern=_NAME)
    cpu_cluster: str = Field(pattern=_NAME)
    datastore: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    data_assets: dict[str, DataAsset]
    training_environment: str | None = Field(
        None, pattern=r"^(azureml:)?[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$")
    # optional: outputs saved before they were exported lack them
    gpu_vm_size: str | None = Field(None, pattern=r"^Standard_[A-Za-z0-9_]{1,60}$")
    cpu_vm_size: str | None = Field(None, pattern=r"^Standard_[A-Za-z0-9_]{1,60}$")

    @field_validator("data_assets")
    @classmethod
    def _arms_present(cls, assets):
        missing = [a for a in ("control", "experiment") if a not in assets]
        if missing:
            raise ValueError(f"no data asset for {', '.join(missing)} (expected keys control, "
                             "experiment and optionally eval)")
        unknown = sorted(set(assets) - {"control", "experiment", "eval"})
        if unknown:
            raise ValueError("unexpected data asset key(s) "
                             + ", ".join(shown(k) for k in unknown))
        return assets

    @property
    def workspace_id(self) -> str:
        return (f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
                f"/providers/Microsoft.MachineLearningServices/workspaces/{self.workspace_name}")

    def cluster(self, compute: str) -> str:
        """`gpu` and `cpu` name the stack's clusters; any other name must be one of them."""
        clusters = {"gpu": self.gpu_cluster, "cpu": self.cpu_cluster}
        if compute in clusters:
            return clusters[compute]
        if compute in clusters.values():
            return compute
        raise StackError(f"azure.compute: {compute!r} is not a cluster of this stack (expected "
                         f"gpu, cpu, {self.gpu_cluster} or {self.cpu_cluster})")


# What each pattern-checked key holds, for people (pydantic would print the regex).
EXPECTED = {
    "subscription_id": "a subscription GUID (8-4-4-4-12 hexadecimal digits)",
    "resource_group": "an Azure resource name (letters, digits, _ . ( ) -)",
    "workspace_name": "an Azure resource name (letters, digits, _ . ( ) -)",
    "gpu_cluster": "a cluster name (letters, digits, _ . ( ) -)",
    "cpu_cluster": "a cluster name (letters, digits, _ . ( ) -)",
    "location": "an Azure region's short name in lower case, e.g. eastus",
    "datastore": "a datastore name (letters, digits and _)",
    "name": "a data asset name (letters, digits, _ . -)",
    "version": "a fixed data asset version (letters, digits, _ . -; not `latest`)",
    "training_environment": "an environment as name:version",
    "gpu_vm_size": "an Azure VM size, e.g. Standard_NC24ads_A100_v4",
    "cpu_vm_size": "an Azure VM size, e.g. Standard_D4s_v3",
}
MAX_OUTPUTS_BYTES = 1_000_000  # `pulumi stack output --json` prints a few KB


def _guid(value: str) -> bool:
    parts = value.split("-")
    return [len(p) for p in parts] == [8, 4, 4, 4, 12] and all(
        c in "0123456789abcdefABCDEF" for c in "".join(parts))


def parse_outputs(data, source: str) -> StackOutputs:
    if not isinstance(data, dict):
        raise StackError(f"{source}: expected a JSON object of stack outputs "
                         "(`pulumi stack output --json`)")
    secret = sorted(k for k, v in _walk(data) if v == "[secret]")
    if secret:
        raise StackError(f"{source}: {', '.join(secret)} shown as [secret]: save the outputs "
                         "with `pulumi stack output --json --show-secrets`")
    if any(isinstance(v, dict) and set(v) >= {"value", "secret"} for v in data.values()):
        raise StackError(f"{source}: values wrapped as {{value, secret}}: that is another format; "
                         "save `pulumi stack output --json --show-secrets`")
    problems = []
    if isinstance(data.get("subscription_id"), str) and not _guid(data["subscription_id"]):
        problems.append(f"  subscription_id: expected {EXPECTED['subscription_id']}, got "
                        f"{shown(data['subscription_id'])}")
    try:
        outputs = StackOutputs.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                msg = "missing (deploy the stack with this repository's infra/: `pulumi up`)"
            elif err["type"] == "string_pattern_mismatch":
                key = str(err["loc"][-1])
                msg = f"expected {EXPECTED.get(key, 'a valid name')}, got {shown(err['input'])}"
            problems.append(f"  {field}: {msg}")
    if problems:
        raise StackError("\n".join([f"{source}: not the stack outputs this CLI expects",
                                    *dict.fromkeys(problems)]))
    return outputs


_SECRET_LIKE = re.compile(r"(key|sig|secret|password|token|pwd)\s*=", re.IGNORECASE)
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9+/_-]{24,}={0,2}|eyJ[A-Za-z0-9_-]+\.")  # base64, a JWT


def shown(value) -> str:
    """A value for an error message, which may end up in a CI log: one that looks like a
    credential (`AccountKey=`, `sig=`, ...) or is long is not printed whole."""
    text = repr(value)
    if _SECRET_LIKE.search(text) or _TOKEN_LIKE.search(text):
        return f"a value of {len(str(value))} characters that looks like a credential (not shown)"
    if len(text) > 40:  # a name is short; a long value may be a key the patterns do not know
        return f"a value of {len(str(value))} characters (not shown)"
    return text


def _walk(data, prefix=""):
    """(dotted key, value) of every leaf of nested mappings."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _walk(value, f"{name}.")
        else:
            yield name, value


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key(s) given twice: {', '.join(twice)}")
    return dict(pairs)


def read_outputs_file(path: str | Path) -> StackOutputs:
    """The saved outputs. A regular file or a pipe with a writer (`<(pulumi stack output ...)`);
    a device, a folder or a huge file is refused before it is read."""
    import os
    import stat

    path = Path(path)
    what = f"{path}: cannot read the stack outputs file"
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise StackError(f"{what} ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise StackError(f"{what} (a folder, not a file)")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise StackError(f"{what} (not a regular file)")
    try:
        # O_NONBLOCK: a FIFO with no writer answers at once instead of hanging
        fd = os.open(path, os.O_RDONLY | (os.O_NONBLOCK if stat.S_ISFIFO(mode) else 0))
        os.set_blocking(fd, True)  # then wait for a writer's data: `<(pulumi stack output ...)`
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_OUTPUTS_BYTES + 1)
    except OSError as e:
        raise StackError(f"{what} ({e.strerror or e})") from None
    if len(raw) > MAX_OUTPUTS_BYTES:
        raise StackError(f"{what} (over {MAX_OUTPUTS_BYTES // 1000} KB: not stack outputs)")
    if not raw.strip():
        raise StackError(f"{path}: empty; expected the output of `pulumi stack output --json "
                         "--show-secrets`")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise StackError(f"{path}: UTF-16 text (PowerShell's `>`); save it as UTF-8, e.g. "
                         "`pulumi stack output --json --show-secrets | Out-File -Encoding utf8 F`")
    try:
        text = raw.decode("utf-8-sig")  # a BOM, as PowerShell's Out-File writes, is fine
    except UnicodeDecodeError:
        raise StackError(f"{path}: not UTF-8 text; expected the JSON that `pulumi stack output "
                         "--json --show-secrets` prints") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise StackError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); expected the output "
                         "of `pulumi stack output --json --show-secrets`") from None
    except ValueError as e:
        raise StackError(f"{path}: {e}") from None
    except RecursionError:
        raise StackError(f"{path}: nested too deeply to be stack outputs") from None
    return parse_outputs(data, str(path))


def read_stack(stack: str, pulumi_dir: str | Path = ".") -> StackOutputs:
    """Ask the Pulumi CLI for the stack's outputs."""
    pulumi_dir = Path(pulumi_dir)
    if not (pulumi_dir / "Pulumi.yaml").is_file():
        raise StackError(f"{pulumi_dir.resolve()}: no Pulumi.yaml here; run from the repository "
                         "root or pass --pulumi-dir")
    exe = shutil.which("pulumi")
    if exe is None:
        raise StackError("the pulumi CLI is not installed (https://www.pulumi.com/docs/install/); "
                         "or pass --outputs-file with the outputs saved by the deploy workflow")
    cmd = [exe, "stack", "output", "--json", "--show-secrets", "--stack", stack,
           "--non-interactive"]
    try:
        done = subprocess.run(cmd, cwd=pulumi_dir, capture_output=True, text=True,
                              timeout=PULUMI_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise StackError(f"`pulumi stack output --stack {stack}` did not answer within "
                         f"{PULUMI_TIMEOUT_S} s (logged in? `pulumi whoami`)") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"exit {done.returncode}"
        hint = ("`pulumi stack ls` lists the stacks; `pulumi login` if you are not logged in"
                if "no stack" in reason.lower() or "not found" in reason.lower()
                else "check `pulumi whoami` and `pulumi stack ls`")
        raise StackError(f"stack {stack!r}: {reason}\n  {hint}")
    try:
        data = json.loads(done.stdout or "null")
    except json.JSONDecodeError:
        raise StackError(f"stack {stack!r}: pulumi printed something that is not JSON") from None
    if data == {}:
        raise StackError(f"stack {stack!r} has no outputs: deploy it first (`pulumi up --stack "
                         f"{stack}`)")
    return parse_outputs(data, f"stack {stack}")


def load_outputs(stack: str | None, outputs_file: str | Path | None,
                 pulumi_dir: str | Path = ".") -> StackOutputs:
    """--stack or --outputs-file, exactly one."""
    if bool(stack) == bool(outputs_file):
        raise StackError("pass exactly one of --stack NAME or --outputs-file FILE")
    if outputs_file:
        return read_outputs_file(outputs_file)
    return read_stack(stack, pulumi_dir)

"""`train data upload`: the experiment's data files to the blobs behind the stack's data assets.

Where each file goes is asked of the workspace, not guessed: the data asset (`control-train:1`)
names a datastore path, the datastore names the storage account and container. The upload uses
the caller's Azure identity (the account accepts no keys) and never overwrites: a data asset
version must name fixed bytes, so a blob that already holds other bytes is refused (register new
data under a new version), one that holds the same bytes is left alone. After an upload the blob
is read back and its sha256 compared with the local file's.

Every blob is checked before the first byte is sent, so a refusal uploads nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from training.errors import BadInput, Failed

# Files up to this size go in one request; larger ones in blocks of BLOCK_BYTES (the SDK's
# defaults; tests make them small to exercise the chunked path).
SINGLE_PUT_BYTES = 64 * 1024 * 1024
BLOCK_BYTES = 8 * 1024 * 1024
CONTENT_TYPE = "application/jsonl"
_DATASTORE_PATH = re.compile(
    r"^azureml://(?:subscriptions/[^/]+/resource[gG]roups/[^/]+/workspaces/[^/]+/)?"
    r"datastores/(?P<datastore>[^/]+)/paths/(?P<path>.+)$")

NEW_DATA_HINT = ("a data asset version names fixed bytes. To register new data: bump "
                 "dataAssetVersion (`pulumi config set dataAssetVersion N`), `pulumi up` (the new "
                 "version gets its own blob path), then `train data upload` again")


class TargetError(BadInput):
    """The stack's data assets cannot be resolved to blobs (bad input: exit 2)."""


class Refused(Failed):
    """A blob holds other bytes than the local file, or did after the upload (exit 1)."""


class NotPermitted(BadInput):
    """The identity may not read or write the container (exit 2, with the fix)."""


@dataclass(frozen=True)
class LocalFile:
    path: Path
    size: int
    md5: bytes
    sha256: str


@dataclass(frozen=True)
class Target:
    role: str  # control | experiment | eval
    asset: str  # name:version
    account_url: str
    container: str
    blob: str

    @property
    def url(self) -> str:
        return f"{self.account_url}/{self.container}/{self.blob}"


def digests(path: Path) -> LocalFile:
    """Size, MD5 (what the blob service stores) and sha256 (what runs log) in one read."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return LocalFile(Path(path), size, md5.digest(), sha.hexdigest())


def parse_datastore_uri(uri: str) -> tuple[str, str]:
    """`azureml://[subscriptions/.../workspaces/W/]datastores/D/paths/P` -> (D, P)."""
    match = _DATASTORE_PATH.match(uri or "")
    if not match:
        raise TargetError(f"{uri!r} is not a datastore path (azureml://datastores/NAME/paths/...)")
    return match["datastore"], match["path"]


def resolve_targets(client, outputs, roles: list[str]) -> dict[str, Target]:
    """Each role's blob: data asset -> datastore path -> account and container (MLClient)."""
    from azure.ai.ml.entities import AzureBlobDatastore
    from azure.core.exceptions import ResourceNotFoundError

    datastores: dict = {}
    targets = {}
    for role in roles:
        asset = outputs.data_assets[role]
        label = f"{asset.name}:{asset.version}"
        try:
            data = client.data.get(asset.name, version=asset.version)
        except ResourceNotFoundError:
            raise TargetError(f"data asset {label} ({role}) is not registered in workspace "
                              f"{outputs.workspace_name}: deploy the stack (`pulumi up`)") from None
        try:
            name, path = parse_datastore_uri(data.path)
        except TargetError as e:
            raise TargetError(f"data asset {label}: {e}; this command uploads to datastore "
                              "paths only") from None
        if name not in datastores:
            try:
                datastores[name] = client.datastores.get(name)
            except ResourceNotFoundError:
                raise TargetError(f"data asset {label} names datastore {name!r}, which workspace "
                                  f"{outputs.workspace_name} does not have") from None
        store = datastores[name]
        if not isinstance(store, AzureBlobDatastore):
            raise TargetError(f"datastore {name} is a {type(store).__name__}, not a blob "
                              "container: this command uploads to blob containers only")
        protocol = getattr(store, "protocol", None) or "https"
        endpoint = getattr(store, "endpoint", None) or "core.windows.net"
        targets[role] = Target(role, label, f"{protocol}://{store.account_name}.blob.{endpoint}",
                               store.container_name, path)
    return targets


def same_blob_for_different_files(targets: dict[str, Target],
                                  files: dict[str, LocalFile]) -> list[str]:
    """Roles whose assets share a blob but whose files differ (a stack misconfiguration)."""
    seen: dict[str, str] = {}
    problems = []
    for role, target in targets.items():
        other = seen.setdefault(target.url, role)
        if other != role and files[other].sha256 != files[role].sha256:
            problems.append(f"{other} and {role} both go to {target.url} but their files differ")
    return problems


class Uploader:
    """Blob clients on the caller's identity; `transport` is for tests."""

    def __init__(self, credential, transport=None):
        self.credential, self.transport = credential, transport
        self._services: dict = {}

    def blob(self, target: Target):
        from azure.storage.blob import BlobServiceClient

        if target.account_url not in self._services:
            kwargs = {"transport": self.transport} if self.transport is not None else {}
            self._services[target.account_url] = BlobServiceClient(
                target.account_url, credential=self.credential,
                max_single_put_size=SINGLE_PUT_BYTES, max_block_size=BLOCK_BYTES, **kwargs)
        return self._services[target.account_url].get_blob_client(target.container, target.blob)

    def state(self, target: Target, local: LocalFile) -> str:
        """`missing`, `same` or `different`: by size, then the stored MD5, else the bytes."""
        from azure.core.exceptions import ResourceNotFoundError

        blob = self.blob(target)
        try:
            props = _permitted(target, lambda: blob.get_blob_properties())
        except ResourceNotFoundError:
            return "missing"
        if props.size != local.size:
            return "different"
        md5 = props.content_settings.content_md5
        if md5:
            return "same" if bytes(md5) == local.md5 else "different"
        return "same" if self.remote_sha256(target) == local.sha256 else "different"

    def remote_sha256(self, target: Target) -> str:
        digest = hashlib.sha256()
        stream = _permitted(target, lambda: self.blob(target).download_blob(max_concurrency=2))
        for chunk in stream.chunks():
            digest.update(chunk)
        return digest.hexdigest()

    def upload(self, target: Target, local: LocalFile) -> None:
        """Create the blob (never overwrite), then check what the service holds."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContentSettings

        settings = ContentSettings(content_type=CONTENT_TYPE, content_md5=bytearray(local.md5))
        try:
            with open(local.path, "rb") as f:
                _permitted(target, lambda: self.blob(target).upload_blob(
                    f, length=local.size, overwrite=False, validate_content=True, max_concurrency=4,
                    content_settings=settings, metadata={"sha256": local.sha256}))
        except ResourceExistsError:  # written by someone else since we looked
            if self.state(target, local) != "same":
                raise Refused(f"{target.url} was written by someone else during the upload, "
                              f"with other bytes than {local.path}; {NEW_DATA_HINT}") from None
        self.verify(target, local)

    def verify(self, target: Target, local: LocalFile) -> None:
        props = _permitted(target, lambda: self.blob(target).get_blob_properties())
        md5 = props.content_settings.content_md5
        remote = self.remote_sha256(target)
        if props.size != local.size or (md5 and bytes(md5) != local.md5) or remote != local.sha256:
            raise Refused(f"{target.url}: after the upload the blob's content (sha256 {remote[:12]}"
                          f", {props.size} bytes) is not {local.path}'s (sha256 "
                          f"{local.sha256[:12]}, {local.size} bytes); the data asset "
                          f"{target.asset} must not be used until this is resolved")


def _permitted(target: Target, call):
    """Run a blob request; a 403 becomes NotPermitted with what to do."""
    from azure.core.exceptions import HttpResponseError

    try:
        return call()
    except HttpResponseError as e:
        if e.status_code != 403:
            raise
        raise NotPermitted(
            f"your identity may not use container {target.container} of "
            f"{target.account_url} ({getattr(e, 'error_code', None) or 'forbidden'}): add your "
            "Entra object id to the stack's dataContributors (`pulumi config set --path "
            "\"dataContributors.$(az ad signed-in-user show --query id -o tsv)\" User`), "
            "`pulumi up`, and wait a few minutes for the role to apply") from None

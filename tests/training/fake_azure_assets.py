"""The fake Azure ML workspace, with its assets: data versions, datastores and models.

`FakeWorkspace` extends `FakeAzureML` (jobs) with the routes `train data upload` and
`train register` need, answered from in-memory stores as the service does: a data version GET
(404 for an unregistered one), a datastore GET, and model containers and versions (PUT a version,
GET one, list them, the container with its next version).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from tests.training.fake_azure import (
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    FakeAzureML,
    _error,
    _response,
)

WS_ID = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
         "Microsoft.MachineLearningServices/workspaces/" + WORKSPACE)
ACCOUNT = "stpairedfinetunedev"
CONTAINER = "training-data"


def long_uri(datastore: str, path: str) -> str:
    """The form the service stores for a data asset's path."""
    return (f"azureml://subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/workspaces/"
            f"{WORKSPACE}/datastores/{datastore}/paths/{path}")


@dataclass
class FakeWorkspace(FakeAzureML):
    data: dict = field(default_factory=dict)  # (name, version) -> data uri
    datastores: dict = field(default_factory=dict)  # name -> (account, container)
    models: dict = field(default_factory=dict)  # name -> {version: body}

    def __post_init__(self):
        super().__post_init__()
        self.routes[:0] = [
            ("GET", r"/data/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", self._get_data),
            ("GET", r"/datastores/(?P<name>[^/]+)$", self._get_datastore),
            ("PUT", r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", self._put_model),
            ("GET", r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", self._get_model),
            ("GET", r"/models/(?P<name>[^/]+)/versions$", self._list_models),
            ("GET", r"/models/(?P<name>[^/]+)$", self._model_container),
        ]

    # -- what tests use
    def register_data(self, name: str, version: str, path: str, datastore="training_data"):
        self.data[(name, version)] = long_uri(datastore, path)

    def add_datastore(self, name="training_data", account=ACCOUNT, container=CONTAINER):
        self.datastores[name] = (account, container)

    def add_job(self, name: str, arm: str, pair_id: str, status="Completed",
                experiment="paired-comments", inputs: dict | None = None, tags: dict | None = None):
        """A job of a pair as the service returns it (submitted earlier)."""
        inputs = inputs or {"train": f"azureml:{arm}-train:1"}
        self.jobs[name] = {
            "id": self._job_id(name), "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/jobs",
            "properties": {
                "jobType": "Command", "status": status, "experimentName": experiment,
                "command": "python -m training.recipe", "environmentId": "azureml:env:1",
                "computeId": "gpu-cluster",
                "tags": {"pair_id": pair_id, "arm": arm, "config_sha256": "c0ffee",
                         "base_model": "meta-llama/Meta-Llama-3-8B",
                         "base_model_revision": "0123456789abcdef", **(tags or {})},
                "inputs": {k: {"jobInputType": "uri_file", "uri": v, "mode": "ReadOnlyMount"}
                           for k, v in inputs.items()},
                "outputs": {"arm_dir": {
                    "jobOutputType": "uri_folder", "mode": "ReadWriteMount",
                    "uri": f"azureml://datastores/training_data/paths/pairs/{pair_id}/{arm}/"}},
            },
            "systemData": {"createdAt": "2026-11-27T10:00:00Z"},
        }

    def model_puts(self) -> list:
        return self.sent("PUT", "/models/")

    # -- handlers
    def _get_data(self, request, match):
        uri = self.data.get((match["name"], match["version"]))
        if uri is None:
            return _response(request, 404, _error("UserError", "data version not found"))
        return _response(request, 200, {
            "id": f"{WS_ID}/data/{match['name']}/versions/{match['version']}",
            "name": match["version"],
            "properties": {"dataType": "uri_file", "dataUri": uri, "isArchived": False}})

    def _get_datastore(self, request, match):
        if match["name"] not in self.datastores:
            return _response(request, 404, _error("UserError", "datastore not found"))
        account, container = self.datastores[match["name"]]
        return _response(request, 200, {
            "id": f"{WS_ID}/datastores/{match['name']}", "name": match["name"],
            "properties": {"datastoreType": "AzureBlob", "accountName": account,
                           "containerName": container, "endpoint": "core.windows.net",
                           "protocol": "https", "credentials": {"credentialsType": "None"},
                           "serviceDataAccessAuthIdentity": "WorkspaceSystemAssignedIdentity"}})

    def _put_model(self, request, match):
        name, version = match["name"], match["version"]
        body = copy.deepcopy(json.loads(request.content))
        body["id"] = f"{WS_ID}/models/{name}/versions/{version}"
        body["name"] = version
        body["properties"].setdefault("flavors", {})
        body["systemData"] = {"createdAt": "2026-11-27T12:00:00Z"}
        created = version not in self.models.get(name, {})
        self.models.setdefault(name, {})[version] = body
        return _response(request, 201 if created else 200, body)

    def _get_model(self, request, match):
        body = self.models.get(match["name"], {}).get(match["version"])
        if body is None:
            return _response(request, 404, _error("UserError", "model version not found"))
        return _response(request, 200, body)

    def _list_models(self, request, match):
        versions = list(self.models.get(match["name"], {}).values())
        versions.sort(key=lambda b: int(b["name"]), reverse=True)  # newest first
        if "$top" in request.url:
            versions = versions[:1]
        return _response(request, 200, {"value": versions})

    def _model_container(self, request, match):
        versions = self.models.get(match["name"])
        if not versions:
            return _response(request, 404, _error("UserError", "model not found"))
        latest = max(int(v) for v in versions)
        return _response(request, 200, {
            "id": f"{WS_ID}/models/{match['name']}", "name": match["name"],
            "properties": {"latestVersion": str(latest), "nextVersion": str(latest + 1)}})

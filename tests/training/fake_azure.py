"""A fake Azure ML at the HTTP boundary: the real `MLClient`, an in-process transport.

`FakeAzureML` is an azure-core `HttpTransport` that answers every request from a route table of
(method, path regex) -> handler and records what was sent. It keeps a small in-memory store of jobs,
so create, get, list and cancel behave like the service: a PUT creates a job, a GET finds it (or
404s), a cancel marks it canceled. Code snapshots are answered as already uploaded, so the SDK never
starts a blob upload (blob uploads bypass the transport). Tests add or override routes to inject
failures, e.g. `fake.fail("PUT", r"/jobs/.*-experiment$", 500)`.
"""

from __future__ import annotations

import base64
import copy
import http.client
import io
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlparse

from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import RestHttpClientTransportResponse

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "rg-paired-finetune-dev"
WORKSPACE = "mlw-paired-finetune-dev"

OUTPUTS = {
    "subscription_id": SUBSCRIPTION,
    "resource_group": RESOURCE_GROUP,
    "location": "eastus",
    "workspace_name": WORKSPACE,
    "gpu_cluster": "gpu-cluster",
    "cpu_cluster": "cpu-cluster",
    "datastore": "training_data",
    "data_assets": {
        "control": {"name": "control-train", "version": "1"},
        "experiment": {"name": "experiment-train", "version": "1"},
        "eval": {"name": "eval", "version": "1"},
    },
    "training_environment": "paired-finetune-train:abc123",
    "gpu_vm_size": "Standard_NC24ads_A100_v4",
    "cpu_vm_size": "Standard_D4s_v3",
}


class FakeCredential:
    """A token credential whose token is JWT-shaped, as the SDK decodes it for some jobs."""

    def get_token(self, *scopes, **kwargs):
        def part(d):
            return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

        claims = {"aud": "https://ml.azure.com", "oid": "11111111-1111-1111-1111-111111111111",
                  "tid": "22222222-2222-2222-2222-222222222222", "exp": int(time.time()) + 3600}
        return AccessToken(f"{part({'alg': 'none'})}.{part(claims)}.sig", claims["exp"])

    def get_token_info(self, *scopes, **kwargs):
        from azure.core.credentials import AccessTokenInfo

        token = self.get_token(*scopes)
        return AccessTokenInfo(token.token, token.expires_on)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    body: dict | None


class _Socket:
    def __init__(self, raw: bytes):
        self._file = io.BytesIO(raw)

    def makefile(self, *args, **kwargs):
        return self._file


class _Response(RestHttpClientTransportResponse):
    """An azure.core.rest response over bytes held in memory; streams them too (cancel streams)."""

    def iter_bytes(self, **kwargs):
        yield self.read()

    def iter_raw(self, **kwargs):
        yield self.read()


def _response(request, status: int, body=None, headers: dict | None = None):
    if isinstance(body, str):  # a blob's text
        payload, content_type = body.encode(), "text/plain"
    else:
        payload, content_type = b"" if body is None else json.dumps(body).encode(), "application/json"
    lines = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Status')}",
             f"Content-Type: {content_type}", f"Content-Length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
    internal = http.client.HTTPResponse(_Socket(raw), method=request.method)
    internal.begin()
    response = _Response(request=request, internal_response=internal)
    response.read()
    return response


def _error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


class InProcessTransport(HttpTransport):
    """An azure-core transport with nothing to open or close: subclasses answer `send`."""

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def open(self):
        pass

    def close(self):
        pass

    def sleep(self, duration):  # azure-core's retry backoff: no real waiting in tests
        pass


@dataclass
class FakeAzureML(InProcessTransport):
    """The route table, the recorded requests and the jobs the fake workspace holds."""

    jobs: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    routes: list = field(default_factory=list)
    code_hashes: list = field(default_factory=list)
    # run history, for `jobs.stream`: job name -> the statuses its details report, in turn, and
    # the text of its rank-0 log
    run_statuses: dict = field(default_factory=dict)
    logs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.routes = [
            ("PUT", r"/jobs/(?P<name>[^/]+)$", self._put_job),
            ("GET", r"/jobs/(?P<name>[^/]+)$", self._get_job),
            ("GET", r"/jobs$", self._list_jobs),
            ("POST", r"/jobs/(?P<name>[^/]+)/cancel$", self._cancel_job),
            ("GET", r"/codes/(?P<name>[^/]+)/versions$", self._code_by_hash),
            ("GET", r"/codes/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", self._code_version),
            ("GET", r"/workspaces/(?P<name>[^/]+)$", self._workspace),
            ("GET", r"/discovery$", self._discovery),
            ("GET", r"/runs/(?P<name>[^/]+)/details$", self._run_details),
            ("GET", r"/logs/(?P<name>[^/]+)/std_log.txt$", self._log_blob),
        ]

    # -- what tests use
    def fail(self, method: str, path_regex: str, status: int, times: int | None = None):
        """Answer matching requests with an error (all of them, or the next `times`)."""
        left = [times]

        def handler(request, match):
            if left[0] is not None:
                left[0] -= 1
                if left[0] == 0:
                    self.routes.remove(route)
            return _response(request, status, _error("InjectedFailure", f"injected {status}"))

        route = (method, path_regex, handler)
        self.routes.insert(0, route)

    def sent(self, method: str | None = None, contains: str = "") -> list[Recorded]:
        return [r for r in self.requests
                if (method is None or r.method == method) and contains in r.path]

    def set_status(self, name: str, status: str) -> None:
        self.jobs[name]["properties"]["status"] = status

    # -- the transport
    def send(self, request, **kwargs):
        url = urlparse(request.url)
        body = None
        if request.content or getattr(request, "data", None):
            raw = request.content if request.content else request.data
            try:
                body = json.loads(raw)
            except (TypeError, ValueError):
                body = None
        self.requests.append(Recorded(request.method, url.path, parse_qs(url.query), body))
        for method, pattern, handler in list(self.routes):
            match = re.search(pattern, url.path)
            if method == request.method and match:
                return handler(request, match)
        return _response(request, 404, _error("NotFound", f"no route for {request.method} {url.path}"))

    # -- handlers
    def _job_id(self, name):
        return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
                f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}/jobs/{name}")

    def _put_job(self, request, match):
        name = match["name"]
        body = copy.deepcopy(json.loads(request.content))
        body["id"], body["name"], body["type"] = self._job_id(name), name, "Microsoft.MachineLearningServices/workspaces/jobs"
        body["properties"]["status"] = "Queued"
        body["properties"]["services"] = {"Studio": {
            "endpoint": f"https://ml.azure.com/runs/{name}?wsid=/subscriptions/{SUBSCRIPTION}/"
                        f"resourcegroups/{RESOURCE_GROUP}/workspaces/{WORKSPACE}",
            "jobServiceType": "Studio"}}
        body["systemData"] = {"createdAt": f"2026-11-27T10:00:{len(self.jobs):02d}Z"}
        created = name not in self.jobs
        self.jobs[name] = body
        return _response(request, 201 if created else 200, body)

    def _get_job(self, request, match):
        job = self.jobs.get(match["name"])
        if job is None:
            return _response(request, 404, _error("UserError", f"job {match['name']} not found"))
        return _response(request, 200, job)

    def _list_jobs(self, request, match):
        return _response(request, 200, {"value": list(self.jobs.values())})

    def _cancel_job(self, request, match):
        job = self.jobs.get(match["name"])
        if job is None:
            return _response(request, 404, _error("UserError", f"job {match['name']} not found"))
        job["properties"]["status"] = "Canceled"
        return _response(request, 202, None, {"Location": request.url.replace("/cancel", ""),
                                              "Retry-After": "0"})

    def _code_asset(self, name, version, digest):
        return {
            "id": f"{self._job_id('x').rsplit('/jobs/', 1)[0]}/codes/{name}/versions/{version}",
            "name": version,
            "properties": {"codeUri": f"https://account.blob.core.windows.net/code/{digest}/",
                           "isAnonymous": True, "hash": digest, "hashVersion": "202208"},
        }

    def _code_by_hash(self, request, match):
        """The snapshot lookup by content hash: always found, so no blob upload follows."""
        digest = parse_qs(urlparse(request.url).query).get("hash", ["0"])[0]
        self.code_hashes.append(digest)
        return _response(request, 200, {"value": [self._code_asset(match["name"], "1", digest)]})

    def _code_version(self, request, match):
        digest = self.code_hashes[-1] if self.code_hashes else "0"
        return _response(request, 200, self._code_asset(match["name"], match["version"], digest))

    def _workspace(self, request, match):
        return _response(request, 200, {
            "id": self._job_id("x").rsplit("/jobs/", 1)[0], "name": match["name"],
            "location": "eastus", "properties": {
                "mlFlowTrackingUri": "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/"
                                     f"{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
                                     f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}",
                "discoveryUrl": "https://eastus.api.azureml.ms/discovery"}})

    def _discovery(self, request, match):
        services = ("api", "catalog", "experimentation", "gallery", "history", "hyperdrive",
                    "labeling", "modelmanagement", "pipelines", "studio")
        return _response(request, 200, {k: "https://eastus.api.azureml.ms" for k in services})

    def _run_details(self, request, match):
        name = match["name"]
        statuses = self.run_statuses.get(name) or [self.jobs[name]["properties"]["status"]]
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return _response(request, 200, {
            "runId": name, "status": status,
            "logFiles": {"user_logs/std_log.txt":
                         f"https://account.blob.core.windows.net/logs/{name}/std_log.txt?sig=x"}})

    def _log_blob(self, request, match):
        return _response(request, 200, self.logs.get(match["name"], ""))

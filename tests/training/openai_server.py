"""A small stand-in for the OpenAI files and fine-tuning endpoints, on 127.0.0.1, for the real
`openai` client (base_url pointed here). It records every request and can be told to fail:
reject an uploaded file, fail a job, refuse a job's creation, or answer 429 with retry-after.

Both URL layouts are served: OpenAI's (`/v1/...`) and Azure OpenAI's (`/openai/...?api-version=`).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

RESULT_CSV = (
    "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,full_valid_loss,"
    "full_valid_mean_token_accuracy\n"
    "1,{a:.4f},0.50,{b:.4f},0.48,,\n"
    "2,{c:.4f},0.60,{d:.4f},0.55,,\n"
    "3,{e:.4f},0.70,{f:.4f},0.62,{g:.4f},0.61\n"
)


@dataclass
class Request:
    method: str
    path: str  # without the /v1 or /openai prefix
    query: dict
    headers: dict
    body: dict | None  # JSON body, or {"purpose", "filename", "bytes"} of an upload
    raw: bytes = b""
    at: float = field(default_factory=time.monotonic)


@dataclass
class FakeOpenAI:
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    jobs: dict[str, dict] = field(default_factory=dict)
    events: dict[str, list] = field(default_factory=dict)
    # failure switches
    reject_files: set[str] = field(default_factory=set)  # substrings of filenames
    fail_create_arms: set[str] = field(default_factory=set)  # metadata arm -> 400 on create
    fail_jobs_arms: set[str] = field(default_factory=set)  # metadata arm -> job fails
    throttle: dict[str, int] = field(default_factory=dict)  # "GET /fine_tuning/jobs/" -> 429s left
    fail: dict[str, int] = field(default_factory=dict)  # regex on "METHOD /path" -> HTTP status
    # regex on "METHOD /path [arm]": handled, then the connection dropped with no answer
    lose_answers: set[str] = field(default_factory=set)
    lose_if: object = None  # or (method, path, arm) -> bool, for an outage that starts mid-way
    retry_after: str = "0.01"
    base64_results: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    _n: int = 0

    def next_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n:04d}"

    def sent(self, method: str | None = None, prefix: str = "") -> list[Request]:
        return [r for r in self.requests
                if (method is None or r.method == method) and r.path.startswith(prefix)]

    # -------------------------------------------------------------------------------- behaviour
    def handle(self, req: Request):
        for key in list(self.throttle):
            if f"{req.method} {req.path}".startswith(key) and self.throttle[key] > 0:
                self.throttle[key] -= 1
                return 429, {"error": {"message": "Rate limit reached", "type": "requests",
                                       "code": "rate_limit_exceeded"}}, {
                    "retry-after": self.retry_after}
        for pattern, status in self.fail.items():
            if re.search(pattern, f"{req.method} {req.path}"):
                return status, {"error": {"message": f"injected {status}",
                                          "type": "server_error"}}, {}
        parts = [p for p in req.path.split("/") if p]
        if parts[:1] == ["files"]:
            return self.files_api(req, parts[1:])
        if parts[:2] == ["fine_tuning", "jobs"]:
            return self.jobs_api(req, parts[2:])
        return 404, {"error": {"message": f"no route {req.method} {req.path}"}}, {}

    def files_api(self, req, rest):
        if req.method == "POST" and not rest:
            fid = self.next_id("file")
            data = req.body["bytes"]
            self.files[fid] = {"id": fid, "object": "file", "bytes": len(data),
                               "created_at": int(time.time()), "filename": req.body["filename"],
                               "purpose": req.body["purpose"], "status": "uploaded",
                               "status_details": None}
            self.contents[fid] = data
            return 200, self.files[fid], {}
        if req.method == "GET" and not rest:
            purpose = req.query.get("purpose", [None])[0]
            data = [f for f in self.files.values() if purpose in (None, f["purpose"])]
            return 200, {"object": "list", "data": data[::-1], "has_more": False}, {}
        if not rest or rest[0] not in self.files:
            return 404, {"error": {"message": "No such File object"}}, {}
        f = self.files[rest[0]]
        if req.method == "GET" and len(rest) == 1:
            if f["status"] == "uploaded":  # processed on the first look
                if any(s in f["filename"] for s in self.reject_files):
                    f["status"] = "error"
                    f["status_details"] = "Invalid file format: line 3 has an unknown role"
                else:
                    f["status"] = "processed"
            return 200, f, {}
        if req.method == "GET" and rest[1:] == ["content"]:
            return 200, self.contents[f["id"]], {"content-type": "application/octet-stream"}
        return 404, {"error": {"message": "no route"}}, {}

    def jobs_api(self, req, rest):
        if req.method == "POST" and not rest:
            body = req.body
            arm = (body.get("metadata") or {}).get("arm")
            if arm in self.fail_create_arms:
                return 400, {"error": {"message": "Quota exceeded for fine-tuning jobs",
                                       "type": "invalid_request_error", "code": "quota"}}, {}
            for key in ("training_file", "validation_file"):
                fid = body.get(key)
                if fid and self.files.get(fid, {}).get("status") != "processed":
                    return 400, {"error": {"message": f"{key} {fid} is not ready"}}, {}
            jid = self.next_id("ftjob")
            hyper = body.get("method", {}).get("supervised", {}).get("hyperparameters", {})
            self.jobs[jid] = {
                "id": jid, "object": "fine_tuning.job", "created_at": int(time.time()) + self._n,
                "error": None, "fine_tuned_model": None, "finished_at": None,
                "hyperparameters": {k: (3 if v == "auto" and k == "n_epochs" else v)
                                    for k, v in hyper.items()},
                "model": body["model"], "organization_id": "org-test", "result_files": [],
                "seed": body.get("seed", 0), "status": "validating_files", "trained_tokens": None,
                "training_file": body["training_file"],
                "validation_file": body.get("validation_file"),
                "metadata": body.get("metadata"), "method": body.get("method"),
                "suffix": body.get("suffix"),
            }
            self.events[jid] = []
            self.event(jid, "info", f"Created fine-tuning job: {jid}")
            return 200, self.jobs[jid], {}
        if req.method == "GET" and not rest:
            want = {k[len("metadata["):-1]: v[0] for k, v in req.query.items()
                    if k.startswith("metadata[")}
            data = [j for j in self.jobs.values()
                    if all((j.get("metadata") or {}).get(k) == v for k, v in want.items())]
            data.sort(key=lambda j: j["created_at"], reverse=True)
            return 200, {"object": "list", "data": data, "has_more": False}, {}
        if not rest or rest[0] not in self.jobs:
            return 404, {"error": {"message": "No such job"}}, {}
        job = self.jobs[rest[0]]
        if req.method == "GET" and len(rest) == 1:
            self.advance(job)
            return 200, job, {}
        if req.method == "POST" and rest[1:] == ["cancel"]:
            if job["status"] not in ("succeeded", "failed", "cancelled"):
                job["status"] = "cancelled"
                self.event(job["id"], "info", "Fine-tuning job cancelled")
            return 200, job, {}
        if req.method == "GET" and rest[1:] == ["events"]:
            data = list(reversed(self.events[job["id"]]))  # newest first
            limit = int(req.query.get("limit", ["20"])[0])
            return 200, {"object": "list", "data": data[:limit], "has_more": False}, {}
        if req.method == "GET" and rest[1:] == ["checkpoints"]:
            return 200, {"object": "list", "data": [], "has_more": False}, {}
        return 404, {"error": {"message": "no route"}}, {}

    def event(self, jid, level, message):
        n = len(self.events[jid]) + 1
        self.events[jid].append({"id": f"{jid}-ev{n}", "object": "fine_tuning.job.event",
                                 "created_at": int(time.time()), "level": level,
                                 "message": message, "type": "message"})

    def advance(self, job):
        """Each look moves a job on: validating_files -> running -> succeeded (or failed)."""
        arm = (job.get("metadata") or {}).get("arm")
        if job["status"] == "validating_files":
            job["status"] = "running"
            self.event(job["id"], "info", "Fine-tuning job started")
        elif job["status"] == "running":
            job["finished_at"] = int(time.time())
            if arm in self.fail_jobs_arms:
                job["status"] = "failed"
                job["error"] = {"code": "invalid_training_file", "param": "training_file",
                                "message": "The job failed due to an internal error."}
                self.event(job["id"], "error", "Fine-tuning job failed")
                return
            job["status"] = "succeeded"
            job["fine_tuned_model"] = f"ft:{job['model']}:org-test:{job['suffix']}:{job['id'][-4:]}"
            job["trained_tokens"] = 12345
            shift = 0.1 if arm == "experiment" else 0.0
            losses = [2.0, 1.9, 1.5, 1.6, 1.2, 1.4, 1.3]
            csv = RESULT_CSV.format(**{k: v - shift for k, v in zip("abcdefg", losses, strict=True)})
            data = csv.encode()
            if self.base64_results:
                data = base64.b64encode(data)
            fid = self.next_id("file")
            self.files[fid] = {"id": fid, "object": "file", "bytes": len(data),
                               "created_at": int(time.time()), "filename": "step_metrics.csv",
                               "purpose": "fine-tune-results", "status": "processed",
                               "status_details": None}
            self.contents[fid] = data
            job["result_files"] = [fid]
            self.event(job["id"], "info", "Step 3/3: training loss=1.2")
            self.event(job["id"], "info", "The job has successfully completed")


def _read_body(handler) -> bytes:
    if handler.headers.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(handler.rfile.readline().strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return out
            out += handler.rfile.read(size)
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("content-length") or 0))


def _multipart(content_type: str, raw: bytes) -> dict:
    msg = BytesParser(policy=email_policy).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename():
            out["filename"], out["bytes"] = part.get_filename(), part.get_payload(decode=True)
        else:
            out[name] = part.get_payload(decode=True).decode()
    return out


def start(fake: FakeOpenAI):
    """Serve `fake` on 127.0.0.1 (a free port) in a daemon thread; returns the server."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _serve(self):
            raw = _read_body(self)
            split = urlsplit(self.path)
            path = split.path
            for prefix in ("/openai/v1", "/openai", "/v1"):
                if path.startswith(prefix + "/"):
                    path = path[len(prefix):]
                    break
            ctype = self.headers.get("content-type", "")
            if ctype.startswith("multipart/"):
                body = _multipart(ctype, raw)
            else:
                body = json.loads(raw) if raw else None
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = Request(self.command, path, parse_qs(split.query), headers, body, raw)
            with fake.lock:
                fake.requests.append(req)
                status, payload, headers = fake.handle(req)
            arm = ((body or {}).get("metadata") or {}).get("arm") if isinstance(body, dict) else None
            if any(re.search(p, f"{req.method} {path} {arm}") for p in fake.lose_answers) or (
                    fake.lose_if is not None and fake.lose_if(req.method, path, arm)):
                self.close_connection = True
                return  # handled, but no answer: as a timeout or a reset after the request
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            headers = {"content-type": "application/json", **headers}
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server

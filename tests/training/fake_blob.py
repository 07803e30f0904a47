"""A fake Azure Blob Storage at the HTTP boundary: the real `azure-storage-blob` client, in process.

`FakeBlobStorage` is an azure-core `HttpTransport` that `BlobServiceClient(..., transport=fake)`
sends every request to. It keeps blobs in memory, keyed by (account, container, path), and
answers the few operations an upload needs as the service does: Get Blob Properties (HEAD), Put
Blob (single shot, `If-None-Match: *` honoured, `Content-MD5` checked, an MD5 stored as the
service computes it), Put Block / Put Block List (chunked uploads: no MD5 stored unless the
client sets `x-ms-blob-content-md5`), and Get Blob with `x-ms-range`. Every request is recorded.
`corrupt_next_put` stores other bytes than were sent once, to prove that the upload's check after
the fact can fail.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qs, unquote, urlparse
from xml.etree import ElementTree

from tests.training.fake_azure import InProcessTransport, _Response, _Socket


@dataclass
class BlobRequest:
    method: str
    account: str
    container: str
    path: str
    query: dict
    headers: dict


@dataclass
class StoredBlob:
    data: bytes
    md5: bytes | None
    metadata: dict
    etag: str


def _blob_response(request, status: int, body: bytes = b"", headers: dict | None = None):
    lines = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Status')}",
             f"Content-Length: {len(body)}", "x-ms-version: 2023-11-03",
             f"Date: {formatdate(usegmt=True)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    internal = http.client.HTTPResponse(_Socket(raw), method=request.method)
    internal.begin()
    response = _Response(request=request, internal_response=internal)
    response.read()
    # what a real transport's response streams a download with
    response._stream_download_generator = lambda pipeline, resp, **kw: _Stream(resp)
    return response


class _Stream:
    """A download stream of one chunk; the storage SDK sets attributes on it."""

    def __init__(self, response):
        self.response, self._chunks = response, iter([response.read()])

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._chunks)


def _error(request, status: int, code: str, message: str = ""):
    body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>{message or code}</Message></Error>").encode()
    headers = {"x-ms-error-code": code, "Content-Type": "application/xml"}
    # a HEAD answer has no body, only the error code header
    return _blob_response(request, status, b"" if request.method == "HEAD" else body, headers)


@dataclass
class FakeBlobStorage(InProcessTransport):
    blobs: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    staged: dict = field(default_factory=dict)
    corrupt_next_put: bool = False
    forbid_writes: bool = False
    _etag: int = 0

    # -- what tests use
    def put(self, account: str, container: str, path: str, data: bytes, md5: bool = True):
        """A blob that is already there (uploaded earlier, or by another tool)."""
        self._etag += 1
        self.blobs[(account, container, path)] = StoredBlob(
            data, hashlib.md5(data).digest() if md5 else None, {}, f'"0x{self._etag:X}"')

    def data(self, account: str, container: str, path: str) -> bytes:
        return self.blobs[(account, container, path)].data

    def sent(self, method: str | None = None) -> list[BlobRequest]:
        return [r for r in self.requests if method is None or r.method == method]

    # -- the transport
    def send(self, request, **kwargs):
        url = urlparse(request.url)
        account = url.hostname.split(".", 1)[0]
        container, _, path = unquote(url.path).lstrip("/").partition("/")
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(BlobRequest(request.method, account, container, path, query, headers))
        key = (account, container, path)
        body = request.body if getattr(request, "body", None) is not None else b""
        if isinstance(body, str):
            body = body.encode()
        if request.method == "HEAD":
            return self._properties(request, key)
        if request.method == "GET":
            return self._download(request, key, headers)
        if request.method == "PUT":
            if self.forbid_writes:
                return _error(request, 403, "AuthorizationPermissionMismatch",
                              "This request is not authorized to perform this operation using "
                              "this permission.")
            if query.get("comp") == "block":
                return self._put_block(request, key, query["blockid"], bytes(body), headers)
            if query.get("comp") == "blocklist":
                return self._put_block_list(request, key, bytes(body), headers)
            return self._put_blob(request, key, bytes(body), headers)
        return _error(request, 400, "UnsupportedHttpVerb")

    # -- operations
    def _headers(self, blob: StoredBlob) -> dict:
        headers = {"ETag": blob.etag, "Last-Modified": formatdate(usegmt=True),
                   "x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream",
                   "x-ms-creation-time": formatdate(usegmt=True)}
        if blob.md5 is not None:
            headers["Content-MD5"] = base64.b64encode(blob.md5).decode()
        headers.update({f"x-ms-meta-{k}": v for k, v in blob.metadata.items()})
        return headers

    def _properties(self, request, key):
        blob = self.blobs.get(key)
        if blob is None:
            return _error(request, 404, "BlobNotFound")
        # HEAD: the blob's length and headers, no body
        lines = ["HTTP/1.1 200 OK", f"Content-Length: {len(blob.data)}",
                 "x-ms-version: 2023-11-03"]
        lines += [f"{k}: {v}" for k, v in self._headers(blob).items()]
        internal = http.client.HTTPResponse(_Socket(("\r\n".join(lines) + "\r\n\r\n").encode()),
                                            method="HEAD")
        internal.begin()
        response = _Response(request=request, internal_response=internal)
        response.read()
        return response

    def _download(self, request, key, headers):
        blob = self.blobs.get(key)
        if blob is None:
            return _error(request, 404, "BlobNotFound")
        size = len(blob.data)
        wanted = headers.get("x-ms-range") or headers.get("range")
        out = self._headers(blob)
        if not wanted:
            return _blob_response(request, 200, blob.data, out)
        start, end = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", wanted).groups())
        if start >= size:
            return _error(request, 416, "InvalidRange")
        end = min(end, size - 1)
        out["Content-Range"] = f"bytes {start}-{end}/{size}"
        out.pop("Content-MD5", None)  # a range carries the blob's MD5 only when asked for
        if blob.md5 is not None:
            out["x-ms-blob-content-md5"] = base64.b64encode(blob.md5).decode()
        return _blob_response(request, 206, blob.data[start:end + 1], out)

    def _check_md5(self, request, body: bytes, headers):
        sent = headers.get("content-md5")
        if sent and base64.b64decode(sent) != hashlib.md5(body).digest():
            return _error(request, 400, "Md5Mismatch", "The MD5 value specified in the request "
                                                       "did not match with the MD5 value "
                                                       "calculated by the server.")
        return None

    def _store(self, request, key, data: bytes, md5: bytes | None, headers, sent: bytes):
        if headers.get("if-none-match") == "*" and key in self.blobs:
            return _error(request, 409, "BlobAlreadyExists",
                          "The specified blob already exists.")
        if self.corrupt_next_put:
            self.corrupt_next_put = False
            data = data[:-1] + bytes([data[-1] ^ 1])
        self._etag += 1
        metadata = {k.removeprefix("x-ms-meta-"): v for k, v in headers.items()
                    if k.startswith("x-ms-meta-")}
        blob = StoredBlob(data, md5, metadata, f'"0x{self._etag:X}"')
        self.blobs[key] = blob
        # Content-MD5 of the answer is the request content's (the block list for a commit): the
        # client checks it with validate_content
        out = {"ETag": blob.etag, "Last-Modified": formatdate(usegmt=True),
               "x-ms-request-server-encrypted": "true",
               "Content-MD5": base64.b64encode(hashlib.md5(sent).digest()).decode()}
        return _blob_response(request, 201, b"", out)

    def _put_blob(self, request, key, body: bytes, headers):
        if bad := self._check_md5(request, body, headers):
            return bad
        stated = headers.get("x-ms-blob-content-md5")
        # the service stores the stated MD5, else computes one for a single-shot Put Blob
        md5 = base64.b64decode(stated) if stated else hashlib.md5(body).digest()
        return self._store(request, key, body, md5, headers, body)

    def _put_block(self, request, key, block_id: str, body: bytes, headers):
        if bad := self._check_md5(request, body, headers):
            return bad
        self.staged[(key, block_id)] = body
        return _blob_response(request, 201, b"", {
            "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()})

    def _put_block_list(self, request, key, body: bytes, headers):
        ids = [el.text for el in ElementTree.fromstring(body)]
        try:
            data = b"".join(self.staged[(key, block_id)] for block_id in ids)
        except KeyError:
            return _error(request, 400, "InvalidBlockList")
        stated = headers.get("x-ms-blob-content-md5")
        # the service computes no MD5 for a committed block list: only a stated one is stored
        md5 = base64.b64decode(stated) if stated else None
        return self._store(request, key, data, md5, headers, body)

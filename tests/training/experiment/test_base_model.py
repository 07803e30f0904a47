"""Pinning the base model (issue: one base model for both arms). The hub is faked at its HTTP
boundary: huggingface_hub's own client gets an httpx MockTransport, so the real request building,
error mapping and response parsing run, and no socket is opened."""

import json
import shutil
import time
import typing

import pytest

from training.experiment import base_model
from training.experiment.base_model import BaseModelError, fingerprint, pin, resolve
from training.experiment.config import parse_config

SHA = "0123456789abcdef0123456789abcdef01234567"
OLD = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake hub: `hub.routes[path] = (status, json, headers)`; `hub.requests` records what was
    asked, with the Authorization header."""
    import httpx2
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils import _http

    class Hub:
        routes: typing.ClassVar[dict] = {}
        requests: typing.ClassVar[list] = []

    def handler(request):
        Hub.requests.append((request.url.path, request.headers.get("authorization")))
        status, body, headers = Hub.routes.get(request.url.path, (404, {"error": "x"}, {}))
        return httpx2.Response(status, json=body, headers=headers)

    def client():
        return httpx2.Client(transport=httpx2.MockTransport(handler),
                             event_hooks={"request": [_http.hf_request_event_hook]})

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(base_model, "_saved_token", lambda: None)
    Hub.routes, Hub.requests = {}, []
    set_client_factory(client)
    yield Hub
    set_client_factory(_http.default_client_factory)


def info(sha=SHA, gated=False):
    return (200, {"id": "org/model", "sha": sha, "gated": gated, "private": False}, {})


def cache_snapshot(tmp_path, repo, sha, ref="main"):
    root = tmp_path / "hub-cache" / f"models--{repo.replace('/', '--')}"
    (root / "snapshots" / sha).mkdir(parents=True)
    (root / "snapshots" / sha / "config.json").write_text("{}")
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text(sha)


def cfg_for(model, revision=None):
    data = {"name": "p", "base_model": model, "training": {"max_steps": 1},
            "arms": {"control": {"train": "c.jsonl"}, "experiment": {"train": "e.jsonl"}}}
    if revision:
        data["base_model_revision"] = revision
    return parse_config(data)


# ----------------------------------------------------------------------------- local folders
def test_fingerprint_changes_when_a_weight_file_changes(tiny_model_path, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    before = fingerprint(folder)
    assert before.startswith("sha256:") and fingerprint(folder) == before  # stable
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte of one tensor flipped
    weights.write_bytes(bytes(data))
    assert fingerprint(folder) != before
    # and the config, the tokenizer, a new weight shard
    for change in (lambda: (folder / "config.json").write_text("{}"),
                   lambda: (folder / "tokenizer.json").write_text("{}"),
                   lambda: (folder / "extra.safetensors").write_bytes(b"x")):
        now = fingerprint(folder)
        change()
        assert fingerprint(folder) != now
    now = fingerprint(folder)
    (folder / "README.md").write_text("notes")  # not part of the model
    assert fingerprint(folder) == now


def test_large_weight_files_are_sampled_but_a_rewrite_still_shows(tmp_path, monkeypatch):
    monkeypatch.setattr(base_model, "_FULL_HASH_BYTES", 1024)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\0" * 4096)
    before = fingerprint(folder)
    time.sleep(0.01)
    weights.write_bytes(b"\0" * 4096)  # same bytes rewritten: modification time differs
    assert fingerprint(folder) != before


def test_a_local_folder_is_pinned_and_checked(tiny_model_path, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    cfg, pinned = pin(cfg_for(str(folder)))
    assert pinned.kind == "local" and cfg.base_model_revision == fingerprint(folder)
    assert base_model.load_reference(cfg) == (str(folder), None)
    (folder / "config.json").write_text('{"changed": true}')  # between pinning and an arm
    with pytest.raises(BaseModelError, match="its files changed since base_model_revision"):
        base_model.load_reference(cfg)
    with pytest.raises(BaseModelError, match="its files changed"):
        pin(cfg)  # an explicit revision that no longer matches


@pytest.mark.parametrize(("setup", "message"), [
    (lambda d: None, "no such folder"),
    (lambda d: d.mkdir(), "no config.json: not a model folder"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}")), "no weight files"),
])
def test_a_folder_that_is_not_a_model(tmp_path, setup, message):
    folder = tmp_path / "m"
    setup(folder)
    with pytest.raises(BaseModelError, match=message):
        resolve(str(folder))


def test_tiny_llama_is_pinned_to_its_build(tiny_model_path):
    pinned = resolve("tiny-llama")
    assert pinned.kind == "tiny-llama" and pinned.revision == fingerprint(tiny_model_path)


# ----------------------------------------------------------------------------- the hub
def test_a_hub_id_is_pinned_to_the_commit_the_hub_names(hub, monkeypatch):
    hub.routes["/api/models/org/model"] = info()
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    cfg, pinned = pin(cfg_for("org/model"))
    assert cfg.base_model_revision == SHA and pinned.source == "hub"
    assert base_model.load_reference(cfg) == ("org/model", SHA)
    _, auth = next(r for r in hub.requests if r[0] == "/api/models/org/model")
    assert auth == "Bearer hf_secret"  # HF_TOKEN honoured (gated models)


def test_an_explicit_revision_wins_and_is_checked(hub):
    hub.routes[f"/api/models/org/model/revision/{OLD}"] = info(sha=OLD)
    hub.routes["/api/models/org/model/revision/v1.0"] = info(sha=OLD)
    assert pin(cfg_for("org/model", OLD))[0].base_model_revision == OLD
    assert pin(cfg_for("org/model", "v1.0"))[0].base_model_revision == OLD  # a tag -> its commit
    hub.routes["/api/models/org/model/revision/nope"] = (
        404, {"error": "Invalid rev id: nope"}, {"X-Error-Code": "RevisionNotFound"})
    with pytest.raises(BaseModelError, match="base_model_revision 'nope' does not exist there"):
        pin(cfg_for("org/model", "nope"))


def test_a_gated_model_without_a_token_says_so(hub):
    hub.routes["/api/models/meta-llama/Meta-Llama-3-8B"] = info(gated="manual")
    hub.routes[f"/meta-llama/Meta-Llama-3-8B/resolve/{SHA}/config.json"] = (
        401, {"error": "gated"}, {"X-Error-Code": "GatedRepo"})
    with pytest.raises(BaseModelError) as err:
        pin(cfg_for("meta-llama/Meta-Llama-3-8B"))
    assert str(err.value).startswith(
        "base_model meta-llama/Meta-Llama-3-8B: it is gated and no token is set: accept the "
        "licence at https://huggingface.co/meta-llama/Meta-Llama-3-8B and set HF_TOKEN")


def test_an_unknown_model(hub):
    hub.routes["/api/models/org/typo"] = (404, {"error": "nope"}, {"X-Error-Code": "RepoNotFound"})
    with pytest.raises(BaseModelError, match="no such model on the hub"):
        pin(cfg_for("org/typo"))


def test_an_unreachable_hub_fails_at_once_with_how_to_work_offline(hub, monkeypatch):
    import httpx2

    def refuse(request):
        raise httpx2.ConnectError("[Errno 111] Connection refused")

    from huggingface_hub import set_client_factory

    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(refuse)))
    started = time.monotonic()
    with pytest.raises(BaseModelError) as err:
        pin(cfg_for("org/model"))
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("base_model org/model: cannot reach the Hugging Face hub "
                              "(ConnectError: [Errno 111] Connection refused) and it is not in "
                              "the local cache; to work offline, download it once")
    assert "HF_HUB_OFFLINE=1" in message


def test_unreachable_hub_falls_back_to_the_cached_commit(hub, tmp_path, monkeypatch):
    import httpx2
    from huggingface_hub import constants, set_client_factory

    def refuse(request):
        raise httpx2.ConnectError("no route to host")

    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(refuse)))
    cache_snapshot(tmp_path, "org/model", OLD)
    notes = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cfg, pinned = pin(cfg_for("org/model"), on_note=notes.append)
    assert cfg.base_model_revision == OLD and pinned.source == "local cache (hub unreachable)"
    assert notes and "using the cached commit" in notes[0]
    assert constants.HF_HUB_OFFLINE is True  # no more attempts in this process or the arms


def test_offline_uses_the_cache_and_fails_when_it_is_empty(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError) as err:
        pin(cfg_for("org/model"))
    assert "HF_HUB_OFFLINE is set and it is not in the local cache" in str(err.value)
    assert "hf download org/model" in str(err.value)
    cache_snapshot(tmp_path, "org/model", OLD)
    assert pin(cfg_for("org/model"))[0].base_model_revision == OLD
    with pytest.raises(BaseModelError, match=f"revision '{SHA}' of org/model: HF_HUB_OFFLINE"):
        pin(cfg_for("org/model", SHA))  # pinned to a commit the cache does not have
    assert hub.requests == []  # offline means offline


def test_the_revision_is_part_of_the_pair_id(hub):
    from training.local.backend import pair_id_for

    hub.routes["/api/models/org/model"] = info(sha=SHA)
    first = pin(cfg_for("org/model"))[0]
    hub.routes["/api/models/org/model"] = info(sha=OLD)  # upstream moved on
    second = pin(cfg_for("org/model"))[0]
    hashes = {"control": "c", "experiment": "e"}
    assert pair_id_for(first, hashes) != pair_id_for(second, hashes)


# ----------------------------------------------------------------------------- both arms, for real
@pytest.fixture
def local_hub(tmp_path):
    """A hub on 127.0.0.1 (HF_ENDPOINT) that knows one model, org/tiny, whose main is at SHA; it
    records every request. Its file downloads come from the cache (a commit sha is looked up there
    first), so the server answers only the API."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            seen.append(f"{self.command} {self.path}")
            if "/tree/" in self.path:
                status, body = 200, []
            elif self.path.split("?")[0] in ("/api/models/org/tiny",
                                             f"/api/models/org/tiny/revision/{SHA}"):
                status, body = 200, {"id": "org/tiny", "sha": SHA, "gated": False}
            else:
                status, body = 404, {"error": "not here"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 404:
                self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


@pytest.mark.slow
def test_both_arms_load_the_pinned_commit(tmp_path, tiny_model_path, tracking_env, local_hub):
    import subprocess
    import sys

    import mlflow

    from tests.training.pairs import REPO, write_experiment

    endpoint, seen = local_hub
    # The cache holds the pinned commit (the tiny Llama) and a stale `main` that is broken:
    # an arm that loaded without revision= would take it and fail.
    repo = tmp_path / "hf" / "hub" / "models--org--tiny"
    shutil.copytree(tiny_model_path, repo / "snapshots" / SHA)
    (repo / "snapshots" / OLD).mkdir(parents=True)
    (repo / "snapshots" / OLD / "config.json").write_text("{broken")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(OLD)
    cfg = write_experiment(tmp_path, max_steps=2, eval_every=2, save_every=2)
    cfg.write_text(cfg.read_text().replace("base_model: tiny-llama", "base_model: org/tiny"))
    env = {**tracking_env, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    proc = subprocess.run([sys.executable, "-m", "training.cli", "run", "--config", str(cfg),
                           "--output-dir", str(tmp_path / "runs"), "--pair-id", "hub"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"base model: org/tiny @ {SHA[:19]} (hub)" in proc.stderr
    assert json.loads((tmp_path / "runs" / "hub" / "pair.json").read_text())[
        "base_model_revision"] == SHA
    assert any(r.startswith("GET /api/models/org/tiny") for r in seen)  # asked once, up front
    for request in seen:  # every later request names the pinned commit, never a branch
        assert "/main" not in request and OLD not in request, request
    client = mlflow.MlflowClient(tracking_env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("test-pair").experiment_id],
                              "tags.pair_id = 'hub'")
    assert sorted(r.data.tags["arm"] for r in runs) == ["control", "experiment"]
    for run in runs:
        assert run.data.params["base_model_revision"] == SHA
        assert run.data.tags["base_model_revision"] == SHA


def test_a_token_the_hub_refuses_is_not_hidden_by_the_cache(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_expired")
    hub.routes["/api/models/org/model"] = (401, {"error": "Invalid credentials in Authorization "
                                                          "header"}, {})
    cache_snapshot(tmp_path, "org/model", OLD)
    with pytest.raises(BaseModelError, match=r"the hub refused the token \(401: .*check HF_TOKEN"):
        pin(cfg_for("org/model"))

"""One base model for both arms: pin it once, before any arm starts, and load exactly that.

`pin(cfg)` (called by `train run`, `train data validate --config`, and `train submit` before it
builds the jobs) returns the config with `base_model_revision` set:

- a hub id: the commit sha from the hub's model info (`HF_TOKEN` is honoured, for gated models such
  as Llama-3); offline (`HF_HUB_OFFLINE=1`) or with the hub unreachable, the commit of the locally
  cached snapshot. An explicit `base_model_revision` (commit, branch or tag) wins and is checked.
- a local folder: `fingerprint(folder)`, a hash of its config, tokenizer and weight files;
- `tiny-llama`: the fingerprint of its build.

The arms read the pinned config: `load_reference(cfg)` gives what `from_pretrained` loads and the
`revision=` for it, and for a folder checks that the fingerprint still matches. The revision is part
of the config's hash, hence of the pair id: a new upstream commit makes a new pair, never a mix.
When nothing can be pinned, `BaseModelError` (a `ConfigError`: exit 2) says which case it is and
how to fix it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from training.experiment.config import ConfigError, ExperimentConfig
from training.experiment.models import TINY_LLAMA

FINGERPRINT_PREFIX = "sha256:"
HUB_TIMEOUT_S = 5.0  # one try: an unreachable hub fails in seconds, not after minutes of retries

_CONFIG_FILES = ("config.json", "generation_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "merges.txt", "chat_template.jinja", "chat_template.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
_FULL_HASH_BYTES = 64 << 20  # weight files up to this size are hashed whole
_SAMPLE_BYTES = 1 << 20  # larger ones: first and last MiB (safetensors header), size and mtime


class BaseModelError(ConfigError):
    """The base model cannot be pinned: the message says why and how to fix it."""


@dataclass(frozen=True)
class Pinned:
    base_model: str  # as in the config: tiny-llama, a hub id, or an absolute folder
    kind: str  # "hub" | "local" | "tiny-llama"
    revision: str  # commit sha (hub) or "sha256:..." fingerprint (folder, tiny-llama)
    source: str  # how it was pinned, for people: "hub", "explicit", "local cache", ...


def kind_of(base_model: str) -> str:
    if base_model == TINY_LLAMA:
        return "tiny-llama"
    return "local" if os.path.isabs(os.path.expanduser(base_model)) else "hub"


def pin(cfg: ExperimentConfig, *, timeout: float = HUB_TIMEOUT_S,
        on_note=None) -> tuple[ExperimentConfig, Pinned]:
    """The config with its base model pinned (`base_model_revision` set), and how it was.

    Raises BaseModelError. `on_note(text)` hears about a fallback (e.g. the cache was used
    because the hub could not be reached)."""
    pinned = resolve(cfg.base_model, cfg.base_model_revision, timeout=timeout, on_note=on_note)
    return cfg.model_copy(update={"base_model_revision": pinned.revision}), pinned


def resolve(base_model: str, revision: str | None = None, *, timeout: float = HUB_TIMEOUT_S,
            on_note=None) -> Pinned:
    kind = kind_of(base_model)
    if kind == "hub":
        sha, source = _hub_commit(base_model, revision, timeout, on_note or (lambda text: None))
        return Pinned(base_model, kind, sha, source)
    if kind == "tiny-llama":
        from training.experiment.models import ensure_tiny_llama

        folder = ensure_tiny_llama()
    else:
        folder = Path(os.path.expanduser(base_model))
    found = fingerprint(folder)
    if revision is not None and revision != found:
        raise BaseModelError(
            f"base_model {base_model}: its files changed since base_model_revision {revision} "
            f"was recorded (now {found}): restore them, or set base_model_revision to the new "
            "fingerprint (a new pair)")
    return Pinned(base_model, kind, found, "explicit" if revision else "fingerprint")


def load_reference(cfg: ExperimentConfig) -> tuple[str, str | None]:
    """(what from_pretrained loads, its revision=) for an arm, from the pinned config.

    For a hub id, the pinned commit (None only for a config that was never pinned). For a folder
    or tiny-llama, the folder (revision None: from_pretrained ignores it there), after checking
    that its fingerprint is still the pinned one, so both arms train from the same files."""
    return reference(cfg.base_model, cfg.base_model_revision)


def reference(base_model: str, revision: str | None) -> tuple[str, str | None]:
    """`load_reference` for a base model and its pinned revision."""
    kind = kind_of(base_model)
    if kind == "hub":
        return base_model, revision
    if kind == "tiny-llama":
        from training.experiment.models import ensure_tiny_llama

        folder = ensure_tiny_llama()
    else:
        folder = Path(base_model)
    if revision is not None:
        resolve(base_model, revision)  # raises when the files changed
    return str(folder), None


# ----------------------------------------------------------------------------- local folders
def _model_files(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        name = path.name
        if (name in _CONFIG_FILES or name in _TOKENIZER_FILES or name.endswith(".index.json")
                or name.endswith(_WEIGHT_SUFFIXES)):
            files.append(path)
    return files


def fingerprint(folder: Path) -> str:
    """`sha256:<hex>` over the folder's config, tokenizer and weight files: relative names and
    sizes of all, the content of the config, tokenizer files and index files, and the content of
    weight files up to 64 MiB (larger ones: their first and last MiB, size and modification time,
    so that a multi-GB model is fingerprinted in milliseconds and any rewrite changes it)."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "no such folder" if not folder.exists() else "not a folder"
        raise BaseModelError(f"base_model {folder}: {what}")
    if not (folder / "config.json").is_file():
        raise BaseModelError(f"base_model {folder}: no config.json: not a model folder (save one "
                             "with save_pretrained, or give a hub id)")
    files = _model_files(folder)
    if not any(f.name.endswith(_WEIGHT_SUFFIXES) for f in files):
        raise BaseModelError(f"base_model {folder}: no weight files (*.safetensors, *.bin)")
    digest = hashlib.sha256()
    for path in files:
        st = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{st.st_size}\0".encode())
        if not path.name.endswith(_WEIGHT_SUFFIXES) or st.st_size <= _FULL_HASH_BYTES:
            digest.update(_sha256_file(path))
        else:
            with open(path, "rb") as f:
                digest.update(f.read(_SAMPLE_BYTES))
                f.seek(max(0, st.st_size - _SAMPLE_BYTES))
                digest.update(f.read(_SAMPLE_BYTES))
            digest.update(str(st.st_mtime_ns).encode())
    return FINGERPRINT_PREFIX + digest.hexdigest()


def _sha256_file(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


# ----------------------------------------------------------------------------- the hub
def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _offline_hint(repo: str) -> str:
    return (f"to work offline, download it once where the hub is reachable (`hf download {repo}`) "
            "and set HF_HUB_OFFLINE=1, or set base_model to a local folder")


def _hub_commit(repo: str, revision: str | None, timeout: float, note) -> tuple[str, str]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    wanted = f"revision {revision!r} of {repo}" if revision else repo
    if _offline():
        sha = _cached_commit(repo, revision)
        if sha is None:
            raise BaseModelError(
                f"base_model {wanted}: HF_HUB_OFFLINE is set and it is not in the local cache "
                f"({_cache_dir()}): download it first (`hf download {repo}"
                f"{f' --revision {revision}' if revision else ''}`) or unset HF_HUB_OFFLINE")
        return sha, "local cache (offline)"
    api = HfApi()
    token_hint = ("set HF_TOKEN to a token of an account that accepted the licence (or run "
                  "`hf auth login`)")
    try:
        info = api.model_info(repo, revision=revision, timeout=timeout)
        if info.gated:  # the model card is public; the files need an accepted licence
            from huggingface_hub import get_hf_file_metadata, hf_hub_url

            get_hf_file_metadata(hf_hub_url(repo, "config.json", revision=info.sha),
                                 timeout=timeout)
    except GatedRepoError:
        has_token = bool(os.environ.get("HF_TOKEN") or _saved_token())
        why = ("your token has no access: accept the licence at https://huggingface.co/"
               f"{repo}" if has_token else
               f"it is gated and no token is set: accept the licence at https://huggingface.co/"
               f"{repo} and {token_hint}")
        raise BaseModelError(f"base_model {repo}: {why}") from None
    except RevisionNotFoundError:
        raise BaseModelError(f"base_model {repo}: base_model_revision {revision!r} does not exist "
                             "there (give a commit sha, branch or tag of the repository)") from None
    except RepositoryNotFoundError as e:
        if "invalid credentials" in str(e).lower() or "invalid user token" in str(e).lower():
            raise BaseModelError(f"base_model {repo}: the hub refused the token (401: "
                                 f"{_server_message(e)}): check HF_TOKEN (or `hf auth login`), "
                                 "or unset it for a public model") from None
        raise BaseModelError(f"base_model {repo}: no such model on the hub (or it is private: "
                             f"{token_hint}); a local folder must exist") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):  # a bad or expired token: the cache would hide it for good
            raise BaseModelError(f"base_model {repo}: the hub refused the token ({status}: "
                                 f"{_first_line(e)}): check HF_TOKEN (or `hf auth login`), or "
                                 "unset it for a public model") from None
        return _unreachable(repo, revision, wanted, _first_line(e), note)
    except Exception as e:  # connection refused, DNS, timeout, proxy: the hub is out of reach
        return _unreachable(repo, revision, wanted, f"{type(e).__name__}: {_first_line(e)}", note)
    if not info.sha:
        raise BaseModelError(f"base_model {wanted}: the hub gave no commit sha")
    if revision and len(revision) == 40 and info.sha != revision:
        raise BaseModelError(f"base_model {repo}: the hub resolves {revision} to {info.sha}")
    return info.sha, "explicit" if revision else "hub"


def _unreachable(repo, revision, wanted, reason, note) -> tuple[str, str]:
    sha = _cached_commit(repo, revision)
    if sha is None:
        raise BaseModelError(f"base_model {wanted}: cannot reach the Hugging Face hub ({reason}) "
                             f"and it is not in the local cache; {_offline_hint(repo)}")
    note(f"the hub is unreachable ({reason}): using the cached commit {sha} of {repo}")
    _go_offline()  # the tokenizer and the arms load from the cache, with no more attempts
    return sha, "local cache (hub unreachable)"


def _go_offline() -> None:
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"  # inherited by the arms
    constants.HF_HUB_OFFLINE = True


def _cached_commit(repo: str, revision: str | None) -> str | None:
    """The commit of the cached snapshot of `repo` at `revision` (a ref or a sha), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json", revision=revision)
    if isinstance(found, str):
        return Path(found).parent.name  # .../snapshots/<commit>/config.json
    return None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _saved_token() -> str | None:
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:
        return None


def _server_message(e: BaseException) -> str:
    return getattr(e, "server_message", None) or _first_line(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def manifest_entry(pinned: Pinned) -> dict:
    """What the pair's manifest records about the base model."""
    return {"base_model": pinned.base_model, "base_model_kind": pinned.kind,
            "base_model_revision": pinned.revision, "base_model_pinned_by": pinned.source}


def describe(pinned: Pinned) -> str:
    return f"{pinned.base_model} @ {pinned.revision[:19]} ({pinned.source})"


__all__ = ["BaseModelError", "Pinned", "describe", "fingerprint", "load_reference",
           "manifest_entry", "pin", "resolve"]

"""A base model's shape (layers, widths, vocabulary, parameter count) without downloading it.

From its config.json when the base model is a folder, tiny-llama, or a hub id in the local Hugging
Face cache; else from a built-in table of common base models (Llama-3/3.1/3.2/3.3, Llama-2,
Mistral-7B). The memory plan (training.memory) and the FLOPs estimate (training.estimate) use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def params_text(n: int) -> str:
    """A parameter count for people: 8.03B, 1.2M (a tiny model is not "0.00B")."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


class ShapeUnknown(ValueError):
    """Neither a config.json (local or cached) nor the built-in table knows the model."""


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder: what the memory plan (and the FLOPs estimate) needs."""

    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    tied_embeddings: bool = False
    head_dim: int = 0  # 0: hidden / n_heads
    source: str = ""

    @property
    def q_dim(self) -> int:
        return self.n_heads * (self.head_dim or self.hidden // self.n_heads)

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * (self.head_dim or self.hidden // self.n_heads)

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of a decoder layer."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i),
                "down_proj": (i, h)}

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_dims().values())

    @property
    def layer_params(self) -> int:
        return self.layer_linear_params + 2 * self.hidden  # + two RMSNorm weights

    @property
    def root_params(self) -> int:
        """Embeddings, lm_head (unless tied) and the final norm: FSDP's root unit."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2) + self.hidden

    @property
    def n_params(self) -> int:
        return self.n_layers * self.layer_params + self.root_params

    @property
    def linear_params(self) -> int:
        """What QLoRA quantizes: the decoder layers' linear weights (not embeddings, lm_head)."""
        return self.n_layers * self.layer_linear_params


def _llama(layers, hidden, inter, heads, kv, vocab=128256, tied=False) -> dict:
    return dict(n_layers=layers, hidden=hidden, intermediate=inter, n_heads=heads,
                n_kv_heads=kv, vocab=vocab, tied_embeddings=tied)


_L3_8B, _L3_70B = _llama(32, 4096, 14336, 32, 8), _llama(80, 8192, 28672, 64, 8)
_L31_405B = _llama(126, 16384, 53248, 128, 8)
_L32_1B, _L32_3B = _llama(16, 2048, 8192, 32, 8, tied=True), _llama(28, 3072, 8192, 24, 8, tied=True)
# The common base models, by hub id (lowercase), from their config.json files.
BUILTIN_SHAPES: dict[str, dict] = {
    **{f"meta-llama/{n}{s}": _L3_8B for n in ("Meta-Llama-3-8B", "Llama-3.1-8B",
                                             "Meta-Llama-3.1-8B") for s in ("", "-Instruct")},
    **{f"meta-llama/{n}{s}": _L3_70B for n in ("Meta-Llama-3-70B", "Llama-3.1-70B",
                                              "Meta-Llama-3.1-70B") for s in ("", "-Instruct")},
    "meta-llama/llama-3.3-70b-instruct": _L3_70B,
    **{f"meta-llama/{n}{s}": _L31_405B for n in ("Llama-3.1-405B", "Meta-Llama-3.1-405B")
       for s in ("", "-Instruct")},
    **{f"meta-llama/Llama-3.2-1B{s}": _L32_1B for s in ("", "-Instruct")},
    **{f"meta-llama/Llama-3.2-3B{s}": _L32_3B for s in ("", "-Instruct")},
    **{f"meta-llama/Llama-2-7b{s}": _llama(32, 4096, 11008, 32, 32, 32000)
       for s in ("-hf", "-chat-hf")},
    **{f"meta-llama/Llama-2-13b{s}": _llama(40, 5120, 13824, 40, 40, 32000)
       for s in ("-hf", "-chat-hf")},
    **{f"meta-llama/Llama-2-70b{s}": _llama(80, 8192, 28672, 64, 8, 32000)
       for s in ("-hf", "-chat-hf")},
    "mistralai/mistral-7b-v0.1": _llama(32, 4096, 14336, 32, 8, 32000),
    "mistralai/mistral-7b-instruct-v0.2": _llama(32, 4096, 14336, 32, 8, 32000),
    "mistralai/mistral-7b-v0.3": _llama(32, 4096, 14336, 32, 8, 32768),
    "mistralai/mistral-7b-instruct-v0.3": _llama(32, 4096, 14336, 32, 8, 32768),
}
BUILTIN_SHAPES = {k.lower(): v for k, v in BUILTIN_SHAPES.items()}


def shape_from_config(config: dict, source: str) -> ModelShape | None:
    """A shape from a config.json's fields (Llama, Mistral, Qwen2 and the like); None when they
    are missing."""
    try:
        heads = int(config["num_attention_heads"])
        numbers = [config[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                       "vocab_size")] + [heads]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in numbers):
            return None
        return ModelShape(
            n_layers=int(config["num_hidden_layers"]), hidden=int(config["hidden_size"]),
            intermediate=int(config["intermediate_size"]), n_heads=heads,
            n_kv_heads=int(config.get("num_key_value_heads") or heads),
            vocab=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            head_dim=int(config.get("head_dim") or 0), source=source)
    except (KeyError, TypeError, ValueError):
        return None


def model_shape(base_model: str, revision: str | None = None) -> ModelShape:
    """The model's shape without downloading anything: its config.json when `base_model` is a
    folder (or tiny-llama, or a hub id in the local Hugging Face cache at `revision`), else the
    built-in table of common base models. Raises ShapeUnknown."""
    from training.experiment.models import TINY_LLAMA

    if base_model == TINY_LLAMA:
        from training.experiment.models import TINY_LLAMA_CONFIG, TINY_VOCAB_SIZE, tiny_llama_path

        found = _read_config(tiny_llama_path() / "config.json")
        if found:
            return shape_from_config(found, "tiny-llama config.json") or _unknown(base_model)
        return shape_from_config({**TINY_LLAMA_CONFIG, "vocab_size": TINY_VOCAB_SIZE},
                                 "tiny-llama (built-in)")
    folder = Path(base_model).expanduser()
    if folder.is_dir():
        config = _read_config(folder / "config.json")
        if config is None:
            raise ShapeUnknown(f"base_model {base_model}: no readable config.json in the folder")
        return shape_from_config(config, f"{folder / 'config.json'}") or _unknown(base_model)
    cached = _cached_config(base_model, revision)
    if cached and (shape := shape_from_config(cached[0], f"cached config.json ({cached[1]})")):
        return shape
    if base_model.lower() in BUILTIN_SHAPES:
        return ModelShape(**BUILTIN_SHAPES[base_model.lower()], source="built-in table")
    return _unknown(base_model)


def _unknown(base_model: str):
    raise ShapeUnknown(
        f"base_model {base_model}: its shape is unknown offline (not a folder, not in the Hugging "
        f"Face cache, not in the built-in table): download its config.json once (`hf download "
        f"{base_model} config.json`)")


def _read_config(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _cached_config(repo: str, revision: str | None) -> tuple[dict, str] | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "config.json", revision=revision)
    except Exception:  # a malformed id or revision: not cached
        return None
    if isinstance(found, str) and (config := _read_config(Path(found))):
        return config, found
    return None

"""Base models and tokenizers: a hub id, a local path, or the built-in `tiny-llama`.

Every base model goes through the same `from_pretrained` path. `tiny-llama` is a few-layer Llama built
here from a `LlamaConfig`, with a byte-level BPE tokenizer trained deterministically on bundled text,
and saved with `save_pretrained` into a cache folder, so the local pair needs no network and both
arms (and every machine) get the same weights and vocabulary.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

TINY_LLAMA = "tiny-llama"
# Bump when the recipe below changes: the cache folder is keyed on it.
TINY_LLAMA_VERSION = "2"

# What the hub accepts as a model id (huggingface_hub.validate_repo_id): "name" or "org/name",
# each part 1 to 96 ASCII letters, digits, '-', '_' or '.', starting and ending with a letter, a
# digit or '_'; no '--' or '..', no '.git' at the end. ASCII only: `\w` would take `é`, which the
# hub refuses with a traceback after the file was accepted.
_HUB_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"(?:{_HUB_PART}/)?{_HUB_PART}", re.ASCII)


def hub_id_ok(name: str) -> bool:
    """Whether `name` is a model id the hub's own rule accepts."""
    return (HUB_ID.fullmatch(name) is not None and ".." not in name and "--" not in name
            and not name.endswith(".git"))


BOS, EOT, PAD = "<|begin_of_text|>", "<|eot_id|>", "<|finetune_pad|>"
HEADER_START, HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
SPECIAL_TOKENS = [BOS, "<|end_of_text|>", HEADER_START, HEADER_END, EOT, PAD]

# Llama-3's chat format. Base (non-instruct) Llama-3 checkpoints ship no chat template; they get
# this one so that both base and instruct models are trained on the same turn structure.
# `{% generation %}` marks what the model learns to write (each assistant turn's content and end
# of turn): `apply_chat_template(..., return_assistant_tokens_mask=True)` returns it as a mask,
# as TRL does for assistant-only loss. The markers render nothing.
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] | trim }}{{ '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] | trim }}{{ '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Small enough to train two arms in parallel on 2 CPU cores in minutes, big enough to learn.
TINY_LLAMA_CONFIG = dict(
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)
TINY_VOCAB_SIZE = 4096

CORPUS = Path(__file__).parents[1] / "assets" / "tiny_corpus.txt"


def cache_root() -> Path:
    """Where built models live: $PAIRED_FINETUNE_CACHE, else ~/.cache/paired-finetune."""
    env = os.environ.get("PAIRED_FINETUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "paired-finetune"


def tiny_llama_path() -> Path:
    digest = hashlib.sha256(CORPUS.read_bytes()).hexdigest()[:8]
    return cache_root() / f"tiny-llama-v{TINY_LLAMA_VERSION}-{digest}"


def resolve_base_model(base_model: str) -> str:
    """What `from_pretrained` should load: builds `tiny-llama` on first use, else passes through."""
    if base_model == TINY_LLAMA:
        return str(ensure_tiny_llama())
    return base_model


def ensure_tiny_llama(path: Path | None = None) -> Path:
    """Build the tiny Llama once; a concurrent or interrupted build never leaves a half model."""
    path = path or tiny_llama_path()
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    staging.chmod(0o755)
    try:
        build_tiny_llama(staging)
        try:
            staging.rename(path)  # atomic; fails if another process finished first
        except OSError:
            if not (path / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def build_tiny_llama(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS.read_text(encoding="utf-8").splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        model_max_length=TINY_LLAMA_CONFIG["max_position_embeddings"],
        chat_template=LLAMA3_CHAT_TEMPLATE,
    )
    tokenizer.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_LLAMA_CONFIG,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)


def load_tokenizer(name_or_path: str, revision: str | None = None):
    """The base model's tokenizer, with a chat template and a pad token guaranteed. `revision`:
    the pinned hub commit (training.base_model), None for a local folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    if not tokenizer.chat_template:
        tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        # Padded positions carry label -100 and attention mask 0: any id works; eos is conventional.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer

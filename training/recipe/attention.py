"""Attention for packed rows on CPU: each example attends only within itself.

A packed row (padding-free batches, `DataCollatorWithFlattening`) holds several examples one after
another; their boundaries are where `position_ids` restart at 0. SDPA runs the whole row against a
block-diagonal mask, computing the scores between every pair of positions and then discarding those
across examples: for 4 examples of a skewed-length batch that is several times the attention the
examples need. CPU has no variable-length kernel, so this runs SDPA once per example (causal, no
mask): the same result, without the discarded work. Anything else (a padded batch, several rows,
CUDA, dropout) goes to transformers' own SDPA.

Registered as the attention implementation ``packed_sdpa`` (`register()`); the recipe chooses it on
CPU. The tests check it equals SDPA's output and gradients on packed rows.
"""

from __future__ import annotations

from itertools import pairwise

NAME = "packed_sdpa"
# On CUDA the recipe keeps SDPA until a GPU measurement shows this is faster there
# (`bench/throughput.py --device cuda --packed-attention` sets it; bench/gpu_check.sh step 6).
CUDA = False
_bounds_cache: tuple = (None, None)  # (weakref to one forward's position_ids, its segment bounds)


def _segment_bounds(position_ids) -> list[int] | None:
    """[0, start of example 2, ..., T] of a packed row, or None if the row is one sequence.
    Computed once per forward pass (every layer gets the same `position_ids` object), so a GPU
    waits for it once, not once per layer."""
    import weakref

    import torch

    global _bounds_cache
    ref, bounds = _bounds_cache
    if ref is not None and ref() is position_ids:
        return bounds
    starts = torch.nonzero(position_ids[0] == 0).flatten().tolist()
    bounds = [*starts, position_ids.shape[1]] if len(starts) > 1 and starts[0] == 0 else None
    _bounds_cache = (weakref.ref(position_ids), bounds)
    return bounds


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, position_ids=None, **kwargs):
    """transformers' attention interface: query [B, heads, T, D], key/value [B, kv heads, T, D];
    returns ([B, T, heads, D], None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = None
    if (position_ids is not None and query.shape[0] == 1 and (CUDA or not query.is_cuda)
            and not (dropout and module.training) and key.shape[2] == query.shape[2]
            and position_ids.shape[-1] == query.shape[2]):
        bounds = _segment_bounds(position_ids)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, position_ids=position_ids, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling,
            enable_gqa=gqa)
        for s, e in pairwise(bounds)
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``attn_implementation="packed_sdpa"`` available (with SDPA's mask); returns the name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME

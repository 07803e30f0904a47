"""training/attention.py: per-example attention on packed rows equals SDPA with the packed mask."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from training.recipe.attention import register


def _model(attention: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                         max_position_embeddings=128, use_cache=False,
                         attn_implementation=attention)
    return LlamaForCausalLM(config).train()


def _run(model, **batch):
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("lengths", [[7, 12, 3, 9], [31], [1, 1, 5]])
def test_packed_rows_give_sdpa_s_logits_and_gradients(lengths):
    name = register()
    torch.manual_seed(1)
    ids = torch.randint(1, 97, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    batch = {"input_ids": ids, "position_ids": positions, "labels": ids}
    logits, grads = _run(_model("sdpa"), **batch)
    logits_p, grads_p = _run(_model(name), **batch)
    torch.testing.assert_close(logits_p, logits, rtol=1e-5, atol=1e-5)
    for g, gp in zip(grads, grads_p, strict=True):
        torch.testing.assert_close(gp, g, rtol=1e-4, atol=1e-6)
    # and each example is on its own: the same logits as run alone
    model = _model(name).eval()
    with torch.no_grad():
        alone = torch.cat([model(input_ids=part).logits for part in ids.split(lengths, dim=1)],
                          dim=1)
    torch.testing.assert_close(logits_p, alone, rtol=1e-5, atol=1e-5)


def test_padded_batches_go_to_sdpa_unchanged():
    name = register()
    ids = torch.randint(1, 97, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    logits, grads = _run(_model("sdpa"), **batch)
    logits_p, grads_p = _run(_model(name), **batch)
    torch.testing.assert_close(logits_p, logits)
    for g, gp in zip(grads, grads_p, strict=True):
        torch.testing.assert_close(gp, g)

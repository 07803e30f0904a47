"""training/collate.py: the lm_head only on labelled positions gives the same loss and gradients."""

import pytest
import torch
from transformers import DataCollatorWithFlattening, LlamaConfig, LlamaForCausalLM

from training.recipe.collate import KeepLabelledLogits

IGNORE = -100


def tiny_model():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                         max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def features():
    # assistant-only labels: the prompts are masked, as the recipe's chat encoding does
    return [{"input_ids": list(range(1, 12)), "labels": [IGNORE] * 7 + list(range(8, 12))},
            {"input_ids": list(range(20, 26)), "labels": [IGNORE] * 2 + list(range(22, 26))},
            {"input_ids": list(range(40, 49)), "labels": [IGNORE] * 9}]  # nothing to learn


def padded(feats):
    width = max(len(f["input_ids"]) for f in feats)
    ids = torch.zeros((len(feats), width), dtype=torch.long)
    labels = torch.full((len(feats), width), IGNORE)
    mask = torch.zeros((len(feats), width), dtype=torch.long)
    for i, f in enumerate(feats):
        n = len(f["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = (torch.tensor(f["input_ids"]),
                                                  torch.tensor(f["labels"]), 1)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def loss_and_grads(model, batch, num_items):
    model.zero_grad()
    loss = model(**batch, num_items_in_batch=num_items).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("collator", [DataCollatorWithFlattening(), padded],
                         ids=["packed", "padded"])
def test_same_loss_and_gradients_with_only_the_labelled_logits(collator):
    model = tiny_model()
    full = collator(features())
    kept = KeepLabelledLogits(collator)(features())
    n = int((full["labels"][..., 1:] != IGNORE).sum())
    assert kept["shift_labels"].numel() == int(kept["logits_to_keep"].sum()) == n == 8
    # the first target of each example is its first labelled token, never one across a boundary
    assert kept["shift_labels"].tolist() == [8, 9, 10, 11, 22, 23, 24, 25]
    loss, grads = loss_and_grads(model, full, torch.tensor(n))
    loss_kept, grads_kept = loss_and_grads(model, kept, torch.tensor(n))
    assert loss_kept == pytest.approx(loss.item(), rel=1e-6)
    for g, gk in zip(grads, grads_kept, strict=True):
        torch.testing.assert_close(gk, g, rtol=1e-5, atol=1e-7)
    logits = model(**{k: v for k, v in kept.items() if k != "labels"}).logits
    assert logits.shape[-2] == n  # only the labelled positions reached the lm_head


@pytest.mark.parametrize("method", ["full", "lora"])
def test_packed_rows_train_exactly_like_padded_batches_with_the_recipes_model(
        tiny_model_path, tiny_tokenizer, method):
    """Packing changes how the examples are laid out, never what each one sees: the recipe's
    model (`load_model`) gives the same loss and gradients on a packed row as on a padded batch
    of the same examples, also outside a Trainer (which turns the KV cache off itself; with the
    config's use_cache on, each packed example attended to the ones before it)."""
    from training.experiment.config import ExperimentConfig
    from training.recipe.collate import make_collator
    from training.recipe.train import load_model

    cfg = ExperimentConfig.model_validate({
        "name": "packing", "base_model": "tiny-llama", "method": method,
        "training": {"epochs": 1}, "lora": {"dropout": 0.0},
        "arms": {"control": {"train": "c.jsonl"}, "experiment": {"train": "e.jsonl"}}})
    model = load_model(cfg, tiny_model_path, "fp32")
    model.train()
    feats = [{"input_ids": [5 + i] * (4 + 3 * i) + list(range(30, 38)),
              "labels": [IGNORE] * (4 + 3 * i) + list(range(30, 38))} for i in range(4)]
    packed = make_collator(None, packing=True, cuda=False)([dict(f) for f in feats])
    padded_ = make_collator(tiny_tokenizer, packing=False, cuda=False)([dict(f) for f in feats])
    assert packed["input_ids"].shape[0] == 1 and padded_["input_ids"].shape[0] == 4
    n = torch.tensor(int(packed["shift_labels"].numel()))
    trained = [p for p in model.parameters() if p.requires_grad]
    results = []
    for batch in (packed, padded_):
        model.zero_grad()
        loss = model(**batch, num_items_in_batch=n).loss
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in trained]))
    (loss_packed, grads_packed), (loss_padded, grads_padded) = results
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5)
    for g, gp in zip(grads_padded, grads_packed, strict=True):
        torch.testing.assert_close(gp, g, rtol=1e-4, atol=1e-6)


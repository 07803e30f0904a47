"""The recipe's batches: padding-free packing or padding, with logits only where the loss is.

A causal LM's loss at position t scores the prediction of token t+1; with assistant-only labels most
positions have no target, yet the model would still project every position onto the vocabulary (the
lm_head) and the loss would upcast those logits to fp32. `KeepLabelledLogits` adds to each batch what
transformers 5 uses to skip them: `logits_to_keep` (a boolean mask of the positions with a target:
only those reach the lm_head) and `shift_labels` (their targets, in the same order). The loss is the
same sum over the same (position, target) pairs, divided by the same count (the Trainer counts
`shift_labels` for gradient accumulation); only the work on unlabelled positions is gone.
"""

from __future__ import annotations

IGNORE_INDEX = -100


class KeepLabelledLogits:
    """Wraps a collator: its batches carry `logits_to_keep` and `shift_labels`."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        import torch.nn.functional as F

        batch = self.collator(features)
        shifted = F.pad(batch["labels"], (0, 1), value=IGNORE_INDEX)[..., 1:]
        keep = shifted != IGNORE_INDEX  # (batch, seq): the positions that predict a labelled token
        batch["logits_to_keep"] = keep
        batch["shift_labels"] = shifted[keep]
        return batch


def make_collator(tokenizer, packing: bool, cuda: bool, labelled_logits_only: bool = True):
    """The recipe's collator: packed (sequences end to end, boundaries from `position_ids`) or
    padded to the longest in the batch; with the lm_head only on labelled positions."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if packing:
        collator = DataCollatorWithFlattening()
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX,
                                          pad_to_multiple_of=8 if cuda else None)
    return KeepLabelledLogits(collator) if labelled_logits_only else collator

"""The pair's vocabulary: the experiment file, overrides, paths, the pinned base model, tracking
conventions, events, locks, stack outputs and the one pair-id rule.

Import rule: nothing of `training` but `training.errors` and `training.terminal`."""

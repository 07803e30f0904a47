"""What is decided before a pair starts, on any backend: preparation and preflight, hardware,
the model's shape, the memory plan and the estimate. No cloud SDK.

Import rule: `training.experiment`, `training.data` and the top-level modules."""

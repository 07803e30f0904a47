"""The Azure ML backend: the pair's jobs (pure), submit, find, status, cancel, wait, sweeps, data
upload and model registration through azure-ai-ml.

Import rule: `training.plan`, `training.data`, `training.experiment` and the top-level modules."""

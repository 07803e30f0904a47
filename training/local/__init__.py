"""The local backend: both arms of a pair as processes on this machine, their progress, and the
MLflow model registry for their models.

Import rule: `training.plan`, `training.data`, `training.experiment` and the top-level modules."""

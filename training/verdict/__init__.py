"""The verdict: the MLflow store read by pair, the paired statistics, tables and plots.

Import rule: `training.plan`, `training.experiment` and the top-level modules."""

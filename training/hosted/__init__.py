"""The hosted backend: fine-tuning on a managed service (OpenAI, Azure OpenAI): the service's
format and limits, prices, the client and the results logged to MLflow.

Import rule: `training.plan`, `training.data`, `training.experiment` and the top-level modules."""

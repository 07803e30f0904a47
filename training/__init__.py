"""Paired LLM fine-tuning: the `train` CLI, the training recipe and the local/Azure ML backends."""

__version__ = "0.1.0"

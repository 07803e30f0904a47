"""`train`: the command line of paired fine-tuning, as a table of commands.

Each command module parses its options, calls the part that does the work, prints the result on
stdout and diagnostics on stderr; every error reaches the one translator (TrainGroup, in
training.cli.common): `error: MESSAGE` and its exit code. torch, transformers, azure and mlflow are
imported inside commands, so `train --help` answers at once.

Exit codes: 0 success; 1 a job or check failed; 2 bad input (config, data, arguments), reported
before anything is trained or submitted; 130 interrupted.
"""

from __future__ import annotations

import click

from training.cli.common import TrainGroup
from training.cli.compare import compare
from training.cli.data import data
from training.cli.estimate import estimate
from training.cli.follow import cancel, logs, status
from training.cli.register import register
from training.cli.run import run
from training.cli.submit import submit
from training.cli.sweep import sweep


@click.group(cls=TrainGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="paired-finetune")
def main():
    """Paired LLM fine-tuning: a control and an experiment model from the same base, everything
    else identical, tracked in MLflow and compared.

    \b
    Locally, no cloud:
      train data validate examples/data/*.jsonl
      train run --config experiments/local.yaml
    """


# the path a user takes, in order
COMMANDS = [data, run, estimate, sweep, submit, status, logs, cancel, compare, register]
for _command in COMMANDS:
    main.add_command(_command)

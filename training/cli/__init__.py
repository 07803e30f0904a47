"""`train`, the command line: click only. Each command parses its options, calls one domain
function, prints the result on stdout (diagnostics on stderr) and maps errors to exit codes.

Import rule: any part but `training.recipe`; a command module never imports another command
module (shared pieces live in `training.cli.common`)."""

from training.cli.app import main

__all__ = ["main"]

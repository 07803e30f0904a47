"""Where a pair runs: `local` (subprocesses on this machine); `azureml` comes with submission."""

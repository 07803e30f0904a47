"""What runs inside a job: `python -m training.recipe` (see `training.recipe.train`).

Import rule: `training.plan`, `training.data`, `training.experiment` and the top-level modules.
No other part imports the recipe: it is a script, run as a process."""

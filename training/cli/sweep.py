"""`train sweep`: tune hyperparameters on one arm with an Azure ML sweep job.

`train submit --from-sweep SWEEP_JOB` then applies the best trial's values to both arms.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from training.cli.common import (
    azure_client,
    diagnostics,
    emit_json,
    enforce_budget,
    format_option,
    note,
    out_option,
    results,
    stack_options,
)
from training.errors import BadInput


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="The experiment file (YAML) with a `sweep:` section.")
@stack_options
@click.option("--arm", type=click.Choice(["control", "experiment"]), default="control",
              show_default=True, help="The arm the hyperparameters are tuned on.")
@click.option("--dry-run", is_flag=True, help="Write the sweep job as YAML to --out; send nothing.")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              callback=lambda ctx, param, value: out_option(value),
              help="With --dry-run: the folder for the job YAML and the code snapshot.")
@click.option("--force", is_flag=True,
              help="A new sweep beside the existing one (its name gets a timestamp): after "
                   "editing `sweep:`, or when the last sweep failed or was cancelled.")
@click.option("--allow-over-budget", is_flag=True,
              help="Submit even if the sweep's estimate or worst case exceeds budget_usd.")
@format_option("table", "json")
def sweep(config_path, outputs, arm, dry_run, out_dir, force, allow_over_budget, fmt):
    """Tune hyperparameters on ONE arm with an Azure ML sweep job (trials in parallel).

    \b
    train sweep --stack dev --config experiments/paired-comments.yaml
    train status SWEEP_JOB --stack dev      # or: train cancel SWEEP_JOB --stack dev
    train submit --stack dev --config experiments/paired-comments.yaml --from-sweep SWEEP_JOB

    Fairness: the pair must share its hyperparameters, so they are tuned on one arm and applied
    to both. Tuning on the control arm (the default) biases the comparison against the
    experiment arm, which is the conservative direction; the pair's jobs record the arm the
    values were tuned on (tag tuned_on_arm) and the sweep job (tag from_sweep).
    """
    from training.azureml import jobs as jobs_mod
    from training.azureml.submission import (
        check_out_dir,
        forced_stamps,
        job_config,
        pin_for_job,
        remove_stale_jobs,
    )
    from training.azureml.sweep import plan_sweep
    from training.azureml.sweep_plan import check_hungriest_trial, sweep_yaml
    from training.experiment.config import load_config
    from training.experiment.tracking import code_version
    from training.plan.pair_estimate import cluster_check

    console = diagnostics()
    if dry_run != (out_dir is not None):
        raise BadInput("--dry-run and --out go together: --dry-run --out DIR")
    cfg = load_config(config_path)
    if cfg.backend != "azureml":
        raise BadInput(f"train sweep runs on Azure ML; {config_path} names backend "
                       f"{cfg.backend} (set its openai: hyperparameters by hand)")
    if arm == "experiment":
        console.print("[yellow]warning:[/] tuning on the experiment arm: values applied to both "
                      "arms then favour it, a bias in the direction the comparison tests (the "
                      "control arm, the default, biases against it: the conservative choice)")
    cluster_check(cfg, outputs, note(console))
    cfg = pin_for_job(cfg, note(console), _warning(console), required=not dry_run)
    stamps = forced_stamps() if force else None

    def plan():
        return plan_sweep(cfg, outputs, jobs_mod.azure_pair_id(cfg, outputs), arm,
                          code_version(), next(stamps) if stamps else None)

    template = plan()  # the sweep's rules first: the hungriest trial needs a valid search
    check_hungriest_trial(cfg, outputs, note(console))
    config_yaml = job_config(cfg, outputs).to_yaml()
    if dry_run:  # --out is made only now, when every check has passed
        from training.azureml.snapshot import stage_code

        check_out_dir(out_dir)
        path = out_dir / f"{template.name}.yml"
        try:
            remove_stale_jobs(out_dir, {path}, note(console))
            stage_code(out_dir / "code", config_yaml)
            path.write_text(sweep_yaml(template, cfg, "./code"), encoding="utf-8")
        except OSError as e:
            raise BadInput(f"--out {out_dir}: cannot write {e.filename or ''} "
                           f"({e.strerror or e})") from None
        if fmt == "json":
            emit_json({"sweep_job": template.name, "arm": template.arm, "dry_run": True,
                       "files": [str(path)]})
        else:
            results().print(f"wrote {path} (nothing was sent)", highlight=False)
        return
    _submit_sweep(template, cfg, config_yaml, outputs, console, fmt,
                  guard=lambda: _budget(cfg, outputs, arm, allow_over_budget, console),
                  replan=plan if force else None)


def _warning(console):
    return lambda text: console.print(f"warning: {text}", style="yellow", markup=False,
                                      highlight=False)


def _budget(cfg, outputs, arm, allow_over_budget, console) -> None:
    from training.azureml.sweep_plan import sweep_budget

    line, problems = sweep_budget(cfg, outputs, arm, _warning(console))
    console.print(line, highlight=False)
    if problems is not None:
        enforce_budget(problems, cfg.budget_usd, allow_over_budget, console,
                       "Nothing was submitted: fewer trials (sweep.max_total_trials), a smaller "
                       "azure.max_run_minutes or sweep.timeout_minutes, or --allow-over-budget")


def _submit_sweep(template, cfg, config_yaml, outputs, console, fmt, guard, replan=None) -> None:
    from training.azureml.backend import AzurePair, view
    from training.azureml.snapshot import stage_code
    from training.azureml.sweep import build_sweep_job
    from training.azureml.sweep_plan import check_existing_sweep

    pair = AzurePair(azure_client(outputs))
    existing = pair.get(template.name)
    while replan and existing is not None:  # --force: a sweep was made this second already
        template = replan()
        existing = pair.get(template.name)
    if existing is not None:
        check_existing_sweep(existing, template, view(existing).status)
    created = existing is None
    if created:
        guard()  # the budget: only for a sweep this command would start
        with tempfile.TemporaryDirectory(prefix="paired-finetune-code-") as tmp:
            code = stage_code(Path(tmp), config_yaml)
            existing = pair.client.jobs.create_or_update(
                build_sweep_job(template, cfg.sweep, str(code)))
    v = view(existing)
    if fmt == "json":
        emit_json({"sweep_job": template.name, "arm": template.arm, "created": created,
                   "status": v.status, "studio_url": v.studio_url})
        return
    out = results()
    out.print(f"sweep [bold]{template.name}[/] " + (f"submitted on the {template.arm} arm"
                                                     if created else "exists already: nothing created"))
    out.print(f"status {v.status}: {v.studio_url or ''}", overflow="ignore", crop=False)
    console.print(f"when it has finished: train submit --from-sweep {template.name} "
                  "--config ... (same --stack / --outputs-file)")

"""`train sweep`: tune hyperparameters on one arm with an Azure ML sweep job.

`train submit --from-sweep SWEEP_JOB` then applies the best trial's values to both arms.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from training.cli.azure import (
    _azure_errors,
    _cli,
    _client,
    _out,
    _pinned,
    forced_stamps,
    job_config,
    stack_options,
)


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="The experiment file (YAML) with a `sweep:` section.")
@stack_options
@click.option("--arm", type=click.Choice(["control", "experiment"]), default="control",
              show_default=True, help="The arm the hyperparameters are tuned on.")
@click.option("--dry-run", is_flag=True, help="Write the sweep job as YAML to --out; send nothing.")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              callback=lambda ctx, param, value: _out(value),
              help="With --dry-run: the folder for the job YAML and the code snapshot.")
@click.option("--force", is_flag=True,
              help="A new sweep beside the existing one (its name gets a timestamp): after "
                   "editing `sweep:`, or when the last sweep failed or was cancelled.")
@click.option("--allow-over-budget", is_flag=True,
              help="Submit even if the sweep's estimate or worst case exceeds budget_usd.")
def sweep(config_path, outputs, arm, dry_run, out_dir, force, allow_over_budget):
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
    from training.azureml.sweep import build_sweep_job, plan_sweep
    from training.experiment.tracking import code_version

    cli = _cli()
    console = cli._console()
    if dry_run != (out_dir is not None):
        cli.bad_input("--dry-run and --out go together: --dry-run --out DIR")
    if dry_run:
        from training.cli.azure import check_out_dir

        check_out_dir(out_dir)
    cfg = cli._load(config_path)
    if cfg.backend != "azureml":
        cli.bad_input(f"train sweep runs on Azure ML; {config_path} names backend "
                      f"{cfg.backend} (set its openai: hyperparameters by hand)")
    if arm == "experiment":
        console.print("[yellow]warning:[/] tuning on the experiment arm: values applied to both "
                      "arms then favour it, a bias in the direction the comparison tests (the "
                      "control arm, the default, biases against it: the conservative choice)")
    from training.cli.estimate import cluster_check

    cluster_check(cfg, outputs, console)
    cfg = _pinned(cfg, console, required=not dry_run)
    stamps = forced_stamps() if force else None

    def plan():
        return plan_sweep(cfg, outputs, jobs_mod.azure_pair_id(cfg, outputs), arm,
                          code_version(), next(stamps) if stamps else None)

    try:
        template = plan()  # the sweep's rules first: the hungriest trial needs a valid search
    except jobs_mod.JobSpecError as e:
        cli.bad_input(str(e))
    _check_hungriest_trial(cfg, outputs, console)
    config_yaml = job_config(cfg, outputs).to_yaml()
    if dry_run:
        _dry_run(template, cfg, config_yaml, out_dir, console)
        return
    from training.cli.budget import sweep_budget_guard

    _submit_sweep(template, cfg, config_yaml, outputs, console, build_sweep_job,
                  guard=lambda: sweep_budget_guard(cfg, outputs, arm, allow_over_budget, console),
                  replan=plan if force else None)


def sweep_yaml(template, cfg, code_dir: str) -> str:
    """The sweep job as YAML that `load_job` / `az ml job create -f` accept."""
    import io

    import yaml

    from training.azureml.sweep import build_sweep_job

    buf = io.StringIO()
    build_sweep_job(template, cfg.sweep, code_dir).dump(buf)
    data = yaml.safe_load(buf.getvalue())
    # The dump writes the trial as a whole command job and a local folder as `azureml:<path>`;
    # the sweep YAML schema wants the trial's own fields only, its sampled values referenced as
    # ${{search_space.x}} (inputs and outputs live on the sweep).
    trial = {k: v for k, v in data["trial"].items() if k in TRIAL_FIELDS}
    trial["code"] = code_dir
    for name in data.get("search_space", {}):
        trial["command"] = trial["command"].replace(f"${{{{inputs.{name}}}}}",
                                                    f"${{{{search_space.{name}}}}}")
    data["trial"] = trial
    # the sweep itself keeps the name, experiment and tags that `--from-sweep` relies on
    data = {"name": template.name,
            "display_name": f"{template.tags['sweep_of']} sweep on {template.arm}",
            "experiment_name": template.experiment_name, "tags": dict(template.tags), **data}
    return yaml.safe_dump(data, sort_keys=False, width=100)


TRIAL_FIELDS = ("code", "command", "environment", "environment_variables", "distribution",
                "resources")


def _dry_run(template, cfg, config_yaml, out_dir: Path, console) -> None:
    from training.azureml.backend import stage_code
    from training.cli.azure import remove_stale_jobs

    text = sweep_yaml(template, cfg, "./code")
    path = out_dir / f"{template.name}.yml"
    try:
        remove_stale_jobs(out_dir, {path}, console)
        stage_code(out_dir / "code", config_yaml)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        _cli().bad_input(f"--out {out_dir}: cannot write {e.filename or ''} ({e.strerror or e})")
    console.print(f"wrote {path} (nothing was sent)")


@_azure_errors
def _submit_sweep(template, cfg, config_yaml, outputs, console, build_sweep_job,
                  guard, replan=None) -> None:
    from training.azureml.backend import AzurePair, stage_code, view

    pair = AzurePair(_client(outputs))
    existing = pair.get(template.name)
    while replan and existing is not None:  # --force: a sweep was made this second already
        template = replan()
        existing = pair.get(template.name)
    if existing is not None:
        _check_existing_sweep(existing, template, view(existing).status)
    if existing is None:
        guard()  # the budget: only for a sweep this command would start
        with tempfile.TemporaryDirectory(prefix="paired-finetune-code-") as tmp:
            code = stage_code(Path(tmp), config_yaml)
            existing = pair.client.jobs.create_or_update(
                build_sweep_job(template, cfg.sweep, str(code)))
        console.print(f"sweep [bold]{template.name}[/] submitted on the {template.arm} arm")
    else:
        console.print(f"sweep [bold]{template.name}[/] exists already: nothing created")
    v = view(existing)
    console.print(f"status {v.status}: {v.studio_url or ''}", overflow="ignore", crop=False)
    console.print(f"when it has finished: train submit --from-sweep {template.name} "
                  "--config ... (same --stack / --outputs-file)")


def _check_hungriest_trial(cfg, outputs, console) -> None:
    """Every trial must fit the GPU, not only the file's values: a searched batch size, LoRA
    rank or checkpointing that does not fit would die of OOM after its (billed) start-up."""
    from training.cli.estimate import cluster_check
    from training.azureml.sweep import MEMORY_FIELDS, extreme_trial

    hungriest, values = extreme_trial(cfg, MEMORY_FIELDS)
    if values:
        shown = ", ".join(f"{k} {v}" for k, v in values.items())
        cluster_check(hungriest, outputs, console, what=f"the sweep's hungriest trial ({shown})")


def _check_existing_sweep(existing, template, status: str) -> None:
    """A job of the sweep's name is reused only if it is this very sweep, still usable."""
    tags = existing.tags or {}
    force = "`train sweep --force` starts a new one beside it"
    if getattr(existing, "type", None) != "sweep" or "sweep_of" not in tags:
        _cli().bad_input(f"a job named {template.name} exists and is not a sweep made by "
                         f"`train sweep`; {force}")
    if "sweep_sha256" not in tags:
        _cli().bad_input(f"sweep {template.name} was made by an older version of this tool: "
                         f"whether it is this search cannot be checked; {force}")
    if tags["sweep_sha256"] != template.tags["sweep_sha256"]:
        _cli().bad_input(f"sweep {template.name} exists with another search (the `sweep:` "
                         f"section changed since); {force}")
    # trials tuned on another cluster, image or node layout do not carry over; a new code
    # version does (the sweep would otherwise be refused after every edit)
    changed = [f"{key} {tags[key]!r} (now {template.tags[key]!r})"
               for key in ("compute", "environment", "resources")
               if key in tags and tags[key] != template.tags.get(key)]
    if changed:
        _cli().bad_input(f"sweep {template.name} ran with another setup: {'; '.join(changed)}; "
                         f"{force}")
    if status in ("Failed", "Canceled", "NotResponding"):
        click.echo(f"error: sweep {template.name} ended {status}; {force}", err=True)
        sys.exit(1)


COMMANDS = [sweep]

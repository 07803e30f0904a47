"""What `train sweep` checks and writes before a sweep is sent: every trial fits the GPU, an
existing sweep of the same name is this very sweep, the budget, and the sweep as YAML."""

from __future__ import annotations

from training.azureml.sweep import (
    COST_FIELDS,
    MEMORY_FIELDS,
    build_sweep_job,
    costliest_trial,
    extreme_trial,
)
from training.errors import BadInput, Failed
from training.experiment.config import ExperimentConfig
from training.plan.pair_estimate import cluster_check

TRIAL_FIELDS = ("code", "command", "environment", "environment_variables", "distribution",
                "resources")


def sweep_yaml(template, cfg, code_dir: str) -> str:
    """The sweep job as YAML that `load_job` / `az ml job create -f` accept."""
    import io

    import yaml

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


def check_hungriest_trial(cfg: ExperimentConfig, outputs, on_note) -> None:
    """Every trial must fit the GPU, not only the file's values: a searched batch size, LoRA
    rank or checkpointing that does not fit would die of OOM after its (billed) start-up."""
    hungriest, values = extreme_trial(cfg, MEMORY_FIELDS)
    if values:
        shown = ", ".join(f"{k} {v}" for k, v in values.items())
        cluster_check(hungriest, outputs, on_note, what=f"the sweep's hungriest trial ({shown})")


def check_existing_sweep(existing, template, status: str) -> None:
    """A job of the sweep's name is reused only if it is this very sweep, still usable."""
    tags = existing.tags or {}
    force = "`train sweep --force` starts a new one beside it"
    if getattr(existing, "type", None) != "sweep" or "sweep_of" not in tags:
        raise BadInput(f"a job named {template.name} exists and is not a sweep made by "
                         f"`train sweep`; {force}")
    if "sweep_sha256" not in tags:
        raise BadInput(f"sweep {template.name} was made by an older version of this tool: "
                         f"whether it is this search cannot be checked; {force}")
    if tags["sweep_sha256"] != template.tags["sweep_sha256"]:
        raise BadInput(f"sweep {template.name} exists with another search (the `sweep:` "
                         f"section changed since); {force}")
    # trials tuned on another cluster, image or node layout do not carry over; a new code
    # version does (the sweep would otherwise be refused after every edit)
    changed = [f"{key} {tags[key]!r} (now {template.tags[key]!r})"
               for key in ("compute", "environment", "resources")
               if key in tags and tags[key] != template.tags.get(key)]
    if changed:
        raise BadInput(f"sweep {template.name} ran with another setup: {'; '.join(changed)}; "
                         f"{force}")
    if status in ("Failed", "Canceled", "NotResponding"):
        raise Failed(f"sweep {template.name} ended {status}; {force}")

def sweep_budget(cfg: ExperimentConfig, outputs, arm: str,
                 on_warning) -> tuple[str, list[str] | None]:
    """The sweep's expected cost (trials x one arm, every trial at the dearest values the search
    allows) and worst case (trials x azure.max_run_minutes, or the sweep's timeout x concurrent
    trials): (the line that says so, why it exceeds budget_usd; None without a budget)."""
    from training.plan.estimate import sweep_cost
    from training.plan.pair_estimate import data_not_here, make_estimate, pick

    vm, _ = pick(cfg, outputs)
    price = cfg.azure.price_per_hour or vm.price_per_hour
    trial = None
    if not data_not_here(cfg):  # every trial priced as the dearest the search allows
        est = make_estimate(costliest_trial(cfg), outputs)
        tuned = next(a for a in est.arms if a.arm == arm)
        trial = tuned.cost_usd
        if why := est.timeout(tuned):
            on_warning(f"the dearest trial, {why}")
    expected, worst = sweep_cost(cfg, price, trial)
    dearest = [k for k in cfg.sweep.search_space if k in COST_FIELDS]
    shown = (f"{expected:,.2f} USD" + (f" (every trial at the dearest {', '.join(dearest)})"
                                       if dearest else "") if expected is not None
             else "unknown (the data is not on this machine)",
             f"{worst:,.2f} USD" if worst is not None
             else "no bound (set azure.max_run_minutes or sweep.timeout_minutes)")
    line = (f"sweep: {cfg.sweep.max_total_trials} trials on {vm.name} at {price:.2f} "
            f"USD/node-hour: expected {shown[0]}, worst case {shown[1]}")
    if cfg.budget_usd is None:
        return line, None
    problems = [f"the sweep's {what} {v:,.2f} USD exceeds budget_usd {cfg.budget_usd:,.2f}"
                for what, v in (("estimate", expected), ("worst case", worst))
                if v is not None and v > cfg.budget_usd]
    if worst is None:
        problems.append("budget_usd cannot be checked: nothing bounds the sweep (set "
                        "azure.max_run_minutes or sweep.timeout_minutes)")
    return line, problems

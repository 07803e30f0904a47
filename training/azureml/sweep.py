"""Hyperparameter sweeps on one arm, and carrying the best trial's values to both arms.

Azure ML checks a sweep's rules only after submission (a grid of `uniform`s, bayesian sampling with
an early termination policy...); `sweep_problems` checks them here first, each naming the field:

- grid sampling takes only `choice`;
- bayesian sampling takes `choice`, `uniform` and `quniform`, and no early termination;
- a parameter must be a field of `training` or `lora`, and its values valid for that field;
- 1-1000 trials in all, 1-100 at once (the schema enforces those ranges).

Each trial is the arm's job with `--set field=${{inputs.<name>}}` for every sampled field; the
recipe validates the values like the file. Tuning on the control arm biases the comparison against
the experiment arm: the conservative direction.
"""

from __future__ import annotations

import math
import re

from training.azureml.jobs import ArmJob, JobSpecError, build_command, plan_pair, world_size
from training.experiment.config import ExperimentConfig, SweepSettings

BAYESIAN_TYPES = {"choice", "uniform", "quniform"}
# What a sweep may tune: hyperparameters. Not the seed (a lucky seed is not a finding), not the
# replicates, precision, sharding or evaluation/checkpoint cadence, not max_seq_length (it changes
# which examples are valid).
SWEEPABLE = ("training.learning_rate", "training.lr_scheduler", "training.warmup",
             "training.weight_decay", "training.per_device_batch_size",
             "training.gradient_accumulation_steps", "training.epochs", "training.max_steps",
             "training.gradient_checkpointing", "training.packing",
             "lora.r", "lora.alpha", "lora.dropout")


def input_name(field: str) -> str:
    """`training.learning_rate` -> `training_learning_rate` (job input names have no dots)."""
    return field.replace(".", "_")


def field_of(name: str) -> str:
    section, _, rest = name.partition("_")
    return f"{section}.{rest}"


def sampled_ends(p) -> list:
    """The extreme values a trial may get from a search parameter: every choice, else min_value
    and max_value (quniform's as Azure rounds them)."""
    if p.type == "choice":
        return list(p.values)
    if p.type == "quniform":  # Azure samples round(uniform(min, max) / q) * q
        return [round(v / p.q) * p.q for v in (p.min_value, p.max_value)]
    return [p.min_value, p.max_value]


def sweep_problems(cfg: ExperimentConfig) -> list[str]:
    """Every reason Azure ML would reject this sweep (or a trial would fail), as `sweep.x: why`."""
    from training.experiment.config import ConfigError
    from training.experiment.overrides import apply_overrides, tunable_fields

    sweep = cfg.sweep
    if sweep is None:
        return ["sweep: the experiment file has no sweep section (search_space, sampling, ...)"]
    problems = []
    fields = tunable_fields()
    for key, p in sweep.search_space.items():
        where = f"sweep.search_space.{key}"
        if key not in fields:
            problems.append(f"{where}: not a field of training or lora")
            continue
        if key not in SWEEPABLE:
            problems.append(f"{where}: not a hyperparameter a sweep may tune (one of: "
                            f"{', '.join(SWEEPABLE)})")
            continue
        if key == "training.epochs" and cfg.training.max_steps:
            problems.append(f"{where}: training.max_steps is set and wins over epochs: every "
                            "trial would be the same")
            continue
        if sweep.sampling == "grid" and p.type != "choice":
            problems.append(f"{where}: grid sampling takes only choice (got {p.type})")
        if sweep.sampling == "bayesian" and p.type not in BAYESIAN_TYPES:
            problems.append(f"{where}: bayesian sampling takes choice, uniform or quniform "
                            f"(got {p.type})")
        if p.type == "choice":
            if not p.values or p.min_value is not None or p.max_value is not None or p.q:
                problems.append(f"{where}: choice takes `values` (a list) only")
                continue
        else:
            if p.values is not None or p.min_value is None or p.max_value is None:
                problems.append(f"{where}: {p.type} takes min_value and max_value")
                continue
            if p.min_value >= p.max_value:
                problems.append(f"{where}: min_value must be below max_value")
                continue
            if p.type == "loguniform" and p.min_value <= 0:
                problems.append(f"{where}: loguniform needs min_value > 0")
                continue
            if (p.type == "quniform") != (p.q is not None):
                problems.append(f"{where}: q goes with quniform only")
                continue
            if fields[key] in (int, int | None) and p.type != "quniform":
                problems.append(f"{where}: an integer field: use choice, or quniform with an "
                                "integer q")
                continue
            if p.type == "quniform" and fields[key] in (int, int | None) and not float(
                    p.q).is_integer():
                problems.append(f"{where}: an integer field needs an integer q")
                continue
        samples = sampled_ends(p)
        if p.type == "quniform" and samples[0] == samples[1]:
            problems.append(f"{where}: with q {p.q:g} every trial gets {samples[0]:g}")
            continue
        for value in samples:  # the values a trial may get must pass the recipe's validation
            try:
                apply_overrides(cfg, {key: value}, source=where)
            except ConfigError as e:
                problems.append(str(e).splitlines()[-1].strip() + f" ({where}, value {value!r})")
                break
    if sweep.sampling == "bayesian" and sweep.early_termination is not None:
        problems.append("sweep.early_termination: bayesian sampling takes no early termination")
    if sweep.max_concurrent_trials > sweep.max_total_trials:
        problems.append("sweep.max_concurrent_trials: more than max_total_trials")
    return problems


# Searched fields that make a trial dearer as they grow (more steps, tokens or recomputation).
COST_FIELDS = {"training.epochs": max, "training.max_steps": max,
               "training.per_device_batch_size": max,
               "training.gradient_accumulation_steps": max,
               "training.gradient_checkpointing": max}  # True recomputes
# Searched fields that make a trial hungrier for GPU memory.
MEMORY_FIELDS = {"training.per_device_batch_size": max, "lora.r": max,
                 "training.gradient_checkpointing": min}  # False keeps every activation


def extreme_trial(cfg: ExperimentConfig, fields: dict) -> tuple[ExperimentConfig, dict]:
    """The arm's config with each searched field of `fields` at its extreme (max or min) sampled
    value, and those values: the dearest trial (COST_FIELDS, what the sweep's estimate prices)
    or the hungriest (MEMORY_FIELDS, what must fit the GPU). Call on a sweep that passed
    `sweep_problems`; values that pass alone but not together leave the file's config."""
    from training.experiment.config import ConfigError
    from training.experiment.overrides import apply_overrides

    chosen = {}
    for key, p in cfg.sweep.search_space.items():
        values = [v for v in sampled_ends(p) if v is not None and not isinstance(v, str)]
        if key in fields and values:
            chosen[key] = fields[key](values)
    try:
        return apply_overrides(cfg, chosen, source="sweep.search_space"), chosen
    except ConfigError:
        return cfg, {}


def costliest_trial(cfg: ExperimentConfig) -> ExperimentConfig:
    """The dearest trial the search allows: what the sweep's estimate prices."""
    return extreme_trial(cfg, COST_FIELDS)[0]


def sweep_name(pair_id: str, arm: str, stamp: str | None = None) -> str:
    """The sweep job's name; `stamp` (--force) makes a new sweep beside an older one."""
    return f"{pair_id}-sweep-{arm}" + (f"-{stamp}" if stamp else "")


SWEEP_JOB = re.compile(r"^[a-z0-9][a-z0-9_-]*-sweep-(control|experiment)(-[0-9]{14})?\Z")


def sweep_sha256(cfg: ExperimentConfig) -> str:
    """The search itself (space, objective, limits): the pair id leaves `sweep:` out, so this
    tells a sweep of another search under the same name."""
    import hashlib
    import json

    text = json.dumps(cfg.sweep.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def plan_sweep(cfg: ExperimentConfig, outputs, pair_id: str, arm: str,
               code_version: str, stamp: str | None = None) -> ArmJob:
    """The trial template: the arm's job with the sampled fields as inputs and no fixed output
    path (each trial writes its own folder). Raises JobSpecError."""
    problems = sweep_problems(cfg)
    if problems:
        raise JobSpecError("the sweep is not valid:\n  " + "\n  ".join(problems))
    single = cfg.model_copy(update={"training": cfg.training.model_copy(update={"replicates": 1})})
    job = next(j for j in plan_pair(single, outputs, pair_id, code_version) if j.arm == arm)
    search = {input_name(k): k for k in cfg.sweep.search_space}
    # Trials are tagged with the sweep's own id, never the pair's: `train compare PAIR` must not
    # find a trial as one of the pair's arms.
    name = sweep_name(pair_id, arm, stamp)
    tags = {**job.tags, "pair_id": name, "sweep_of": pair_id, "tuned_on_arm": arm,
            "config_sha256": cfg.sha256(),  # what --from-sweep checks the experiment against
            "sweep_sha256": sweep_sha256(cfg),  # what a second `train sweep` checks
            "world_size": str(world_size(cfg))}  # what --from-sweep checks: the global batch
    template = ArmJob(**{**vars(job), "name": name, "pair_id": name, "parent_pair_id": name,
                         "output_path": None, "search_inputs": search, "tags": tags})
    from training.azureml.jobs import check_references

    check_references(template)
    return template


def _distribution(p):
    from azure.ai.ml.sweep import Choice, LogUniform, QUniform, Uniform

    if p.type == "choice":
        return Choice(values=list(p.values))
    if p.type == "uniform":
        return Uniform(min_value=p.min_value, max_value=p.max_value)
    if p.type == "loguniform":  # Azure's bounds are exponents: the values are exp(uniform(a, b))
        return LogUniform(min_value=math.log(p.min_value), max_value=math.log(p.max_value))
    return QUniform(min_value=p.min_value, max_value=p.max_value, q=p.q)


def _policy(et):
    from azure.ai.ml.sweep import BanditPolicy, MedianStoppingPolicy, TruncationSelectionPolicy

    if et is None:
        return None
    common = {"evaluation_interval": et.evaluation_interval,
              "delay_evaluation": et.delay_evaluation}
    if et.type == "bandit":
        return BanditPolicy(slack_factor=et.slack_factor or 0.1, **common)
    if et.type == "median":
        return MedianStoppingPolicy(**common)
    return TruncationSelectionPolicy(truncation_percentage=et.truncation_percentage or 20,
                                     **common)


def build_sweep_job(template: ArmJob, sweep: SweepSettings, code_dir: str):
    """The SDK's SweepJob (imports azure-ai-ml)."""
    defaults = {}
    for key, p in sweep.search_space.items():
        defaults[input_name(key)] = p.values[0] if p.type == "choice" else p.min_value
    command = build_command(template, code_dir, defaults)
    trial = command(**{input_name(k): _distribution(p) for k, p in sweep.search_space.items()})
    job = trial.sweep(compute=template.compute, sampling_algorithm=sweep.sampling,
                      primary_metric=sweep.objective, goal="Minimize",
                      early_termination_policy=_policy(sweep.early_termination))
    job.set_limits(max_total_trials=sweep.max_total_trials,
                   max_concurrent_trials=sweep.max_concurrent_trials,
                   timeout=sweep.timeout_minutes * 60 if sweep.timeout_minutes else None,
                   trial_timeout=template.timeout_s)
    job.name = template.name
    job.display_name = f"{template.tags['sweep_of']} sweep on {template.arm}"
    job.experiment_name = template.experiment_name
    job.tags = dict(template.tags)
    return job


def best_values(client, sweep_job_name: str, cfg: ExperimentConfig) -> tuple[dict, str, str]:
    """(field -> value of the best trial, the arm it was tuned on, the best trial's name).
    Raises JobSpecError when the sweep is not one of this experiment's, or has no usable best
    trial."""
    from azure.core.exceptions import ResourceNotFoundError

    from training.experiment.overrides import parse_scalar

    what = f"--from-sweep {sweep_job_name}"
    try:
        sweep = client.jobs.get(sweep_job_name)
    except ResourceNotFoundError:
        raise JobSpecError(f"{what}: no such job in this workspace") from None
    if getattr(sweep, "type", None) != "sweep":
        raise JobSpecError(f"{what}: a {sweep.type} job, not a sweep")
    tags = sweep.tags or {}
    if "tuned_on_arm" not in tags or "config_sha256" not in tags:
        raise JobSpecError(f"{what}: not a sweep made by `train sweep` (no tuned_on_arm / "
                           "config_sha256 tags): its values cannot be traced to this experiment")
    if tags.get("world_size", str(world_size(cfg))) != str(world_size(cfg)):
        raise JobSpecError(f"{what}: tuned with {tags['world_size']} processes per arm, this pair "
                           f"runs {world_size(cfg)} (azure.instance_count x processes_per_node): "
                           "the global batch differs, so the tuned values may not carry over; "
                           "sweep at this size")
    if tags["config_sha256"] != cfg.sha256():
        raise JobSpecError(f"{what}: made from another experiment file (config {tags['config_sha256'][:12]}, "
                           f"this one {cfg.sha256()[:12]}): tune this experiment with `train sweep`")
    status = str(getattr(sweep.status, "value", sweep.status))
    best = (sweep.properties or {}).get("best_child_run_id")
    if not best:
        raise JobSpecError(f"{what}: no best trial yet (status {status}); wait for the sweep to "
                           "finish")
    if status != "Completed":
        raise JobSpecError(f"{what}: the sweep is {status}, not Completed: its best trial is the "
                           "best of an unfinished search")
    trial = client.jobs.get(best)
    names = set(sweep.search_space or {})
    values = {}
    for name, value in (trial.inputs or {}).items():
        if name in names:
            value = getattr(value, "_data", value)
            # the service hands literal inputs back as text: read them as the sampler wrote them
            values[field_of(name)] = parse_scalar(value) if isinstance(value, str) else value
    lacking = sorted(field_of(n) for n in names if field_of(n) not in values)
    if lacking or not values:
        raise JobSpecError(f"{what}: the best trial {best} has no value for "
                           f"{', '.join(lacking) or 'any searched field'}")
    return values, tags["tuned_on_arm"], best

"""The budget guards of `train submit` and `train sweep`: before anything is created, the cost
(`train estimate`'s figures, or the worst case when the data is only in the workspace) against
`budget_usd`; exit 1 over it unless `--allow-over-budget`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from training.cli.estimate import _cli, _print_timeouts, count_data, guarded_estimate, pick


def data_not_here(cfg) -> list[str]:
    """The experiment's data files that are not on this machine (the data may live only in the
    workspace): the guards then check what they can without them."""
    from training.plan.prepare import data_files

    return [str(p) for p in data_files(cfg).values() if not Path(p).is_file()]


def check_local_data(cfg) -> bool:
    """`train submit` without a budget to check: the data files, when they are on this machine,
    are validated as `train data validate` would (exit 2 on a bad row). Returns whether they
    were (False: the data is only in the workspace)."""
    from training.data import DataError

    if data_not_here(cfg):
        return False
    try:
        count_data(cfg)
    except (ValueError, OSError, DataError) as e:
        _cli().bad_input(str(e))
    return True


def budget_guard(cfg, outputs, allow_over_budget: bool, console) -> Callable[[], None]:
    """Before `train submit` sends anything: price the pair (bad data is exit 2 here) and warn
    when nothing bounds the cost. Returns the check that refuses (exit 1) a pair whose estimate
    or worst case exceeds budget_usd, unless allowed: submit runs it only when it would create a
    job, so a pair that exists is reported whatever the budget says now."""
    if cfg.azure.max_run_minutes is None:
        console.print("[yellow]warning:[/] azure.max_run_minutes is not set: the cost of the pair "
                      "has no upper bound")
    if cfg.budget_usd is None:
        return lambda: None
    missing = data_not_here(cfg)
    if missing:  # the data lives in the workspace: only the worst case can be checked here
        console.print(f"[yellow]note:[/] {', '.join(missing)} not on this machine: the budget "
                      "is checked against the worst case only")
        problems = _worst_case_problems(cfg, outputs)
        if cfg.azure.max_run_minutes is None:
            problems = ["budget_usd cannot be checked: the data is not on this machine (no "
                        "estimate) and azure.max_run_minutes is not set (no worst case)"]
    else:
        est = guarded_estimate(cfg, outputs)
        _print_timeouts(est, console)
        problems = est.over_budget
    return lambda: enforce_budget(
        problems, cfg.budget_usd, allow_over_budget, console,
        "Nothing was submitted: lower the cost (fewer steps, a smaller azure.max_run_minutes), "
        "set azure.max_run_minutes, or pass --allow-over-budget (`train estimate` shows the "
        "figures)")


def enforce_budget(problems: list[str], budget_usd: float, allow_over_budget: bool, console,
                   refusal: str) -> None:
    """The budget guards' end: within budget, submitted anyway when allowed, else exit 1 with
    every problem and what to change (`refusal`)."""
    if not problems:
        console.print(f"within budget_usd {budget_usd:,.2f}")
        return
    if allow_over_budget:
        console.print("[yellow]over budget, submitted anyway (--allow-over-budget):[/] "
                      + "; ".join(problems))
        return
    click.echo("error: " + "; ".join(problems) + f". {refusal}", err=True)
    sys.exit(1)


def sweep_budget_guard(cfg, outputs, arm: str, allow_over_budget: bool, console) -> None:
    """Before `train sweep` sends anything: its expected cost (trials x one arm) and worst case
    (trials x azure.max_run_minutes, or the sweep's timeout x concurrent trials) against
    budget_usd; exit 1 over it unless allowed."""
    from training.plan.estimate import sweep_cost
    from training.azureml.sweep import COST_FIELDS, costliest_trial

    try:
        vm, _ = pick(cfg, outputs)
    except ValueError as e:
        _cli().bad_input(str(e))
    price = cfg.azure.price_per_hour or vm.price_per_hour
    here = not data_not_here(cfg)
    trial = None
    if here:  # every trial priced as the dearest the search allows
        est = guarded_estimate(costliest_trial(cfg), outputs)
        tuned = next(a for a in est.arms if a.arm == arm)
        trial = tuned.cost_usd
        if why := est.timeout(tuned):
            console.print(f"warning: the dearest trial, {why}", style="yellow", markup=False,
                          highlight=False)
    expected, worst = sweep_cost(cfg, price, trial)
    dearest = [k for k in cfg.sweep.search_space if k in COST_FIELDS]
    shown = (f"{expected:,.2f} USD" + (f" (every trial at the dearest {', '.join(dearest)})"
                                       if dearest else "") if expected is not None
             else "unknown (the data is not on this machine)",
             f"{worst:,.2f} USD" if worst is not None
             else "no bound (set azure.max_run_minutes or sweep.timeout_minutes)")
    console.print(f"sweep: {cfg.sweep.max_total_trials} trials on {vm.name} at {price:.2f} "
                  f"USD/node-hour: expected {shown[0]}, worst case {shown[1]}", highlight=False)
    if cfg.budget_usd is None:
        return
    problems = [f"the sweep's {what} {v:,.2f} USD exceeds budget_usd {cfg.budget_usd:,.2f}"
                for what, v in (("estimate", expected), ("worst case", worst))
                if v is not None and v > cfg.budget_usd]
    if worst is None:
        problems.append("budget_usd cannot be checked: nothing bounds the sweep (set "
                        "azure.max_run_minutes or sweep.timeout_minutes)")
    enforce_budget(problems, cfg.budget_usd, allow_over_budget, console,
                   "Nothing was submitted: fewer trials (sweep.max_total_trials), a smaller "
                   "azure.max_run_minutes or sweep.timeout_minutes, or --allow-over-budget")


def _worst_case_problems(cfg, outputs) -> list[str]:
    from training.plan.estimate import worst_case_problems, worst_case_usd

    try:
        vm, _ = pick(cfg, outputs)
    except ValueError as e:
        _cli().bad_input(str(e))
    price = cfg.azure.price_per_hour or vm.price_per_hour
    return worst_case_problems(worst_case_usd(cfg, price), cfg.budget_usd)

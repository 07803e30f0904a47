"""`train estimate`: the pair's time and cost on Azure ML (or a hosted service) before submitting,
on stdout (`--format json`: one object, numbers as numbers). The figures are
training.plan.pair_estimate's (Azure ML) and training.hosted.cost's (a hosted service)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from training.cli.common import diagnostics, emit_json, format_option, note, results


def _finite(value, name):
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number", param_hint=name)
    return value


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="The experiment file (YAML).")
@click.option("--stack", default=None, metavar="NAME",
              help="Read the clusters' VM sizes from this Pulumi stack's outputs.")
@click.option("--outputs-file", type=click.Path(path_type=Path), default=None,
              help="The stack outputs saved as JSON, instead of --stack.")
@click.option("--pulumi-dir", type=click.Path(path_type=Path), default=Path("."),
              show_default=True, help="The folder that holds Pulumi.yaml.")
@click.option("--mfu", type=click.FloatRange(min=0.01, max=1), default=None,
              callback=lambda ctx, param, v: _finite(v, "--mfu"),
              help="Assumed model FLOPs utilisation, 0.01-1 [default: 0.14, measured on an H100 (bench/README.md)].")
@format_option("table", "json")
def estimate(config_path, stack, outputs_file, pulumi_dir, mfu, fmt):
    """Time and cost of the pair on Azure ML before submitting it, and the worst case.

    Without --stack or --outputs-file the VM size is azure.vm_size, else the infra default.
    The formulas are printed with the figures; the price table is dated and overridable
    (azure.price_per_hour).

    \b
    train estimate --config experiments/paired-comments.yaml --stack dev > estimate.txt
    train estimate --config F --format json | jq .cost_usd
    """
    from training.experiment.config import load_config
    from training.experiment.stack import load_outputs
    from training.plan.pair_estimate import cluster_check, estimate_notes, make_estimate, pick

    cfg = load_config(config_path)
    if cfg.backend != "azureml":
        _hosted_estimate(cfg, fmt)
        return
    outputs = load_outputs(stack, outputs_file, pulumi_dir) if stack or outputs_file else None
    # `train submit` checks it before its guard; here it is printed as well
    plan = cluster_check(cfg, outputs, note(diagnostics()),
                         nothing_done="the pair would not run")
    est = make_estimate(cfg, outputs, mfu)
    notes = estimate_notes(cfg, pick(cfg, outputs)[0])
    if fmt == "json":
        emit_json({**est.to_dict(), "memory_plan": plan.to_dict() if plan else None,
                   "fits": plan.fits if plan else None, "notes": notes})
        return
    out = results()
    render(est, out)
    if plan is not None:
        out.print("\n".join(plan.lines()), highlight=False)
    for text in notes:
        out.print(f"note: {text}", highlight=False)


def render(est, console) -> None:
    from rich.table import Table

    from training.plan.model_shape import params_text

    console.print(f"[bold]{est.vm_size}[/] ({est.vm_source}): {est.gpus_per_arm} x "
                  f"{est.accelerator} per arm, {est.nodes_per_arm} node(s), "
                  f"{est.price_per_hour:.2f} USD/node-hour ({est.price_source})")
    console.print(f"model: {params_text(est.n_params)} parameters, {est.method}; FLOPs = {est.flops_formula}")
    console.print(f"throughput: {est.peak_tflops:g} TFLOP/s peak x MFU {est.mfu:.0%} "
                  f"({est.mfu_source}); tokens {est.token_source}")
    table = Table(box=None, pad_edge=False)
    for col in ("arm", "tokens", "steps", "PFLOPs", "hours", "USD"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for a in est.arms:
        table.add_row(a.arm, f"{a.tokens_trained:,}", f"{a.optimizer_steps:,}",
                      f"{(a.train_flops + a.eval_flops) / 1e15:,.1f}", f"{a.hours:.2f}",
                      f"{a.cost_usd:,.2f}")
    console.print(table)
    reps = f" x {est.replicates} replicates" if est.replicates > 1 else ""
    console.print(f"pair{reps}: [bold]{est.cost_usd:,.2f} USD[/] (start-up of 10 min per job "
                  "included; queueing excluded)")
    if est.worst_case_usd is None:
        console.print("[yellow]worst case: no upper bound[/] (set azure.max_run_minutes: a hard "
                      "timeout per arm)")
    else:
        console.print(f"worst case (azure.max_run_minutes, the hard cap): "
                      f"{est.worst_case_usd:,.2f} USD")
    if est.budget_usd is not None:
        verdict = "; ".join(est.over_budget) or "within it"
        console.print(f"budget_usd {est.budget_usd:,.2f}: {verdict}")
    for problem in est.timeouts:
        console.print(f"warning: {problem}", style="yellow", markup=False, highlight=False)


def _hosted_estimate(cfg, fmt: str) -> None:
    """A managed fine-tuning service bills training tokens: tokens x epochs x price per million."""
    from dataclasses import asdict

    from training.hosted.backend import prepare
    from training.hosted.cost import budget_problems, pair_cost

    costs = pair_cost(cfg, prepare(cfg).report)
    total = sum(c.usd for c in costs.values())
    over = budget_problems(cfg, costs)
    if fmt == "json":
        emit_json({"backend": cfg.backend, "model": cfg.base_model,
                   "arms": {a: asdict(c) for a, c in costs.items()},
                   "cost_usd": total, "budget_usd": cfg.budget_usd, "over_budget": over,
                   "prices": ("OpenAI list prices; Azure OpenAI's depend on the region and "
                              "deployment, plus hosting per hour"
                              if cfg.backend == "azure-openai" else "OpenAI list prices")})
        return
    out = results()
    out.print(f"{cfg.backend}: {cfg.base_model}; cost = billed training tokens (tokens per "
              "epoch x epochs) x price per million")
    for arm, c in costs.items():
        out.print(f"  {arm:<10} {c.n_examples:,} examples, {c.tokens_per_epoch:,} tokens x "
                  f"{c.n_epochs} epochs = {c.billed_tokens:,} tokens x {c.usd_per_million:g} "
                  f"USD/M (prices {c.prices_as_of}) = {c.usd:,.2f} USD")
    out.print(f"pair: [bold]{total:,.2f} USD[/]"
              + (f" (budget_usd {cfg.budget_usd:,.2f})" if cfg.budget_usd else ""))
    if cfg.backend == "azure-openai":
        out.print("[yellow]note:[/] these are OpenAI's list prices: Azure OpenAI's depend on "
                  "the region and deployment type, and it also bills hosting the fine-tuned "
                  "model per hour; read the figure as an order of magnitude")
    if over:
        out.print(f"[yellow]over budget:[/] the estimate {total:,.2f} USD exceeds budget_usd "
                  f"{cfg.budget_usd:,.2f}: `train submit` refuses it without "
                  "--allow-over-budget")

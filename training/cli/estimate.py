"""`train estimate`: the pair's time and cost on Azure ML (or a hosted service) before submitting,
and the checks it shares with submit and sweep (the VM, the memory plan); the budget guards that
use its figures are in `cli_budget.py`.

Counting the data's tokens is the only slow part: with the base model's tokenizer when it can be
loaded without a download (tiny-llama, a local folder, or the hub cache), else a characters rule
that the output names.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from training.experiment.config import ARMS


def _cli():
    from training.cli import app as cli

    return cli


def cluster_kind(cfg, outputs) -> str:
    compute = cfg.azure.compute
    if compute in ("gpu", "cpu"):
        return compute
    if outputs is not None and compute == outputs.cpu_cluster:
        return "cpu"
    return "gpu"


def _tokenizer_offline(cfg):
    """The base model's tokenizer if it is here already, else None (never a download)."""
    from training.experiment.models import TINY_LLAMA, load_tokenizer, resolve_base_model

    try:
        if cfg.base_model == TINY_LLAMA or Path(cfg.base_model).expanduser().is_dir():
            return load_tokenizer(resolve_base_model(cfg.base_model))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(cfg.base_model, revision=cfg.base_model_revision,
                                             local_files_only=True)
    except Exception:  # not cached, gated, offline: the characters rule instead
        return None


def _characters(path: Path) -> tuple[int, int]:
    from training.data import load_examples

    rows = load_examples(path)

    def text(value) -> int:
        if isinstance(value, str):
            return len(value)
        if isinstance(value, dict):
            return sum(text(v) for v in value.values())
        if isinstance(value, list):
            return sum(text(v) for v in value)
        return 0

    return len(rows), sum(text(r) for r in rows)


def count_data(cfg) -> tuple[dict, int | None, str]:
    """(arm -> DataTokens, eval tokens or None, how they were counted). Raises OSError/DataError."""
    from training.data import DataError, validate_files
    from training.plan.estimate import DataTokens, tokens_from_characters

    files = {arm: cfg.train_file(arm) for arm in ARMS}
    if cfg.eval is not None:
        files["eval"] = cfg.eval
    missing = [f"{k}: {p}" for k, p in files.items() if not Path(p).exists()]
    if missing:
        raise FileNotFoundError("data file not found: " + ", ".join(missing))
    tokenizer = _tokenizer_offline(cfg)
    # the same checks as `train data validate`: an estimate of broken data is no estimate
    report = validate_files([str(p) for p in files.values()], tokenizer=tokenizer)
    if not report.ok:
        raise DataError(["the data is not valid (`train data validate` lists every problem):",
                         *(f"  {p}" for p in report.problems[:20])])
    empty = [str(p) for p, f in zip(files.values(), report.files, strict=True) if not f.rows]
    if empty:
        raise DataError([f"no examples in {', '.join(empty)}"])
    counts = {}
    if tokenizer is not None:
        for key, summary in zip(files, report.files, strict=True):
            tokens = round(summary.tokens.mean * summary.rows) if summary.tokens else 0
            counts[key] = DataTokens(summary.rows, tokens)
        source = f"counted with the {cfg.base_model} tokenizer"
    else:
        for key, path in files.items():
            rows, chars = _characters(Path(path))
            counts[key] = DataTokens(rows, tokens_from_characters(chars))
        source = ("estimated at 4 characters per token (the base model's tokenizer is not "
                  "available offline)")
    eval_tokens = counts.pop("eval").tokens if "eval" in counts else None
    return counts, eval_tokens, source


def n_params_of(cfg) -> int:
    from training.plan.model_shape import model_shape

    return model_shape(cfg.base_model, cfg.base_model_revision).n_params


def pick(cfg, outputs):
    """(VmSize, where its name came from); raises ValueError for what cannot run on it."""
    from training.plan.estimate import pick_vm
    from training.experiment.stack import StackError

    if outputs is not None:  # a cluster the stack does not have: what submit refuses
        try:
            outputs.cluster(cfg.azure.compute)
        except StackError as e:
            raise ValueError(str(e)) from None
    vm, source = pick_vm(cfg, outputs and outputs.gpu_vm_size, outputs and outputs.cpu_vm_size,
                         cluster_kind(cfg, outputs))
    if vm.is_gpu and cfg.azure.processes_per_node > vm.count:
        raise ValueError(f"azure.processes_per_node is {cfg.azure.processes_per_node} but "
                         f"{vm.name} has {vm.count} GPU(s) per node: one process per GPU")
    return vm, source


def cluster_check(cfg, outputs, console, nothing_done: str = "nothing was submitted",
                  what: str = "one arm"):
    """Before `train submit`/`sweep` (dry runs too) and in `train estimate`: the processes fit
    the VM's GPUs and one arm fits their memory (the memory plan), else exit 2 with the figures
    and cheapest fixes. Returns the plan (None when the model's shape is unknown)."""
    from training.plan.memory import check_vm
    from training.plan.model_shape import ShapeUnknown, model_shape

    try:
        vm, _ = pick(cfg, outputs)
    except ValueError as e:
        _cli().bad_input(str(e))
    try:
        shape = model_shape(cfg.base_model, cfg.base_model_revision)
    except ShapeUnknown as e:
        console.print(f"[yellow]note:[/] no memory plan: {e}", highlight=False)
        return None
    check = check_vm(cfg, vm, shape)
    if not check.fits:
        _cli().bad_input(f"{what} does not fit {vm.name}'s GPU memory: {nothing_done}\n"
                         + "\n".join(check.lines()))
    return check


def make_estimate(cfg, outputs, mfu: float | None = None):
    """The pair's estimate; raises ValueError (bad settings) or OSError (data)."""
    from training.plan.estimate import DEFAULT_MFU, DEFAULT_MFU_SOURCE, estimate_pair

    vm, vm_source = pick(cfg, outputs)
    data, eval_tokens, token_source = count_data(cfg)
    return estimate_pair(
        cfg, vm=vm, vm_source=vm_source, n_params=n_params_of(cfg), data=data,
        eval_tokens=eval_tokens, token_source=token_source, mfu=mfu or DEFAULT_MFU,
        mfu_source="--mfu" if mfu else DEFAULT_MFU_SOURCE,
        price_per_hour=cfg.azure.price_per_hour)


def guarded_estimate(cfg, outputs, mfu=None):
    """make_estimate with every user mistake as exit 2."""
    from training.data import DataError

    try:
        return make_estimate(cfg, outputs, mfu)
    except (ValueError, OSError, DataError) as e:
        _cli().bad_input(str(e))


def render(est, console) -> None:
    from rich.table import Table

    console.print(f"[bold]{est.vm_size}[/] ({est.vm_source}): {est.gpus_per_arm} x "
                  f"{est.accelerator} per arm, {est.nodes_per_arm} node(s), "
                  f"{est.price_per_hour:.2f} USD/node-hour ({est.price_source})")
    size = (f"{est.n_params / 1e9:.2f}B" if est.n_params >= 1e9
            else f"{est.n_params / 1e6:.2f}M")
    console.print(f"model: {size} parameters, {est.method}; FLOPs = {est.flops_formula}")
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
    _print_timeouts(est, console)


def _print_timeouts(est, console) -> None:
    for problem in est.timeouts:
        console.print(f"warning: {problem}", style="yellow", markup=False, highlight=False)


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
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
def estimate(config_path, stack, outputs_file, pulumi_dir, mfu, fmt):
    """Time and cost of the pair on Azure ML before submitting it, and the worst case.

    Without --stack or --outputs-file the VM size is azure.vm_size, else the infra default.
    The formulas are printed with the figures; the price table is dated and overridable
    (azure.price_per_hour).
    """
    from training.experiment.stack import StackError, load_outputs

    cli = _cli()
    cfg = cli._load(config_path)
    if cfg.backend != "azureml":
        _hosted_estimate(cfg, fmt)
        return
    outputs = None
    if stack or outputs_file:
        try:
            outputs = load_outputs(stack, outputs_file, pulumi_dir)
        except StackError as e:
            cli.bad_input(str(e))
    # `train submit` checks it before its guard; here it is printed as well
    plan = cluster_check(cfg, outputs, cli._console(), nothing_done="the pair would not run")
    est = guarded_estimate(cfg, outputs, mfu)
    notes = estimate_notes(cfg, pick(cfg, outputs)[0])
    if fmt == "json":
        memory = {"memory_plan": plan.lines(), "fits": plan.fits} if plan else {}
        click.echo(json.dumps({**est.to_dict(), **memory, "notes": notes}, indent=2))
    else:
        render(est, cli._console())
        if plan is not None:
            cli._console().print("\n".join(plan.lines()), highlight=False)
        for note in notes:
            cli._console().print(f"note: {note}", highlight=False)


def estimate_notes(cfg, vm) -> list[str]:
    """What the formulas leave out for this config, in words."""
    t, notes = cfg.training, []
    if vm.is_gpu and cfg.azure.processes_per_node < vm.count:
        idle = vm.count - cfg.azure.processes_per_node
        notes.append(f"{vm.name} has {vm.count} GPUs per node and the arm runs "
                     f"{cfg.azure.processes_per_node} process(es) per node: {idle} GPU(s) per "
                     "node are paid for and idle (raise azure.processes_per_node to use them)")
    if not t.packing:
        notes.append("training.packing is off: padding tokens are computed too, which the "
                     "figures (real tokens, an MFU measured with packing) leave out: expect "
                     "more time on data of uneven lengths")
    if t.long_examples != "error":
        notes.append(f"training.long_examples: {t.long_examples}: examples over "
                     f"max_seq_length are counted whole, so the figures are an upper bound")
    return notes


def _hosted_estimate(cfg, fmt: str) -> None:
    """A managed fine-tuning service bills training tokens: tokens x epochs x price per million."""
    from training.hosted import service as hosted
    from training.hosted.backend import HostedError, prepare
    from training.hosted.cost import estimate_pair_cost

    try:
        prepared = prepare(cfg)
        costs = estimate_pair_cost(prepared.report, cfg.base_model, cfg.openai.n_epochs,
                                   token_limit=cfg.openai.example_token_limit)
    except (HostedError, hosted.HostedInputError) as e:
        _cli().bad_input(str(e))
    total = sum(c.usd for c in costs.values())
    if fmt == "json":
        from dataclasses import asdict

        over = ([f"the estimate {total:,.2f} USD exceeds budget_usd {cfg.budget_usd:,.2f}"]
                if cfg.budget_usd is not None and total > cfg.budget_usd else [])
        click.echo(json.dumps({"backend": cfg.backend, "model": cfg.base_model,
                               "arms": {a: asdict(c) for a, c in costs.items()},
                               "cost_usd": total, "budget_usd": cfg.budget_usd,
                               "over_budget": over,
                               "prices": ("OpenAI list prices; Azure OpenAI's depend on the "
                                          "region and deployment, plus hosting per hour"
                                          if cfg.backend == "azure-openai"
                                          else "OpenAI list prices")}, indent=2))
        return
    console = _cli()._console()
    console.print(f"{cfg.backend}: {cfg.base_model}; cost = billed training tokens (tokens per "
                  "epoch x epochs) x price per million")
    for arm, c in costs.items():
        console.print(f"  {arm:<10} {c.n_examples:,} examples, {c.tokens_per_epoch:,} tokens x "
                      f"{c.n_epochs} epochs = {c.billed_tokens:,} tokens x {c.usd_per_million:g} "
                      f"USD/M (prices {c.prices_as_of}) = {c.usd:,.2f} USD")
    console.print(f"pair: [bold]{total:,.2f} USD[/]"
                  + (f" (budget_usd {cfg.budget_usd:,.2f})" if cfg.budget_usd else ""))
    if cfg.backend == "azure-openai":
        console.print("[yellow]note:[/] these are OpenAI's list prices: Azure OpenAI's depend on "
                      "the region and deployment type, and it also bills hosting the fine-tuned "
                      "model per hour; read the figure as an order of magnitude")
    if cfg.budget_usd is not None and total > cfg.budget_usd:
        console.print(f"[yellow]over budget:[/] the estimate {total:,.2f} USD exceeds budget_usd "
                      f"{cfg.budget_usd:,.2f}: `train submit` refuses it without "
                      "--allow-over-budget")


def _finite(value, name):
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number", param_hint=name)
    return value


COMMANDS = [estimate]

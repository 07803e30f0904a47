"""The pair's estimate on Azure ML, from an experiment file and (optionally) the stack outputs: the
VM, the data's tokens, the model's size, the memory plan; and the budget check that `train submit`
makes with these figures (`train sweep`'s is in training.azureml.sweep).

Counting the data's tokens is the only slow part: with the base model's tokenizer when it can be
loaded without a download (tiny-llama, a local folder, or the hub cache), else a characters rule
that the estimate names. Every user mistake is a `PlanError` (bad input, exit 2).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from training.data import DataError
from training.errors import BadInput
from training.experiment.config import ARMS, ExperimentConfig
from training.experiment.stack import StackOutputs


class PlanError(BadInput):
    """The pair cannot run as configured on this VM, or its data cannot be counted (exit 2)."""


def cluster_kind(cfg: ExperimentConfig, outputs: StackOutputs | None) -> str:
    compute = cfg.azure.compute
    if compute in ("gpu", "cpu"):
        return compute
    if outputs is not None and compute == outputs.cpu_cluster:
        return "cpu"
    return "gpu"


def tokenizer_offline(cfg: ExperimentConfig):
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


def count_data(cfg: ExperimentConfig) -> tuple[dict, int | None, str]:
    """(arm -> DataTokens, eval tokens or None, how they were counted). Raises PlanError or
    DataError (both bad input)."""
    from training.data import validate_files
    from training.plan.estimate import DataTokens, tokens_from_characters

    files = {arm: cfg.train_file(arm) for arm in ARMS}
    if cfg.eval is not None:
        files["eval"] = cfg.eval
    missing = [f"{k}: {p}" for k, p in files.items() if not Path(p).exists()]
    if missing:
        raise PlanError("data file not found: " + ", ".join(missing))
    tokenizer = tokenizer_offline(cfg)
    # the same checks as `train data validate`: an estimate of broken data is no estimate
    try:
        report = validate_files([str(p) for p in files.values()], tokenizer=tokenizer)
    except OSError as e:
        raise PlanError(str(e)) from None
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


def n_params_of(cfg: ExperimentConfig) -> int:
    from training.plan.model_shape import model_shape

    return model_shape(cfg.base_model, cfg.base_model_revision).n_params


def pick(cfg: ExperimentConfig, outputs: StackOutputs | None):
    """(VmSize, where its name came from); PlanError for what cannot run on it."""
    from training.experiment.stack import StackError
    from training.plan.estimate import pick_vm

    if outputs is not None:  # a cluster the stack does not have: what submit refuses
        try:
            outputs.cluster(cfg.azure.compute)
        except StackError as e:
            raise PlanError(str(e)) from None
    try:
        vm, source = pick_vm(cfg, outputs and outputs.gpu_vm_size,
                             outputs and outputs.cpu_vm_size, cluster_kind(cfg, outputs))
    except ValueError as e:
        raise PlanError(str(e)) from None
    if vm.is_gpu and cfg.azure.processes_per_node > vm.count:
        raise PlanError(f"azure.processes_per_node is {cfg.azure.processes_per_node} but "
                        f"{vm.name} has {vm.count} GPU(s) per node: one process per GPU")
    return vm, source


def cluster_check(cfg: ExperimentConfig, outputs: StackOutputs | None,
                  on_note: Callable[[str], None], nothing_done: str = "nothing was submitted",
                  what: str = "one arm"):
    """Before `train submit`/`sweep` (dry runs too) and in `train estimate`: the processes fit
    the VM's GPUs and one arm fits their memory (the memory plan), else PlanError with the
    figures and cheapest fixes. Returns the plan (None when the model's shape is unknown)."""
    from training.plan.memory import check_vm
    from training.plan.model_shape import ShapeUnknown, model_shape

    vm, _ = pick(cfg, outputs)
    try:
        shape = model_shape(cfg.base_model, cfg.base_model_revision)
    except ShapeUnknown as e:
        on_note(f"no memory plan: {e}")
        return None
    check = check_vm(cfg, vm, shape)
    if not check.fits:
        raise PlanError(f"{what} does not fit {vm.name}'s GPU memory: {nothing_done}\n"
                        + "\n".join(check.lines()))
    return check


def make_estimate(cfg: ExperimentConfig, outputs: StackOutputs | None, mfu: float | None = None):
    """The pair's estimate (training.plan.estimate.PairEstimate); PlanError or DataError on a
    mistake in the settings or the data."""
    from training.plan.estimate import DEFAULT_MFU, DEFAULT_MFU_SOURCE, estimate_pair

    vm, vm_source = pick(cfg, outputs)
    data, eval_tokens, token_source = count_data(cfg)
    try:
        return estimate_pair(
            cfg, vm=vm, vm_source=vm_source, n_params=n_params_of(cfg), data=data,
            eval_tokens=eval_tokens, token_source=token_source, mfu=mfu or DEFAULT_MFU,
            mfu_source="--mfu" if mfu else DEFAULT_MFU_SOURCE,
            price_per_hour=cfg.azure.price_per_hour)
    except ValueError as e:
        raise PlanError(str(e)) from None


def estimate_notes(cfg: ExperimentConfig, vm) -> list[str]:
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


# ------------------------------------------------------------------------------------- budget
def data_not_here(cfg: ExperimentConfig) -> list[str]:
    """The experiment's data files that are not on this machine (the data may live only in the
    workspace): the guards then check what they can without them."""
    from training.plan.prepare import data_files

    return [str(p) for p in data_files(cfg).values() if not Path(p).is_file()]


def check_local_data(cfg: ExperimentConfig) -> bool:
    """`train submit` without a budget to check: the data files, when they are on this machine,
    are validated as `train data validate` would (bad input on a bad row). Returns whether they
    were (False: the data is only in the workspace)."""
    if data_not_here(cfg):
        return False
    count_data(cfg)
    return True


def pair_budget_problems(cfg: ExperimentConfig, outputs: StackOutputs | None,
                         on_note: Callable[[str], None],
                         on_warning: Callable[[str], None]) -> list[str]:
    """Why the pair would exceed `budget_usd` (empty: within it): the estimate when the data is
    on this machine, else the worst case (azure.max_run_minutes x price)."""
    from training.plan.estimate import worst_case_problems, worst_case_usd

    missing = data_not_here(cfg)
    if not missing:
        est = make_estimate(cfg, outputs)
        for problem in est.timeouts:
            on_warning(problem)
        return est.over_budget
    # the data lives in the workspace: only the worst case can be checked here
    on_note(f"{', '.join(missing)} not on this machine: the budget is checked against the "
            "worst case only")
    if cfg.azure.max_run_minutes is None:
        return ["budget_usd cannot be checked: the data is not on this machine (no estimate) "
                "and azure.max_run_minutes is not set (no worst case)"]
    vm, _ = pick(cfg, outputs)
    price = cfg.azure.price_per_hour or vm.price_per_hour
    return worst_case_problems(worst_case_usd(cfg, price), cfg.budget_usd)

"""Time and cost of a pair before it is submitted: pure functions, no I/O.

    tokens trained T  = epochs x tokens in the arm's data            (training.epochs)
                      = max_steps x batch x accumulation x processes x mean tokens per example
    training FLOPs    = 6·N·T  full fine-tuning (forward 2NT, backward 4NT)
                      = 4·N·T  LoRA / QLoRA (no weight gradients for the frozen base)
                      + 2·N·T  with gradient checkpointing (one more forward)
    evaluation FLOPs  = 2·N·E per evaluation, E = eval tokens; one every eval_every steps + the final
    time              = FLOPs / (GPUs x peak dense rate x utilisation) + start-up
    cost of an arm    = hours x nodes x price per node hour
    the pair          = 2 arms x replicates
    worst case        = max_run_minutes x nodes x price x 2 x replicates: the hard cap

N is the base model's parameter count; the utilisation (MFU) is an assumption you can override.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from training.experiment.config import ExperimentConfig
from training.plan.hardware import PRICES_AS_OF, PRICES_REGION, VmSize

# Measured, not assumed: bench/throughput.py --device cuda (bench/README.md), this recipe's defaults
# (LoRA, per-device batch 4, packing) on an H100 with a Llama-3-8B-shaped model: 13.6% by this
# module's FLOPs convention. Small packed micro-batches keep the GPU partly idle; larger ones and
# longer examples do better (16% at batch 8), hence `--mfu` for a measured figure of your own.
DEFAULT_MFU = 0.14
DEFAULT_MFU_SOURCE = ("measured: bench/throughput.py --device cuda, H100 80GB, Llama-3-8B-shaped "
                      "LoRA, per-device batch 4, packed, 2026-11-27 (bench/README.md)")
STARTUP_MINUTES = 10.0  # node allocation, image pull, model download, per job
CHARS_PER_TOKEN = 4.0  # the rule of thumb when no tokenizer can be loaded


@dataclass(frozen=True)
class DataTokens:
    """What the arm's data holds: rows and tokens (counted, or estimated from characters)."""

    rows: int
    tokens: int


@dataclass(frozen=True)
class ArmEstimate:
    arm: str
    tokens_trained: int
    optimizer_steps: int
    train_flops: float
    eval_flops: float
    hours: float
    cost_usd: float


@dataclass(frozen=True)
class PairEstimate:
    vm_size: str
    vm_source: str
    gpus_per_arm: int
    nodes_per_arm: int
    accelerator: str
    peak_tflops: float
    mfu: float
    mfu_source: str
    price_per_hour: float
    price_source: str
    n_params: int
    method: str
    flops_formula: str
    token_source: str
    replicates: int
    arms: list[ArmEstimate]
    cost_usd: float  # every arm of every replicate
    worst_case_usd: float | None  # None: no max_run_minutes, no upper bound
    budget_usd: float | None
    max_run_minutes: int | None = None

    def timeout(self, a: ArmEstimate) -> str | None:
        """Why arm `a` would be stopped by azure.max_run_minutes before it finishes (its cost
        then the worst case's, its training lost); None: it fits."""
        limit = self.max_run_minutes
        if not limit or a.hours * 60 <= limit:
            return None
        return (f"the estimated {a.hours:.2f} h exceed azure.max_run_minutes {limit} "
                f"({limit / 60:.2f} h): the job would be stopped before it finishes (raise "
                "azure.max_run_minutes or train fewer steps; --mfu if yours is measured higher)")

    @property
    def timeouts(self) -> list[str]:
        """Every arm's `timeout`, named (empty: none)."""
        return [f"{a.arm}: {why}" for a in self.arms if (why := self.timeout(a))]

    @property
    def over_budget(self) -> list[str]:
        """What exceeds budget_usd, as sentences (empty: within budget or no budget)."""
        if self.budget_usd is None:
            return []
        out = []
        if self.cost_usd > self.budget_usd:
            out.append(f"the estimate {self.cost_usd:,.2f} USD exceeds budget_usd "
                       f"{self.budget_usd:,.2f}")
        out += worst_case_problems(self.worst_case_usd, self.budget_usd)
        return out

    def to_dict(self) -> dict:
        data = asdict(self)
        data["over_budget"] = self.over_budget
        data["timeouts"] = self.timeouts
        return data


def flops_per_token(method: str, n_params: int, gradient_checkpointing: bool) -> tuple[float, str]:
    """Training FLOPs per token, and the formula in words."""
    if method == "full":
        factor, formula = 6, "6·N·T (full fine-tuning)"
    else:
        factor, formula = 4, f"4·N·T ({method}: no weight gradients for the frozen base)"
    if gradient_checkpointing:
        factor += 2
        formula += " + 2·N·T (gradient checkpointing)"
    return factor * n_params, formula


def optimizer_steps(cfg: ExperimentConfig, rows: int, world: int) -> int:
    t = cfg.training
    if t.max_steps:
        return t.max_steps
    per_step = t.per_device_batch_size * t.gradient_accumulation_steps * world
    return max(1, math.ceil(t.epochs * rows / per_step))


def tokens_trained(cfg: ExperimentConfig, data: DataTokens, world: int) -> int:
    t = cfg.training
    if t.max_steps:
        examples = t.max_steps * t.per_device_batch_size * t.gradient_accumulation_steps * world
        return round(examples * data.tokens / max(1, data.rows))
    return round(t.epochs * data.tokens)


def train_rows(cfg: ExperimentConfig, data: DataTokens) -> DataTokens:
    """Without a shared eval set each arm holds out eval_fraction of its rows."""
    if cfg.eval is not None:
        return data
    keep = 1 - cfg.training.eval_fraction
    return DataTokens(rows=round(data.rows * keep), tokens=round(data.tokens * keep))


def estimate_pair(cfg: ExperimentConfig, *, vm: VmSize, vm_source: str, n_params: int,
                  data: dict[str, DataTokens], eval_tokens: int | None, token_source: str,
                  mfu: float = DEFAULT_MFU, mfu_source: str = DEFAULT_MFU_SOURCE,
                  price_per_hour: float | None = None) -> PairEstimate:
    """The pair's estimate. `data`: control and experiment; `eval_tokens`: the shared eval set
    (None: each arm's holdout, counted from its own data)."""
    az = cfg.azure
    world = az.instance_count * az.processes_per_node
    gpus = world if vm.is_gpu else az.instance_count
    if not vm.is_gpu and mfu_source == DEFAULT_MFU_SOURCE:
        mfu_source = "assumed (a CPU VM: the estimate is an order of magnitude at best)"
    price = price_per_hour if price_per_hour is not None else vm.price_per_hour
    price_source = ("azure.price_per_hour" if price_per_hour is not None
                    else f"list price, {PRICES_REGION}, {PRICES_AS_OF}")
    per_token, formula = flops_per_token(cfg.method, n_params, cfg.training.gradient_checkpointing)
    rate = gpus * vm.accelerator.peak_tflops * 1e12 * mfu  # FLOP/s

    arms = []
    for arm in ("control", "experiment"):
        trained_on = train_rows(cfg, data[arm])
        steps = optimizer_steps(cfg, trained_on.rows, world)
        tokens = tokens_trained(cfg, trained_on, world)
        held_out = data[arm].tokens - trained_on.tokens
        # every eval_every steps, plus the final pass for the per-example losses
        evals = steps // cfg.training.eval_every + 1
        eval_flops = 2 * n_params * (eval_tokens if eval_tokens is not None else held_out) * evals
        train_flops = per_token * tokens
        hours = (train_flops + eval_flops) / rate / 3600 + STARTUP_MINUTES / 60
        arms.append(ArmEstimate(arm, tokens, steps, train_flops, eval_flops, hours,
                                hours * az.instance_count * price))

    replicates = cfg.training.replicates
    cost = sum(a.cost_usd for a in arms) * replicates
    worst = worst_case_usd(cfg, price)
    return PairEstimate(
        vm_size=vm.name, vm_source=vm_source, gpus_per_arm=gpus, nodes_per_arm=az.instance_count,
        accelerator=vm.accelerator.name, peak_tflops=vm.accelerator.peak_tflops, mfu=mfu,
        mfu_source=mfu_source, price_per_hour=price, price_source=price_source,
        n_params=n_params, method=cfg.method, flops_formula=formula, token_source=token_source,
        replicates=replicates, arms=arms, cost_usd=cost, worst_case_usd=worst,
        budget_usd=cfg.budget_usd, max_run_minutes=az.max_run_minutes)


def worst_case_usd(cfg: ExperimentConfig, price_per_hour: float) -> float | None:
    """The hard cap: every job of the pair runs to azure.max_run_minutes (None: no cap)."""
    az = cfg.azure
    if not az.max_run_minutes:
        return None
    return (az.max_run_minutes / 60 * az.instance_count * price_per_hour * 2
            * cfg.training.replicates)


def worst_case_problems(worst: float | None, budget_usd: float | None) -> list[str]:
    if worst is None or budget_usd is None or worst <= budget_usd:
        return []
    return [f"the worst case {worst:,.2f} USD (max_run_minutes) exceeds budget_usd "
            f"{budget_usd:,.2f}"]


def sweep_cost(cfg: ExperimentConfig, price_per_hour: float,
               trial_usd: float | None) -> tuple[float | None, float | None]:
    """(expected, worst case) USD of `train sweep`: every trial costs one arm's estimate
    (`trial_usd`, None when the data is not here); at worst every trial runs to
    azure.max_run_minutes, and the whole sweep stops at sweep.timeout_minutes with
    max_concurrent_trials running. None: no bound."""
    s, az = cfg.sweep, cfg.azure
    node_hour = az.instance_count * price_per_hour
    expected = None if trial_usd is None else s.max_total_trials * trial_usd
    caps = []
    if az.max_run_minutes:
        caps.append(s.max_total_trials * az.max_run_minutes / 60 * node_hour)
    if s.timeout_minutes:
        caps.append(min(s.max_concurrent_trials, s.max_total_trials) * s.timeout_minutes / 60
                    * node_hour)
    return expected, (min(caps) if caps else None)


def tokens_from_characters(characters: int) -> int:
    return math.ceil(characters / CHARS_PER_TOKEN)


def pick_vm(cfg: ExperimentConfig, gpu_vm_size: str | None, cpu_vm_size: str | None,
            cluster_kind: str) -> tuple[VmSize, str]:
    """The VM size the arms run on, and where that came from: the stack outputs (the clusters'
    real sizes), else azure.vm_size, else the infra program's default for the cluster kind.
    Raises ValueError for a size the table lacks without the overrides that replace it."""
    from training.plan.hardware import (
        DEFAULT_CPU_VM_SIZE,
        DEFAULT_GPU_VM_SIZE,
        Accelerator,
        VmSize,
        vm_size,
    )

    az = cfg.azure
    from_outputs = gpu_vm_size if cluster_kind == "gpu" else cpu_vm_size
    if from_outputs:
        name, source = from_outputs, "stack outputs"
        if az.vm_size and az.vm_size != from_outputs:  # the cluster is what runs: say so
            source += f"; azure.vm_size {az.vm_size} is not the cluster's size and is ignored"
    elif az.vm_size:
        name, source = az.vm_size, "azure.vm_size"
    else:
        name = DEFAULT_GPU_VM_SIZE if cluster_kind == "gpu" else DEFAULT_CPU_VM_SIZE
        source = "the infra program's default (no vm size in the stack outputs or azure.vm_size)"
    vm = vm_size(name)
    if vm is None:
        missing = [f for f in ("price_per_hour", "gpu_peak_tflops", "gpu_memory_gib")
                   if getattr(az, f) is None]
        if missing:
            raise ValueError(f"VM size {name} ({source}) is not in the built-in table: set "
                             + ", ".join(f"azure.{f}" for f in missing)
                             + " (or use a known size)")
        gpu = Accelerator(name, az.gpu_memory_gib, az.gpu_peak_tflops, True)
        return VmSize(name, gpu, az.processes_per_node, az.price_per_hour), source
    if az.gpu_peak_tflops or az.gpu_memory_gib:
        acc = vm.accelerator
        gpu = Accelerator(acc.name, az.gpu_memory_gib or acc.memory_gib,
                          az.gpu_peak_tflops or acc.peak_tflops, acc.bf16)
        vm = VmSize(vm.name, gpu, vm.count, vm.price_per_hour, vm.retired)
    return vm, source

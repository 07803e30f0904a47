"""The memory plan: what one GPU holds while an arm trains, before anything is started.

Per GPU, for P base parameters (L decoder layers, hidden h, MLP width i, vocabulary V), A trainable
adapter parameters (LoRA: r x (in + out) per targeted linear layer), N GPUs (processes) per arm,
T = per_device_batch_size x max_seq_length tokens per micro-batch, and b the compute precision's
bytes (2 for bf16/fp16, 4 for fp32):

    weights      full: 4·P (fp32 master weights; autocast computes in bf16/fp16)
                 lora: b·P + 4·A            qlora: 0.516·P_linear + 4·P_rest + 4·A
                 (NF4 with double quantization is 4.127 bits a parameter; prepare_model_for_kbit_
                 training keeps embeddings, norms and lm_head in fp32; 2 bytes under FSDP)
    gradients    4 x trainable (fp32)       optimizer  8 x trainable (AdamW: two fp32 moments)
    sharding     fsdp: weights, gradients and optimizer / N (cpu_offload: 0 on the GPU), plus the
                 gathered working set b·(root + 2 layers) (full: b·(2 root + 3 layers), their
                 gradients before the reduce-scatter); root = embeddings + lm_head + final norm
                 none with N > 1 (DDP): every GPU a whole copy, plus gradient buckets (= gradients)
    activations  L·T·a·b without gradient checkpointing, a = 6h + 3·q + 3·kv + 4i (+ the inputs of
                 the LoRA layers when lora.dropout > 0); with it L·T·h·b + T·a·b (one layer is
                 recomputed at a time); plus the logits T·V·(b + 8) (fp32 copy for the loss and
                 its gradient)
    overhead     1.5 GiB (CUDA context, NCCL) + 10% of the above (allocator fragmentation)

It fits when the total is at most the GPU's memory (hardware.py's table for the VM size, or
`azure.gpu_memory_gib`). Estimates, good to about 15%: measure on the GPU before trusting a plan
within 10% of the limit. Pure functions, except `model_shape` (reads a config.json) and
`local_device` (asks torch about this machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from training.plan.model_shape import (  # noqa: F401 (ShapeUnknown, model_shape: re-exported)
    ModelShape,
    ShapeUnknown,
    model_shape,
    params_text,
)

GIB = 1024**3
NF4_BYTES = 4.127 / 8
FIXED_OVERHEAD_GIB = 1.5
FRAGMENTATION = 0.10
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHARDINGS = ("none", "fsdp")


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Setup:
    """What the plan depends on besides the model and the GPU."""

    method: str  # full | lora | qlora
    precision: str  # bf16 | fp16 | fp32
    sharding: str  # none | fsdp
    gpus: int  # processes (GPUs) of one arm, all nodes
    seq_len: int
    batch: int  # per device
    gradient_checkpointing: bool
    cpu_offload: bool = False
    lora_r: int = 16
    lora_targets: tuple[str, ...] = LINEARS
    lora_dropout: float = 0.05

    def describe(self) -> str:
        shard = (f"fsdp over {self.gpus} GPU(s)" + (" + cpu offload" if self.cpu_offload else "")
                 if self.sharding == "fsdp" else
                 f"ddp over {self.gpus} GPUs" if self.gpus > 1 else "1 GPU, no sharding")
        gc = "gradient checkpointing" if self.gradient_checkpointing else "no checkpointing"
        return (f"{self.method}, {self.precision}, {shard}, batch {self.batch} x "
                f"{self.seq_len} tokens, {gc}")


@dataclass(frozen=True)
class Plan:
    setup: Setup
    shape: ModelShape
    device: str  # e.g. "A100 80GB"
    memory_gib: float
    trainable: int
    parts: dict[str, float] = field(default_factory=dict)  # bytes: weights, gradients, ...
    activations_other: float = 0.0  # bytes with the other gradient_checkpointing setting

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.memory_gib

    def lines(self) -> list[str]:
        """The figures, for people: one line per part, then the total against the GPU."""
        s = self.setup
        other = "without" if s.gradient_checkpointing else "with"
        out = [f"memory per GPU: {params_text(self.shape.n_params)} parameters, "
               f"{self.trainable / 1e6:,.1f}M trainable; {s.describe()}"]
        for name, value in self.parts.items():
            note = (f"   ({other} gradient checkpointing: {self.activations_other / GIB:,.1f} GiB)"
                    if name == "activations" else "")
            out.append(f"  {name:<12} {value / GIB:>8,.1f} GiB{note}")
        verdict = "fits" if self.fits else "does NOT fit"
        out.append(f"  {'total':<12} {self.total_gib:>8,.1f} GiB of {self.memory_gib:g} GiB "
                   f"({self.device}): {verdict}")
        return out


def lora_params(shape: ModelShape, r: int, targets) -> int:
    dims = shape.linear_dims()
    return shape.n_layers * sum(r * (a + b) for name, (a, b) in dims.items() if name in targets)


def activation_bytes(shape: ModelShape, setup: Setup, checkpointing: bool) -> float:
    b = 4 if setup.precision == "fp32" else 2
    tokens = setup.batch * setup.seq_len
    per_layer = (6 * shape.hidden + 3 * shape.q_dim + 3 * shape.kv_dim
                 + 4 * shape.intermediate)
    if setup.method != "full" and setup.lora_dropout > 0:
        dims = shape.linear_dims()
        per_layer += sum(dims[t][0] + setup.lora_r for t in setup.lora_targets if t in dims)
    layers = (shape.n_layers * shape.hidden + per_layer) if checkpointing else \
        shape.n_layers * per_layer
    logits = shape.vocab * (b + 8)
    return tokens * (layers * b + logits)


def plan(shape: ModelShape, setup: Setup, memory_gib: float, device: str = "GPU") -> Plan:
    """The per-GPU memory of one arm (see the module's docstring for the formulas)."""
    b = 4 if setup.precision == "fp32" else 2
    n = setup.gpus if setup.sharding == "fsdp" else 1
    fsdp = setup.sharding == "fsdp"
    if setup.method == "full":
        trainable = shape.n_params
        weights = 4.0 * shape.n_params
    else:
        trainable = lora_params(shape, setup.lora_r, setup.lora_targets)
        if setup.method == "lora":
            weights = b * shape.n_params + 4.0 * trainable
        else:
            rest = shape.n_params - shape.linear_params
            weights = NF4_BYTES * shape.linear_params + (2 if fsdp else 4) * rest + 4.0 * trainable
    gradients, optimizer = 4.0 * trainable, 8.0 * trainable
    parts = {"weights": weights / n, "gradients": gradients / n, "optimizer": optimizer / n}
    if fsdp and setup.cpu_offload:
        parts = {k: 0.0 for k in parts}
    if fsdp:
        layer = (NF4_BYTES * shape.layer_linear_params + 2 * 2 * shape.hidden
                 if setup.method == "qlora" else b * shape.layer_params)
        root = b * shape.root_params
        parts["fsdp gather"] = (2 * root + 3 * layer if setup.method == "full"
                                else root + 2 * layer)
    elif setup.gpus > 1:
        parts["ddp buckets"] = gradients
    parts["activations"] = activation_bytes(shape, setup, setup.gradient_checkpointing)
    other = activation_bytes(shape, setup, not setup.gradient_checkpointing)
    parts["overhead"] = FIXED_OVERHEAD_GIB * GIB + FRAGMENTATION * sum(parts.values())
    return Plan(setup, shape, device, memory_gib, trainable, parts, other)


def resolve_sharding(requested: str, shape: ModelShape, setup: Setup, memory_gib: float,
                     fsdp_possible: bool = True) -> str:
    """`auto`: DDP (none) when the model fits one GPU as it is, else FSDP when it has more than
    one GPU to shard over (or offloads to the CPU). Where FSDP cannot run (CPU), none."""
    if requested in SHARDINGS:
        return requested
    if not fsdp_possible or plan(shape, replace(setup, sharding="none"), memory_gib).fits:
        return "none"
    return "fsdp" if setup.gpus > 1 or setup.cpu_offload else "none"


# ----------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Check:
    """A plan against a GPU, the sharding `auto` chose, and the cheapest changes that fit."""

    plan: Plan
    requested_sharding: str
    fixes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.plan.fits

    @property
    def sharding(self) -> str:
        return self.plan.setup.sharding

    def lines(self) -> list[str]:
        out = self.plan.lines()
        if self.requested_sharding == "auto":
            out.append(f"  training.sharding auto -> {self.sharding}")
        if not self.fits:
            out.append("cheapest changes that fit, cheapest first:" if self.fixes else
                       "no change of sharding, checkpointing, batch size, VM size or method "
                       "found that fits")
            out += [f"  - {fix}" for fix in self.fixes]
        return out

    def message(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict:
        p = self.plan
        return {"fits": self.fits, "sharding": self.sharding,
                "requested_sharding": self.requested_sharding, "gpus": p.setup.gpus,
                "setup": p.setup.describe(), "device": p.device, "memory_gib": p.memory_gib,
                "total_gib": round(p.total_gib, 2), "trainable_params": p.trainable,
                "parts_gib": {k: round(v / GIB, 2) for k, v in p.parts.items()},
                "activations_other_checkpointing_gib": round(p.activations_other / GIB, 2),
                "fixes": list(self.fixes)}


def setup_for(cfg, gpus: int, gpu: bool, bf16: bool, sharding: str = "none") -> Setup:
    """The plan's inputs from an experiment file, on `gpus` GPUs (or a CPU when not `gpu`)."""
    t = cfg.training
    precision = t.precision
    if precision == "auto":
        precision = ("bf16" if bf16 else "fp16") if gpu else "fp32"
    targets = cfg.lora.target_modules
    return Setup(method=cfg.method, precision=precision, sharding=sharding, gpus=gpus,
                 seq_len=t.max_seq_length, batch=t.per_device_batch_size,
                 gradient_checkpointing=t.gradient_checkpointing,
                 cpu_offload=getattr(t, "cpu_offload", False), lora_r=cfg.lora.r,
                 lora_targets=LINEARS if targets == "all-linear" else tuple(targets),
                 lora_dropout=cfg.lora.dropout)


def _resolved(shape, setup, requested, memory_gib, fsdp_possible) -> Setup:
    return replace(setup, sharding=resolve_sharding(requested, shape, setup, memory_gib,
                                                    fsdp_possible))


def config_fixes(shape: ModelShape, setup: Setup, memory_gib: float, accumulation: int,
                 fsdp_possible: bool) -> list[str]:
    """The first change of the experiment file alone (same hardware, same method) that fits:
    sharding (no slower), gradient checkpointing (about a third more compute), a smaller batch
    with more accumulation (the same effective batch), CPU offload (much slower)."""
    shard = fsdp_possible and setup.gpus > 1 and setup.sharding == "none"
    ladder = []
    if shard:
        ladder.append((["training.sharding: fsdp"], replace(setup, sharding="fsdp")))
    gc = replace(setup, gradient_checkpointing=True)
    if not setup.gradient_checkpointing:
        ladder.append((["training.gradient_checkpointing: true"], gc))
        if shard:
            ladder.append((["training.sharding: fsdp", "training.gradient_checkpointing: true"],
                           replace(gc, sharding="fsdp")))
    base, said = (replace(gc, sharding="fsdp"), ["training.sharding: fsdp"]) if shard else (gc, [])
    if not setup.gradient_checkpointing:
        said = [*said, "training.gradient_checkpointing: true"]
    k = 2
    while setup.batch // k >= 1:
        ladder.append(([*said, f"training.per_device_batch_size: {setup.batch // k}",
                        f"training.gradient_accumulation_steps: {accumulation * k} (the same "
                        "effective batch)"], replace(base, batch=setup.batch // k)))
        k *= 2
    if fsdp_possible and not setup.cpu_offload:
        ladder.append(([*said, "training.sharding: fsdp", "training.cpu_offload: true (slow)"],
                       replace(base, sharding="fsdp", cpu_offload=True)))
    for changes, candidate in ladder:
        p = plan(shape, candidate, memory_gib)
        if p.fits:
            return [f"{'; '.join(dict.fromkeys(changes))} -> {p.total_gib:,.1f} GiB per GPU"]
    return []


def hardware_fixes(shape: ModelShape, setup: Setup, requested_sharding: str, precision: str,
                   current: tuple[str, int], sizes=None, max_nodes: int = 4) -> list[str]:
    """The cheapest VM size and node count (price per arm hour) where the same experiment fits,
    sharding as `auto` would choose (more than one node only for 8-GPU sizes); and, when the method is not already qlora, the cheapest
    hardware for the lighter method."""
    from training.plan.hardware import VM_SIZES

    sizes = list((sizes or VM_SIZES).values())

    def cheapest(s: Setup):
        best = None
        for vm in sizes:
            acc = vm.accelerator
            if vm.retired or not vm.is_gpu or (precision == "bf16" and not acc.bf16):
                continue
            p_name = precision if precision != "auto" else ("bf16" if acc.bf16 else "fp16")
            # several nodes only for the 8-GPU (ND, InfiniBand) sizes: FSDP over Ethernet crawls
            for nodes in range(1, (max_nodes if vm.count >= 8 else 1) + 1):
                if (vm.name, nodes) == current and s.method == setup.method:
                    continue
                trial = replace(s, gpus=vm.count * nodes, precision=p_name)
                trial = _resolved(shape, trial, requested_sharding if requested_sharding != "none"
                                  else "auto", acc.memory_gib, True)
                p = plan(shape, trial, acc.memory_gib, acc.name)
                if p.fits:
                    key = (vm.price_per_hour * nodes, vm.count * nodes)
                    if best is None or key < best[0]:
                        best = (key, vm, nodes, p)
                    break
        return best

    out = []
    found = cheapest(setup)
    if not setup.gradient_checkpointing:  # checkpointing costs a third more compute, not 2x
        with_gc = replace(setup, gradient_checkpointing=True)
        cheaper = cheapest(with_gc)
        if cheaper and (found is None or cheaper[0] < found[0]):
            found, setup = cheaper, with_gc
    if found:
        out.append(_hardware_line(found, setup, ""))
    lighter = {"full": "lora", "lora": "qlora"}.get(setup.method)
    if lighter:
        trial = replace(setup, method=lighter, gradient_checkpointing=True)
        if (light := cheapest(trial)) and (not found or light[0] < found[0]):
            out.append(_hardware_line(light, trial, f"method: {lighter} (a different experiment) "
                                                    "with gradient_checkpointing: true, on "))
    return out


def _hardware_line(found, setup: Setup, prefix: str) -> str:
    (price, gpus), vm, nodes, p = found
    where = (f"{vm.name} x {nodes} node(s) (azure.instance_count: {nodes}, "
             f"processes_per_node: {vm.count})")
    shard = f"sharding {p.setup.sharding}" + (f" over {gpus} GPUs" if gpus > 1 else "")
    gc = ", gradient_checkpointing: true" if setup.gradient_checkpointing and not prefix else ""
    return (f"{prefix}{where}, {gpus} x {vm.accelerator.name}, {price:,.2f} USD/h per arm, "
            f"{shard}{gc} -> {p.total_gib:,.1f} GiB per GPU")


def check_vm(cfg, vm, shape: ModelShape) -> Check:
    """The plan of `train estimate` and `train submit`: one arm on `vm` (hardware.VmSize, with
    azure.gpu_memory_gib applied, e.g. by estimate.pick_vm), azure.instance_count nodes x
    azure.processes_per_node processes, sharding as the experiment file says (auto resolved)."""
    az = cfg.azure
    gpus = az.instance_count * az.processes_per_node if vm.is_gpu else az.instance_count
    acc = vm.accelerator
    setup = setup_for(cfg, gpus, vm.is_gpu, acc.bf16)
    requested = cfg.training.sharding
    setup = _resolved(shape, setup, requested, acc.memory_gib, vm.is_gpu)
    p = plan(shape, setup, acc.memory_gib, acc.name)
    fixes = []
    if not p.fits:
        fixes = config_fixes(shape, setup, acc.memory_gib,
                             cfg.training.gradient_accumulation_steps, vm.is_gpu)
        fixes += hardware_fixes(shape, setup, requested, cfg.training.precision,
                                (vm.name, az.instance_count))
    return Check(p, requested, fixes)


def check_local(cfg, shape: ModelShape, device: str, memory_gib: float, gpu: bool,
                bf16: bool) -> Check:
    """The plan of `train run` on this machine: one process per arm (one GPU, or the CPU), with
    `memory_gib` the share of one arm. FSDP through the Trainer needs GPUs."""
    requested = cfg.training.sharding
    setup = _resolved(shape, setup_for(cfg, 1, gpu, bf16), requested, memory_gib, gpu)
    p = plan(shape, setup, memory_gib, device)
    fixes = []
    if not p.fits:
        fixes = config_fixes(shape, setup, memory_gib, cfg.training.gradient_accumulation_steps,
                             gpu)
        if gpu and cfg.method != "qlora":
            lighter = {"full": "lora", "lora": "qlora"}[cfg.method]
            trial = plan(shape, replace(setup, method=lighter, gradient_checkpointing=True),
                         memory_gib, device)
            if trial.fits:
                fixes.append(f"method: {lighter} (a different experiment) with "
                             f"gradient_checkpointing: true -> {trial.total_gib:,.1f} GiB")
        fixes.append("or train it on Azure ML (train submit), where `train estimate` plans it")
    return Check(p, requested, fixes)


def local_device() -> tuple[str, float, bool, bool]:
    """(device, GiB, CUDA, bf16) of this machine: GPU 0 (each local arm is one process on
    cuda:0), or the RAM."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.name, props.total_memory / GIB, True, torch.cuda.is_bf16_supported()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return "CPU RAM", ram, False, False


def local_check(cfg, arms: int) -> Check:
    """`train run`'s plan: this machine's GPU 0 (or RAM), azure.gpu_memory_gib if set, shared by
    the `arms` arms that run at once. Raises ShapeUnknown when the model's shape cannot be known
    offline."""
    shape = model_shape(cfg.base_model, cfg.base_model_revision)
    device, gib, cuda, bf16 = local_device()
    arms = max(1, arms)
    gib = (cfg.azure.gpu_memory_gib or gib) / arms
    label = f"{device}, shared by {arms} arms" if arms > 1 else device
    return check_local(cfg, shape, label, gib, cuda, bf16)

"""Azure VM sizes and their accelerators: what `train estimate` prices and the memory plan sizes.

Pure tables, no I/O. Prices are approximate Linux pay-as-you-go list prices per VM hour in East US,
noted on PRICES_AS_OF; they change and differ by region and agreement: override them with
`azure.price_per_hour` in the experiment file. Peak rates are the accelerator vendors' dense
(no sparsity) tensor throughput per GPU, in the precision training uses (bf16, or fp16 where the
GPU has no bf16).
"""

from __future__ import annotations

from dataclasses import dataclass

from training.experiment.config import ConfigError

PRICES_AS_OF = "2026-11"
PRICES_REGION = "eastus"
DEFAULT_GPU_VM_SIZE = "Standard_NC24ads_A100_v4"  # the infra program's default
DEFAULT_CPU_VM_SIZE = "Standard_D4s_v3"


@dataclass(frozen=True)
class Accelerator:
    name: str
    memory_gib: float  # per device
    peak_tflops: float  # dense, per device, training precision
    bf16: bool


A100_80 = Accelerator("A100 80GB", 80, 312.0, True)
A100_40 = Accelerator("A100 40GB", 40, 312.0, True)
H100 = Accelerator("H100 80GB", 80, 989.0, True)  # SXM; NVL cards are listed separately
H100_NVL = Accelerator("H100 NVL 94GB", 94, 835.0, True)
V100_16 = Accelerator("V100 16GB", 16, 125.0, False)
V100_32 = Accelerator("V100 32GB", 32, 125.0, False)
T4 = Accelerator("T4 16GB", 16, 65.0, False)
# CPU VMs: a nominal fp32 rate for the whole VM (AVX-512 on a few vCPUs), for order of magnitude.
CPU_4 = Accelerator("4 vCPU", 16, 0.2, True)
CPU_8 = Accelerator("8 vCPU", 32, 0.4, True)
CPU_16 = Accelerator("16 vCPU", 64, 0.8, True)


@dataclass(frozen=True)
class VmSize:
    name: str
    accelerator: Accelerator
    count: int  # accelerators per node (GPUs; 1 for a CPU VM)
    price_per_hour: float  # USD per node hour, see PRICES_AS_OF
    retired: bool = False

    @property
    def is_gpu(self) -> bool:
        return not self.accelerator.name.endswith("vCPU")


VM_SIZES = {vm.name.lower(): vm for vm in [
    VmSize("Standard_NC24ads_A100_v4", A100_80, 1, 3.67),
    VmSize("Standard_NC48ads_A100_v4", A100_80, 2, 7.35),
    VmSize("Standard_NC96ads_A100_v4", A100_80, 4, 14.69),
    VmSize("Standard_ND96asr_v4", A100_40, 8, 27.20),
    VmSize("Standard_ND96amsr_A100_v4", A100_80, 8, 32.77),
    VmSize("Standard_NC40ads_H100_v5", H100_NVL, 1, 6.98),
    VmSize("Standard_NC80adis_H100_v5", H100_NVL, 2, 13.96),
    VmSize("Standard_ND96isr_H100_v5", H100, 8, 98.32),
    VmSize("Standard_NC4as_T4_v3", T4, 1, 0.53),
    VmSize("Standard_NC64as_T4_v3", T4, 4, 4.35),
    VmSize("Standard_NC6s_v3", V100_16, 1, 3.06, retired=True),
    VmSize("Standard_NC24s_v3", V100_16, 4, 12.24, retired=True),
    VmSize("Standard_ND40rs_v2", V100_32, 8, 22.03, retired=True),
    VmSize("Standard_D4s_v3", CPU_4, 1, 0.192),
    VmSize("Standard_D8s_v3", CPU_8, 1, 0.384),
    VmSize("Standard_D16s_v3", CPU_16, 1, 0.768),
]}


def vm_size(name: str) -> VmSize | None:
    """The table's entry for an Azure VM size (case-insensitive), or None if unknown."""
    return VM_SIZES.get(name.lower())


def known_sizes() -> str:
    return ", ".join(vm.name for vm in VM_SIZES.values() if not vm.retired)


def choose_precision(requested: str, cuda: bool, bf16_supported: bool) -> str:
    """Once, from the hardware: bf16 where supported, fp16 on older GPUs, fp32 on CPU."""
    if requested == "auto":
        return ("bf16" if bf16_supported else "fp16") if cuda else "fp32"
    if requested == "fp16" and not cuda:
        raise ConfigError("training.precision: fp16 needs a CUDA GPU (use auto or fp32 on CPU)")
    if requested == "bf16" and cuda and not bf16_supported:
        raise ConfigError("training.precision: this GPU has no bf16 (use auto or fp16)")
    return requested

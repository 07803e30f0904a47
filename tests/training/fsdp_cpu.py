"""Run the recipe with real FSDP2 on CPU (gloo): for tests only, one process per rank.

    python -m tests.training.fsdp_cpu <the recipe's arguments>

accelerate keeps an FSDP plugin only for GPU-like devices: with `use_cpu` it sets up MULTI_CPU,
drops the plugin, and the Trainer wraps the model in DDP (the recipe then refuses to train, see
training/sharding.py `check_enabled`). FSDP2 itself runs on CPU with gloo. This wrapper of
`AcceleratorState.__init__` turns MULTI_CPU into FSDP when a plugin is given, in AcceleratorState
and in PartialState's shared state, so the Trainer runs the recipe's own FSDP2 path (fully_shard
per decoder layer and the root, sharded checkpoints, the gathered final model) on this machine.

It touches accelerate internals: this is the one place, and it refuses to run on other versions
than the ones it was checked with (torch 2.13.0, transformers 5.24.0, accelerate 1.15.0).

PAIRED_FINETUNE_TEST_KILL_AT=N: every rank SIGKILLs itself as step N+1 begins (after step N's
checkpoint), as a preempted node would die.
"""

import os
import signal
import sys

PINNED = {"accelerate": "1.15.0", "transformers": "5.24.0", "torch": "2.13.0"}


def patch_accelerate_for_cpu_fsdp() -> None:
    import accelerate
    import torch
    import transformers
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    found = {"accelerate": accelerate.__version__, "transformers": transformers.__version__,
             "torch": torch.__version__.split("+")[0]}
    if found != PINNED:
        raise RuntimeError(f"the CPU FSDP workaround was checked with {PINNED}, not {found}")
    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


def add_kill_switch(step: int) -> None:
    from transformers import TrainerCallback

    from training.recipe import train as recipe

    class KillAt(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)

    make = recipe.make_callbacks
    recipe.make_callbacks = lambda *a, **kw: [KillAt(), *make(*a, **kw)]


if __name__ == "__main__":
    patch_accelerate_for_cpu_fsdp()
    if kill_at := os.environ.get("PAIRED_FINETUNE_TEST_KILL_AT"):
        add_kill_switch(int(kill_at))
    from training.recipe.train import main

    sys.exit(main(sys.argv[1:]))

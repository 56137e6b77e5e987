"""Batch geometry and step budget: validated before training, printed at start-up as one line; and the
training state's memory per device under the composed strategy, printed once the model is loaded.

Samples per optimizer step = batch_size x accumulate_grad_batches x processes (SFT samples; GRPO prompts,
= prompts_per_step, each expanded to num_generations completions inside its micro-batch). A method's
descriptor says how many optimizer steps each such batch serves (GRPO: num_iterations, mu; SFT: 1).

Memory per device (`memory_plan`): weights, gradients and AdamW's two moments, each in model.dtype (fp32:
16 bytes per trained parameter, as R1-V's DeepSpeed bf16 keeps an fp32 master copy and fp32 moments), each
divided by the processes the strategy shards it over, plus the frozen starting model (GRPO's KL reference,
or the training curves' base), which is kept whole on every device. Activations, the rollouts' KV cache and
a vLLM engine's share come on top and are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .methods.registry import find_method
from .utils.distributed import world_size


@dataclass
class Budget:
    processes: int
    samples_per_step: int  # SFT samples or GRPO prompts per optimizer step, all processes
    steps_per_epoch: int  # optimizer steps per pass over the train split
    total_steps: int  # optimizer steps of the run
    micro_batches: int  # training micro-batches of the run, per process (the loader's length)
    warmup_steps: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def train_budget(method: Any, trainer_cfg: Any, num_train: int) -> Budget:
    procs = world_size(trainer_cfg)
    per_step = method.batch_size * method.accumulate_grad_batches * procs
    # Each batch of accumulate_grad_batches micro-batches serves `updates` optimizer steps (GRPO's mu).
    updates = find_method(method.name).updates_per_batch(method)
    steps_per_epoch = max(1, math.ceil(num_train / per_step)) * updates
    total = method.max_steps if method.max_steps is not None else steps_per_epoch * method.epochs
    micro_batches = math.ceil(total / updates) * method.accumulate_grad_batches
    return Budget(procs, per_step, steps_per_epoch, total, micro_batches, int(round(method.warmup_ratio * total)))


def budget_line(method: Any, kl_name: str, num_train: int, budget: Budget) -> str:
    m, b = method, budget
    run = (f"{num_train} train samples -> {b.steps_per_epoch} steps/epoch; {b.total_steps} optimizer steps "
           f"({b.warmup_steps} warmup), lr {m.lr:g} {m.lr_schedule}")
    return f"[budget] {find_method(m.name).budget_line(m, b, run, kl_name)}"


# ------------------------------------------------------------------------------------------- memory

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 1024 ** 3

# What each strategy shards over the processes, as (weights, gradients, optimizer state): "shard" divides by
# the process count, "whole" keeps a full copy on every device, "cpu" moves it off the device.
SHARDING: dict[str, tuple[str, str, str]] = {
    "fsdp:FULL_SHARD": ("shard", "shard", "shard"),
    "fsdp:SHARD_GRAD_OP": ("whole", "shard", "shard"),
    "fsdp:NO_SHARD": ("whole", "whole", "whole"),
    "deepspeed_stage_2": ("whole", "shard", "shard"),
    "deepspeed_stage_2_offload": ("whole", "shard", "cpu"),
    "deepspeed_stage_3": ("shard", "shard", "shard"),
    "deepspeed_stage_3_offload": ("shard", "shard", "cpu"),
}
REPLICATED = ("whole", "whole", "whole")  # auto, ddp and every other strategy: a full replica per process


@dataclass
class MemoryPlan:
    strategy: str  # as SHARDING names it (fsdp with its sharding strategy)
    processes: int
    parameters: int  # every parameter of the trained model (under LoRA: base + adapters)
    trainable: int
    reference_parameters: int  # the frozen starting model's, 0 when none is kept (or LoRA's adapter switch)
    dtype: str
    weights: float  # bytes per device
    gradients: float
    optimizer: float
    reference: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.reference


def strategy_key(trainer_cfg: Any) -> str:
    name = str(trainer_cfg.strategy)
    return f"fsdp:{trainer_cfg.fsdp_sharding}" if name == "fsdp" else name


def memory_plan(trainer_cfg: Any, dtype: str, parameters: int, trainable: int, reference_parameters: int) -> MemoryPlan:
    """The training state's bytes per device (see the module docstring)."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"model.dtype={dtype}: expected one of {list(DTYPE_BYTES)}")
    size, procs, key = DTYPE_BYTES[dtype], world_size(trainer_cfg), strategy_key(trainer_cfg)
    share = {"shard": 1.0 / procs, "whole": 1.0, "cpu": 0.0}
    w, g, o = (share[s] for s in SHARDING.get(key, REPLICATED))
    return MemoryPlan(key, procs, parameters, trainable, reference_parameters, dtype,
                      weights=parameters * size * w, gradients=trainable * size * g,
                      optimizer=2 * trainable * size * o, reference=reference_parameters * size)


def _bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 1024 ** 2:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def memory_line(plan: MemoryPlan) -> str:
    p = plan
    offload = " (offloaded to CPU)" if p.optimizer == 0 and p.trainable else ""
    return (f"[memory] per device under {p.strategy} over {p.processes} process(es), {p.dtype}: weights "
            f"{_bytes(p.weights)} + gradients {_bytes(p.gradients)} + AdamW state {_bytes(p.optimizer)}{offload} + "
            f"frozen starting model {_bytes(p.reference)} (whole on each device) = {_bytes(p.total)}; "
            f"{_count(p.parameters)} parameters, {_count(p.trainable)} trained; activations, rollout KV cache and any "
            "vLLM engine come on top")

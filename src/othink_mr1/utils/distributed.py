"""Lightning strategies from `trainer.strategy` (FSDP with the policy model as its root: PolicyFSDPStrategy), and
an opt-in check that data parallelism holds.

The engines are Lightning's (DDP over torch.distributed, FSDP, DeepSpeed); nothing here launches or
communicates on its own beyond the check's one all_gather per optimizer step.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import FSDPStrategy

from .errors import ConfigError

DEEPSPEED_STRATEGIES = ("deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_2_offload", "deepspeed_stage_3_offload")


def world_size(trainer_cfg: Any) -> int:
    """Processes a Trainer with this config will run."""
    devices = trainer_cfg.devices
    if isinstance(devices, int):
        n = devices if devices > 0 else max(1, torch.cuda.device_count())
    elif isinstance(devices, str):
        n = len([d for d in devices.split(",") if d.strip()]) if "," in devices else (
            int(devices) if devices.isdigit() else max(1, torch.cuda.device_count()))
    else:
        n = len(devices)
    return n * trainer_cfg.num_nodes


def transformer_block_classes(model: torch.nn.Module, names: list[str] | None = None) -> set[type]:
    """Module classes to shard as FSDP units: `names`, or the model's own `_no_split_modules`
    (Qwen2-VL: its decoder layers and ViT blocks)."""
    wanted = set(names or [])
    if not wanted:
        for module in model.modules():
            wanted.update(getattr(module, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in wanted}
    if not classes:
        raise ConfigError(f"trainer.fsdp_wrap={sorted(wanted)}: no module of this model has one of these classes")
    return classes


class PolicyFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, with the policy model (`module.model`) as the root FSDP unit instead of the
    LightningModule. Lightning wraps the whole LightningModule and runs training_step inside that root's
    forward; GRPO optimizes by hand in training_step, so its backward would start before the root's forward
    ends (FSDP asserts), and its rollouts could not gather the parameters (FSDP refuses during a forward).
    With the policy as root, every log-prob pass is a root forward of its own and sampling gathers the
    parameters once per rollout (EvaluationModule.full_parameters). The frozen reference stays whole.

    On CPU (gloo) too: Lightning refuses strategy=fsdp without CUDA by checking the strategy's exact class,
    and torch's FSDP takes the CPU only when it is named as the device."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not isinstance(model.model, FullyShardedDataParallel):  # later stages of a run keep the first wrap
            device = torch.device("cpu") if self.root_device.type == "cpu" else self.root_device
            model.model = FullyShardedDataParallel(module=model.model, cpu_offload=self.cpu_offload,
                                                   mixed_precision=self.mixed_precision_config,
                                                   sharding_strategy=self.sharding_strategy, device_id=device,
                                                   **self.kwargs)
        return model

    # On CPU, FSDP's full state dict with offload_to_cpu (what Lightning asks for) keeps the gathered
    # parameters themselves, not copies, and then frees them: saving a checkpoint crashed the process
    # (SIGSEGV). On CPU the state dicts are taken without offload; elsewhere Lightning's as they are.
    def lightning_module_state_dict(self) -> dict[str, Any]:
        with self._state_dicts_kept():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        with self._state_dicts_kept():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        with self._state_dicts_kept():
            return super().load_checkpoint(checkpoint_path, *args, **kwargs)

    @contextlib.contextmanager
    def _state_dicts_kept(self) -> Iterator[None]:
        import pytorch_lightning.strategies.fsdp as lightning_fsdp

        if self.root_device.type != "cpu":
            yield
            return
        offloading = lightning_fsdp._get_full_state_dict_context

        def without_offload(module: torch.nn.Module, world_size: int, rank0_only: bool = True) -> Any:
            from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
            from torch.distributed.fsdp import FullyShardedDataParallel

            return FullyShardedDataParallel.state_dict_type(
                module, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))

        lightning_fsdp._get_full_state_dict_context = without_offload
        try:
            yield
        finally:
            lightning_fsdp._get_full_state_dict_context = offloading


def build_strategy(trainer_cfg: Any, model: torch.nn.Module) -> Any:
    """The `strategy=` argument for pl.Trainer."""
    name = trainer_cfg.strategy
    if name == "fsdp":
        return PolicyFSDPStrategy(auto_wrap_policy=transformer_block_classes(model, list(trainer_cfg.fsdp_wrap)),
                                  sharding_strategy=trainer_cfg.fsdp_sharding, state_dict_type="full")
    if name in DEEPSPEED_STRATEGIES and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"trainer.strategy={name} needs the deepspeed package (pip install deepspeed, on a CUDA "
                          "machine); it is not installed")
    return name


def parameter_fingerprint(module: torch.nn.Module) -> str:
    """A hash of every parameter's exact bytes: equal fingerprints mean identical weights."""
    digest = hashlib.sha256()
    for name, param in module.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RankAgreementCallback(pl.Callback):
    """`trainer.check_distributed=true`: after every optimizer step, all ranks must hold identical
    parameters, and every prompt's G completions must have been sampled and scored on one rank.
    Rank zero appends one JSON line per step to `path`; a violation stops the run with the step."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._last_step = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._last_step:  # accumulating: no optimizer step yet
            return
        self._last_step = trainer.global_step
        groups = list(getattr(pl_module, "rollout_groups", []))
        if hasattr(pl_module, "rollout_groups"):
            pl_module.rollout_groups.clear()
        local = {"rank": trainer.global_rank, "fingerprint": parameter_fingerprint(pl_module.model), "groups": groups}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, local)
        else:
            gathered = [local]
        owners: dict[int, list[int]] = {}
        for part in gathered:
            for prompt, _ in part["groups"]:
                owners.setdefault(prompt, []).append(part["rank"])
        record = {
            "step": int(trainer.global_step),
            "identical_parameters": len({p["fingerprint"] for p in gathered}) == 1,
            "ranks": [{"rank": p["rank"], "prompts": [g[0] for g in p["groups"]],
                       "completions_per_prompt": [g[1] for g in p["groups"]]} for p in gathered],
            "prompts_on_several_ranks": sorted(k for k, v in owners.items() if len(set(v)) > 1),
        }
        if trainer.is_global_zero:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        if not record["identical_parameters"]:
            raise RuntimeError(f"distributed check: the ranks' parameters differ after optimizer step {record['step']}")
        if record["prompts_on_several_ranks"]:
            raise RuntimeError(f"distributed check: prompts {record['prompts_on_several_ranks'][:5]} were rolled out on "
                               f"several ranks at step {record['step']}")

"""Semantic config checks the schemas cannot express. They run first, before any data, model or
training time is spent, and every message names the config key at fault."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .data.records import ON_BAD_ROW
from .data.synthetic import SOURCE_PREFIX, generator
from .data.tasks import task_sources
from .methods.registry import find_method
from .methods.method import config_error
from .methods.lr_schedules import check_lr_schedule
from .rewards.scorers import SCORERS
from .utils.distributed import world_size
from .utils.errors import ConfigError
from .utils.progress import check_every_s

MODEL_SOURCES = ("tiny", "tiny_base", "pretrained")


def override_keys(overrides: list[str] | None, prefix: str) -> list[str]:
    """The config keys under `prefix` (e.g. "task.") that command-line overrides set, in order, down to
    each leaf a dict value sets; group choices (`task=geometry`) and deletions set no value."""
    if not overrides:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    def leaves(key: str, value: Any) -> list[str]:
        if isinstance(value, dict) and value:
            return [leaf for k, v in value.items() for leaf in leaves(f"{key}.{k}", v)]
        return [key]

    keys: list[str] = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.package is None and not o.is_delete() and o.key_or_group.startswith(prefix):
            keys += [k for k in leaves(o.key_or_group, o.value()) if k not in keys]
    return keys


def eval_task_configs(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Config of every task in eval.tasks (the trained task is always scored).

    train: the trained task is `task` (its `task.*` overrides apply to its evaluation too), every other
    task is `tasks.<name>`; a `tasks.<trained>.*` override that `task` does not match is an error.
    eval: every task is `tasks.<name>`; a `task.*` override (`overrides`: the command line's) applies to
    the task `task` names, as in training, so that task must be scored and its `tasks.<name>.*`
    overrides must agree. `task.eval_tasks` picks the eval tasks (eval.tasks defaults to it) in both modes.
    """
    names = list(cfg.eval.tasks)
    train = cfg.mode == "train"
    own = cfg.task.name
    if train and own not in names:
        names.insert(0, own)
    known = sorted(set(cfg.tasks) | {own})
    out = {}
    for name in names:
        if name in cfg.tasks and not (train and name == own):
            out[name] = cfg.tasks[name]
        elif name == own:
            out[name] = cfg.task
        else:
            raise ConfigError(f"eval.tasks: unknown task '{name}'; known tasks: {known}")
    own_keys = override_keys(overrides, f"tasks.{own}.")
    if train:
        for key in own_keys:
            rest = key[len(f"tasks.{own}."):]
            if OmegaConf.select(cfg, key) != OmegaConf.select(cfg.task, rest):
                raise ConfigError(f"{key}={OmegaConf.select(cfg, key)}: '{own}' is the trained task, so task.* "
                                  f"describes it (training and evaluation): set task.{rest} instead")
        return out
    task_keys = [k for k in override_keys(overrides, "task.") if not k.startswith("task.eval_tasks")]
    if not task_keys:
        return out
    if own not in out:
        raise ConfigError(f"{task_keys[0]}={OmegaConf.select(cfg, task_keys[0])}: mode=eval scores eval.tasks="
                          f"{names}, which leaves out '{own}', the task task.* describes; set "
                          f"tasks.<name>.{task_keys[0][len('task.'):]} for a task scored instead")
    if own not in cfg.tasks:
        return out  # scored from `task` itself
    node = copy.deepcopy(cfg.tasks[own])
    for key in task_keys:
        value = OmegaConf.select(cfg, key)
        OmegaConf.update(node, key[len("task."):], OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
    for key in own_keys:
        rest = key[len(f"tasks.{own}."):]
        if OmegaConf.select(cfg, key) != OmegaConf.select(node, rest):
            clash = next(k for k in task_keys if k[len("task."):].startswith(rest) or rest.startswith(k[len("task."):]))
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} and {clash}={OmegaConf.select(cfg, clash)} "
                              f"disagree: in mode=eval both set task '{own}'; set only {key}")
    out[own] = node
    return out


def check_task(task: Any, key: str) -> None:
    if task.source not in task_sources():
        raise ConfigError(f"{key}.source='{task.source}': expected one of {task_sources()} (r1v, or synthetic_<module> "
                          f"for a generator module data/synthetic/<module>.py)")
    if task.scorer not in SCORERS:
        raise ConfigError(f"{key}.scorer='{task.scorer}': expected one of {sorted(SCORERS)}")
    for field in ("prompt", "eval_prompt"):
        template = task.get(field)
        if template is not None and "{question}" not in template:
            raise ConfigError(f"{key}.{field} must contain '{{question}}' (where the question goes): {template!r}")
    if task.max_new_tokens < 1:
        raise ConfigError(f"{key}.max_new_tokens={task.max_new_tokens}: must be at least 1")
    hook = getattr(generator(task.source), "check_config", None) if task.source.startswith(SOURCE_PREFIX) else None
    if hook is not None and task.synthetic is not None:
        with config_error():  # the generator's own checks of its settings (e.g. counting's image size)
            hook(task.synthetic, f"{key}.synthetic")


def check_method(cfg: DictConfig) -> None:
    """The settings every method shares, then the method's own (its descriptor's check)."""
    m = cfg.method
    method = find_method(m.name)
    with config_error():
        check_lr_schedule(m.lr_schedule)
    for key in ("batch_size", "accumulate_grad_batches", "epochs", "max_nonfinite_skips"):
        if m[key] < 1:
            raise ConfigError(f"method.{key}={m[key]}: must be at least 1")
    if m.max_steps is not None and m.max_steps < 1:
        raise ConfigError(f"method.max_steps={m.max_steps}: must be at least 1 (or null to train by epochs)")
    if not 0.0 <= m.warmup_ratio < 1.0:
        raise ConfigError(f"method.warmup_ratio={m.warmup_ratio}: must be in [0, 1)")
    method.check(cfg)


def check_curve(cfg: DictConfig) -> None:
    """The training curve's sizes; its points against the run's steps where max_steps states them (a run
    sized by epochs is checked once its train split is loaded: runner.plan_budget)."""
    from .evaluation.curve import check_curve_points, curves_enabled

    e = cfg.eval
    for key in ("curve_items", "curve_samples"):
        if e[key] < 1:
            raise ConfigError(f"eval.{key}={e[key]}: must be at least 1")
    if e.curve_points is not None and e.curve_points < 2:
        check_curve_points(e.curve_points, 0)  # the message for too few points
    if curves_enabled(cfg) and cfg.method.max_steps is not None:
        every = find_method(cfg.method.name).updates_per_batch(cfg.method)
        check_curve_points(e.curve_points, cfg.method.max_steps, every, f" (method.max_steps={cfg.method.max_steps})")


def check_devices(trainer_cfg: Any) -> None:
    """The requested accelerator and device count exist here (a SLURM job sees its own GPUs)."""
    import torch

    if trainer_cfg.accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count()
        if available == 0:
            raise ConfigError(f"trainer.accelerator={trainer_cfg.accelerator} but no CUDA device is visible; use "
                              "trainer=cpu (or trainer.accelerator=cpu)")
        wanted = world_size(trainer_cfg) // max(trainer_cfg.num_nodes, 1)
        if wanted > available:
            raise ConfigError(f"trainer.devices={trainer_cfg.devices}: {wanted} GPUs per node requested, {available} "
                              "visible")


def check_sharding(cfg: DictConfig) -> None:
    """trainer.strategy=fsdp shards whole units of parameters (a decoder layer, a ViT block, the rest of the
    model), each flattened into one tensor that is trained or frozen as a whole: LoRA's frozen base and trained
    adapters, or a frozen role beside trained weights, would share one (utils/distributed.py)."""
    if cfg.trainer.strategy != "fsdp" or cfg.mode != "train":
        return
    if cfg.model.lora.enabled:
        raise ConfigError("trainer.strategy=fsdp with model.lora.enabled=true: FSDP's units would mix frozen and "
                          "trained weights; train LoRA with trainer=ddp or trainer=gpu (its state is small)")
    if cfg.method.get("rollout_engine") == "vllm":
        raise ConfigError("trainer.strategy=fsdp with method.rollout_engine=vllm: the engine's weight sync reads the "
                          "whole policy, which FSDP holds in slices; not supported yet (use trainer=ddp or gpu)")
    frozen = [role for role in ("vision_tower", "merger", "language_model") if cfg.model.freeze[role]]
    if frozen:
        raise ConfigError(f"trainer.strategy=fsdp with model.freeze.{frozen[0]}=true: FSDP's units would mix frozen "
                          "and trained weights; use trainer=ddp with frozen roles")


def check_image_backend(model_cfg: Any) -> None:
    """model.image_backend names a backend, and one that imports here (no silent fallback to PIL)."""
    from .models.factory import image_backend_problem

    problem = image_backend_problem(model_cfg.image_backend)
    if problem:
        raise ConfigError(problem)


def check_config(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """All semantic checks (`overrides`: the command line's, see eval_task_configs); returns the eval
    task configs."""
    if cfg.mode not in ("train", "eval"):
        raise ConfigError(f"mode='{cfg.mode}': expected train or eval")
    if cfg.model.source not in MODEL_SOURCES:
        raise ConfigError(f"model.source='{cfg.model.source}': expected one of {list(MODEL_SOURCES)}")
    if cfg.model.source == "pretrained" and not cfg.model.path:
        raise ConfigError("model.path is required with model=pretrained (a hub id such as "
                          "HuggingFaceTB/SmolVLM-256M-Instruct, or a local model folder)")
    check_image_backend(cfg.model)
    eval_tasks = eval_task_configs(cfg, overrides)
    if not eval_tasks:
        raise ConfigError("eval.tasks is empty: name at least one task to score")
    for name, task in eval_tasks.items():
        check_task(task, "task" if name == cfg.task.name and cfg.mode == "train" else f"tasks.{name}")
    if cfg.eval.batch_size < 1:
        raise ConfigError(f"eval.batch_size={cfg.eval.batch_size}: must be at least 1")
    check_curve(cfg)
    if cfg.data.on_bad_row not in ON_BAD_ROW:
        raise ConfigError(f"data.on_bad_row='{cfg.data.on_bad_row}': expected one of {list(ON_BAD_ROW)}")
    if not 0 <= cfg.data.max_bad_fraction <= 1:
        raise ConfigError(f"data.max_bad_fraction={cfg.data.max_bad_fraction}: must be between 0 and 1")
    check_devices(cfg.trainer)
    check_sharding(cfg)
    check_every_s(cfg.trainer.progress_every_s)  # a bad interval fails here, before any data or model is loaded
    if cfg.mode == "train":
        check_task(cfg.task, "task")
        check_method(cfg)
        if cfg.ckpt:
            raise ConfigError("ckpt= is for mode=eval; to train from saved weights use "
                              "model.source=pretrained model.path=<folder>, to continue a run use resume=")
    elif cfg.resume and cfg.resume != "auto":  # auto: set by sweeps for every cell, a no-op for evaluation
        raise ConfigError("resume= continues a training run; mode=eval takes ckpt=")
    if cfg.ckpt and not Path(cfg.ckpt).exists():
        raise ConfigError(f"ckpt='{cfg.ckpt}': no such file or folder")
    return eval_tasks

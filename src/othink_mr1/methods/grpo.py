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
The loss itself lives in grpo_loss.py.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..evaluation.harness import completion_mask, effective_max_new_tokens, stop_token_ids, suppressed_token_ids
from ..rewards.grpo_rewards import compute_rewards
from ..rewards.scorers import DEFAULT_PROTOCOL
from ..models.adapters import has_adapters
from ..models.decoding import decode_record
from ..models.prefix_sharing import (
    full_position_ids,
    grouped_completion_logits,
    prompt_inputs,
    sample_groups,
    static_decoding_blocker,
    supports_prefix_sharing,
)
from .evaluation_module import TrainableModule
from .grpo_loss import StepSizes, group_advantages, grpo_loss, token_log_probs
from .kl_schedules import KLSchedule, build_kl_schedule

log = logging.getLogger(__name__)

@dataclass
class Rollout:
    """One micro-batch of sampled completions, ready for the loss. Sequences are prompt (left-padded)
    followed by completion (right-padded); every tensor has one row per completion."""

    # Model inputs for the G-times repeated prompts + completions; None when `prompts` is set (the
    # plain forward is not run, and repeating every image G times would only cost memory).
    inputs: dict[str, torch.Tensor] | None
    completion_ids: torch.Tensor  # [N, C]
    completion_mask: torch.Tensor  # [N, C], 1 up to and including the first stop token (harness.completion_mask)
    advantages: torch.Tensor  # [N]
    rewards: torch.Tensor  # [N] weighted total
    reward_parts: dict[str, torch.Tensor]  # name -> [N]
    old_logp: torch.Tensor | None = None  # [N, C], mu > 1 only
    ref_logp: torch.Tensor | None = None  # [N, C], when the KL schedule can be positive
    # The un-repeated prompt batch, when log-probs run each prompt once for its G completions
    # (models/prefix_sharing.py); None runs `inputs`.
    prompts: dict[str, torch.Tensor] | None = None
    group_size: int = 1
    position_ids: torch.Tensor | None = None  # [3, N, P + C] mrope positions, computed once per rollout

    @property
    def num_sequences(self) -> int:
        return int(self.completion_ids.shape[0])


def rows_per_sample(key: str, value: torch.Tensor, batch: dict[str, Any], image_counts: list[int]) -> list[int]:
    """How many leading rows of `value` belong to each sample. Per-sample tensors (input_ids, masks,
    Idefics3's padded image stacks, LLaVA-OneVision's batch_num_images) have one row per sample and
    per-image ones (image_grid_thw, Gemma 3's and LLaVA-OneVision's pixel_values, image_sizes) one per
    image; the Qwen families' pixel_values are the special case: every image's patches stacked flat,
    t*h*w rows per image."""
    if key == "pixel_values" and "image_grid_thw" in batch:
        per_image = batch["image_grid_thw"].prod(dim=1).tolist()
    else:
        per_image = [1] * sum(image_counts)
    rows, start = [], 0
    for count in image_counts:
        rows.append(int(sum(per_image[start:start + count])))
        start += count
    if value.shape[0] == sum(rows):
        return rows
    if value.shape[0] == len(image_counts):
        return [1] * len(image_counts)
    raise ValueError(f"GRPO cannot tell which rows of the processor's '{key}' ({tuple(value.shape)}) belong to which of "
                     f"the {len(image_counts)} prompts ({sum(image_counts)} images)")


def repeat_prompts(batch: dict[str, Any], times: int) -> dict[str, torch.Tensor]:
    """Every model input of a prompt batch with each prompt (and its images) `times` times in a row:
    rows 0..times-1 are prompt 0's group."""
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    image_counts = list(batch.get("meta", {}).get("image_counts") or [1] * tensors["input_ids"].shape[0])
    out = {}
    for key, value in tensors.items():
        chunks = torch.split(value, rows_per_sample(key, value, batch, image_counts))
        out[key] = torch.cat([chunk for chunk in chunks for _ in range(times)])
    return out


def append_completions(prompts: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                       completion_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model inputs of prompts followed by their completions: every per-token input grows by the
    completion (attention from the completion mask; token types such as mm_token_type_ids or Gemma 3's
    token_type_ids 0, text)."""
    shape = prompts["input_ids"].shape
    inputs = dict(prompts)
    for key, value in prompts.items():
        if key == "input_ids":
            inputs[key] = torch.cat([value, completion_ids], dim=1)
        elif key == "attention_mask":
            inputs[key] = torch.cat([value, completion_mask.to(value.dtype)], dim=1)
        elif value.shape == shape:
            inputs[key] = torch.cat([value, value.new_zeros(completion_ids.shape)], dim=1)
    return inputs


class GRPOModule(TrainableModule):
    def __init__(self, model: torch.nn.Module, processor: Any, method: Any, total_steps: int, kl: KLSchedule,
                 reference: torch.nn.Module | None = None, scorer: str = "counting", max_new_tokens: int = 512,
                 adapter_reference: bool = False, **kwargs: Any):
        super().__init__(model, processor, method, total_steps, **kwargs)
        self.automatic_optimization = False
        self.kl = kl
        self.scorer = scorer
        self.max_new_tokens = max_new_tokens
        # Kept in a list so it is not a submodule: outside the optimizer, the state_dict and checkpoints.
        self._reference = [reference] if reference is not None else []
        # LoRA: the reference is the policy with its adapters switched off (the frozen base).
        self.adapter_reference = adapter_reference
        self._buffer: list[Rollout] = []
        # (prompt index, completions sampled for it) of this rank since the last check; read and
        # cleared by utils.distributed.RankAgreementCallback.
        self.rollout_groups: list[tuple[int, int]] = []

    @classmethod
    def from_config(cls, cfg: Any, model: torch.nn.Module, processor: Any, **common: Any) -> "GRPOModule":
        kl = build_kl_schedule(cfg.kl)
        # The reference is the starting policy, frozen; never loaded when beta can never be positive.
        # Under LoRA it is the policy itself with its adapters switched off (no second copy).
        adapter_reference = kl.can_be_positive and has_adapters(model)
        reference = (copy.deepcopy(model).eval().requires_grad_(False)
                     if kl.can_be_positive and not adapter_reference else None)
        max_new = effective_max_new_tokens(cfg.method.max_completion_length, cfg.model.max_new_tokens_cap)
        return cls(model, processor, kl=kl, reference=reference, adapter_reference=adapter_reference,
                   scorer=cfg.task.scorer, max_new_tokens=max_new, **common)

    @property
    def reference(self) -> torch.nn.Module | None:
        return self._reference[0] if self._reference else None

    @property
    def has_reference(self) -> bool:
        return self.reference is not None or self.adapter_reference

    def reference_log_probs(self, rollout: Rollout) -> torch.Tensor:
        """Per-token log-probs [N, C] under the frozen reference, without grad."""
        with torch.no_grad():
            if self.reference is not None:
                return self.log_probs(self.reference, rollout)
            was_training = self.model.training
            self.model.eval()
            try:
                with self.model.disable_adapter():
                    return self.log_probs(self.model, rollout)
            finally:
                self.model.train(was_training)

    def on_fit_start(self) -> None:
        if self.reference is not None:
            self.reference.to(self.device).eval()

    # ----------------------------------------------------------------------------------- rollout
    @torch.no_grad()
    def sample(self, batch: dict[str, Any]) -> torch.Tensor:
        """Completion ids [N, C] sampled from the policy, G per prompt of the batch (rows i*G..i*G+G-1
        continue prompt i)."""
        m, tok = self.method, self.processor.tokenizer
        was_training = self.model.training
        self.model.eval()
        # Every stop id of the model's generation config, as in evaluation (harness.stop_token_ids).
        sampling = dict(temperature=m.temperature, top_p=m.top_p, top_k=m.top_k or None, pad_token_id=tok.pad_token_id,
                        eos_token_id=stop_token_ids(self.model, tok),
                        min_new_tokens=min(m.min_completion_length, self.max_new_tokens))
        if self.shares_prompts(batch) and self.static_decoding_blocker is None:
            # One prefill per prompt, fixed-shape decoding (compiled per method.decode_compile), the same
            # sampling rules and draws as generate().
            sampling["top_k"] = m.top_k
            out = sample_groups(self.model, prompt_inputs(batch), m.num_generations, self.max_new_tokens,
                                suppress_token_ids=suppressed_token_ids(self.processor), compile_mode=m.decode_compile,
                                **sampling)
        else:
            prompts = repeat_prompts(batch, m.num_generations)
            # Explicit settings win over a hub config's defaults (Qwen2-VL: top_k 1, temperature 0.01;
            # the 7B's repetition_penalty 1.05): completions come from the policy the loss scores.
            out = self.model.generate(**prompts, do_sample=True, max_new_tokens=self.max_new_tokens,
                                      suppress_tokens=suppressed_token_ids(self.processor), repetition_penalty=1.0, **sampling)
            out = out[:, prompts["input_ids"].shape[1]:]
        self.model.train(was_training)
        return out

    def log_probs(self, model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
        """Per-token log-probs [N, C] of the completion under `model` (with grad if enabled)."""
        if rollout.prompts is not None:
            if rollout.position_ids is None:
                rollout.position_ids = full_position_ids(model, rollout.prompts, rollout.completion_ids,
                                                         rollout.completion_mask, rollout.group_size)
            logits = grouped_completion_logits(model, rollout.prompts, rollout.completion_ids,
                                               rollout.completion_mask, rollout.group_size, rollout.position_ids)
        else:
            length = rollout.completion_ids.shape[1]
            logits = model(**rollout.inputs, logits_to_keep=length + 1).logits[:, :-1]
        return token_log_probs(logits, rollout.completion_ids, self.method.temperature)

    def shares_prompts(self, batch: dict[str, Any]) -> bool:
        """Whether log-probs can run each prompt once for its G completions (same values, less work)."""
        return (self.method.share_prompt_prefix and "image_grid_thw" in batch and "mm_token_type_ids" in batch
                and supports_prefix_sharing(self.model)
                and (self.reference is None or supports_prefix_sharing(self.reference)))

    def build_rollout(self, batch: dict[str, Any], completion_ids: torch.Tensor) -> Rollout:
        """Score sampled completions of a prompt micro-batch and prepare everything the loss needs."""
        m, tok = self.method, self.processor.tokenizer
        G = m.num_generations
        mask = completion_mask(completion_ids, stop_token_ids(self.model, tok))
        shared = self.shares_prompts(batch)
        inputs = None if shared else append_completions(repeat_prompts(batch, G), completion_ids, mask)

        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        answers = [a for a in batch["meta"]["answers"] for _ in range(G)]
        questions = [q for q in batch["meta"]["questions"] for _ in range(G)]
        # The run's scoring protocol (eval.protocol): the accuracy reward pays that protocol's verdict.
        protocol = getattr(self.eval_spec, "protocol", DEFAULT_PROTOCOL)
        total, parts = compute_rewards(dict(m.rewards), texts, answer=answers, question=questions,
                                       scorer=[self.scorer] * len(texts), protocol=[protocol] * len(texts))
        device = completion_ids.device
        rewards = torch.tensor(total, dtype=torch.float32, device=device)
        rollout = Rollout(
            inputs=inputs, completion_ids=completion_ids, completion_mask=mask,
            advantages=group_advantages(rewards, G, scale=m.scale_rewards), rewards=rewards,
            reward_parts={k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in parts.items()},
        )
        if shared:
            rollout.prompts, rollout.group_size = prompt_inputs(batch), G
        with torch.no_grad():
            if m.num_iterations > 1:
                rollout.old_logp = self.log_probs(self.model, rollout)
            if self.has_reference:
                rollout.ref_logp = self.reference_log_probs(rollout)
        return rollout

    # ------------------------------------------------------------------------------------ update
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        rollout = self.build_rollout(batch, self.sample(batch))
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
                         aggregation=m.loss_aggregation, sizes=sizes)

    def accumulate_gradients(self, rollouts: list[Rollout], beta: float, backward: Any = None) -> dict[str, float]:
        """Backward of the step loss over all micro-batches (gradients add up in .grad)."""
        backward = backward or self.manual_backward
        sizes = self.step_sizes(rollouts)
        totals = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0}
        for rollout in rollouts:
            loss, stats = self.policy_loss(self.log_probs(self.model, rollout), rollout, beta, sizes)
            backward(loss)
            # Token-weighted means over the step.
            share = float(stats["tokens"]) / max(sizes.num_tokens, 1)
            totals["loss"] += float(loss.detach())
            totals["kl"] += float(stats["kl"]) * share
            totals["clip_ratio"] += float(stats["clip_ratio"]) * share
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
                self.clip_gradients(optimizer, gradient_clip_val=m.max_grad_norm, gradient_clip_algorithm="norm")
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()  # after a skip no parameter has a gradient: nothing moves
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if self.has_reference and finite:
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
        if self.has_reference:
            metrics["train/kl"] = totals["kl"]
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
        """How rollouts were decoded: the compile switch, whether the decode step ran compiled, any compiler
        failure it fell back from; or generate() and why (prompts not shared, or the decoder cannot run the model)."""
        m = self.method
        why = (self.static_decoding_blocker if m.share_prompt_prefix and supports_prefix_sharing(self.model)
               else "prompts not shared (method.share_prompt_prefix=false or a non-Qwen family)")
        if why is None:
            return {"decode": decode_record(m.decode_compile, self.device)}
        return {"decode": {"compile": m.decode_compile, "compiled": False, "fallback": None, "loop": "generate", "why": why}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "kl_schedule" in checkpoint:
            self.kl.load_state_dict(checkpoint["kl_schedule"])

"""What every method's LightningModule shares: the model, its processor, and evaluation."""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ..data.sampling import StreamPosition
from ..evaluation.harness import EvalAccumulator, EvalSpec, gather_items, generate, write_stage
from ..utils.errors import ModelError
from ..utils.finite import describe, nonfinite_tensors
from .lr_schedules import build_scheduler

log = logging.getLogger(__name__)


class NonFiniteError(ModelError, RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss, reward or gradient.

    A ModelError, so run.py reports it as the load-time NaN check does (models/factory.py
    check_finite_weights): one `error:` line naming what was non-finite and where (the first tensors),
    and what to do, exit status 2; a traceback would only show the guard that raised it. A sweep records
    it in the cell's error.json like any failure. A RuntimeError as before, for callers that catch one."""

# Metric names under eval/<task>/...
EVAL_METRICS = {
    "acc": "accuracy",
    "format_rate": "format_rate",
    "parse_failure_rate": "parse_failure_rate",
    "completion_tokens": "mean_completion_tokens",
}


class EvaluationModule(pl.LightningModule):
    """A VLM plus the shared evaluation harness as Lightning's validation loop: `mode=eval` runs it as
    is, and every training method's module (SFTModule, GRPOModule, ...) extends it.

    A validation pass (in-training, or `trainer.validate`) generates greedily on every eval split,
    scores with each task's scorer, logs eval/<task>/{acc,format_rate,...}, and writes
    <eval_dir>/<stage>/results.json and per-item completions. `eval_stage` names the next pass
    ("row_zero", "final"); unnamed passes are "step<global_step>".
    """

    def __init__(self, model: torch.nn.Module, processor: Any, eval_spec: EvalSpec | None = None,
                 eval_names: list[str] | None = None, eval_dir: str | Path | None = None,
                 write_completions: bool = True):
        super().__init__()
        self.model = model
        self.processor = processor
        self.eval_spec = eval_spec
        self.eval_names = list(eval_names or [])
        self.eval_dir = Path(eval_dir) if eval_dir else None
        self.write_completions = write_completions
        self.eval_stage: str | None = None
        self.last_eval: dict[str, dict[str, Any]] = {}
        self._acc: EvalAccumulator | None = None

    # ------------------------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        if self.eval_spec is None:
            raise RuntimeError("this module was built without an EvalSpec; it cannot evaluate")
        self._acc = EvalAccumulator(self.eval_spec)
        self.model.eval()

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded over the processes (FSDP: utils/distributed.PolicyFSDPStrategy)."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        return isinstance(self.model, FullyShardedDataParallel)

    def full_parameters(self) -> Any:
        """A context in which the model's parameters are whole: under FSDP gathered once (no writeback: for
        sampling and scoring without grad), elsewhere nothing to do."""
        import contextlib

        from torch.distributed.fsdp import FullyShardedDataParallel

        if self.sharded:
            return FullyShardedDataParallel.summon_full_params(self.model, writeback=False)
        return contextlib.nullcontext()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        task = self.eval_names[dataloader_idx]
        with self.full_parameters():
            texts, lengths = generate(self.model, self.processor, batch, self.eval_spec.max_new_tokens[task])
        self._acc.add(task, batch["meta"], texts, lengths)

    def on_validation_epoch_end(self) -> None:
        assert self._acc is not None
        self._acc.items = gather_items(self._acc.items)
        summaries = self._acc.summaries()
        for task, summary in summaries.items():
            for metric, key in EVAL_METRICS.items():
                if summary.get(key) is not None:
                    # Already identical on every rank (gathered above): no reduction needed.
                    self.log(f"eval/{task}/{metric}", float(summary[key]), add_dataloader_idx=False,
                             rank_zero_only=True)
        # An explicit x-axis for eval rows: Lightning's own `step` column lags one behind mid-training.
        self.log("progress/optimizer_steps", float(self.global_step), rank_zero_only=True)
        stage = self.eval_stage or f"step{self.global_step}"
        if self.eval_dir is not None and self.trainer.is_global_zero:
            write_stage(self.eval_dir / stage, summaries, self._acc,
                        extra={"stage": stage, "global_step": int(self.global_step)},
                        write_completions=self.write_completions)
        self.last_eval = summaries
        self.eval_stage = None
        if self.training:
            self.model.train()

    # ---------------------------------------------------------------------------------- helpers
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def setup(self, stage: str) -> None:
        # from_pretrained returns eval-mode models and Lightning no longer flips them.
        if stage == "fit":
            self.model.train()

    def on_train_epoch_start(self) -> None:
        self.model.train()


class TrainableModule(EvaluationModule):
    """What SFT and GRPO share: AdamW with the lr schedule, sample counting, grad-norm logging, and a
    checkpoint that resumes exactly (samples seen, data position, RNG state)."""

    def __init__(self, model: torch.nn.Module, processor: Any, method: Any, total_steps: int,
                 data_position: StreamPosition | None = None, lora_cfg: Any = None,
                 reference: torch.nn.Module | None = None, adapter_reference: bool = False, **eval_kwargs: Any):
        super().__init__(model, processor, **eval_kwargs)
        self.method = method
        self.total_steps = total_steps
        # The starting model, frozen (`starting_model`): GRPO's KL reference, and the base the training
        # curves measure the drift from (evaluation/curve.py). In a list so it is not a submodule: outside
        # the optimizer, the state_dict and checkpoints.
        self._reference = [reference] if reference is not None else []
        # LoRA: the starting model is the policy itself with its adapters switched off (no second copy).
        self.adapter_reference = adapter_reference
        # With LoRA the checkpoint holds only the adapters (the base is rebuilt from model.*), so
        # loading it must not demand the base weights.
        self.lora_cfg = lora_cfg
        self.strict_loading = lora_cfg is None
        self.samples_seen = 0
        # Optimizer steps dropped for a non-finite loss, reward or gradient (in all; and in a row).
        self.skipped_steps = 0
        self.consecutive_skips = 0
        # Shared with the training loader: micro-batches consumed, saved with the loader's state.
        self.data_position = data_position

    @classmethod
    def from_config(cls, cfg: Any, model: torch.nn.Module, processor: Any, **common: Any) -> "TrainableModule":
        """The module a run trains (runner.build_module); a method needing more of the config overrides it."""
        return cls(model, processor, **cls.starting_model(cfg, model, for_loss=False), **common)

    @staticmethod
    def starting_model(cfg: Any, model: torch.nn.Module, for_loss: bool) -> dict[str, Any]:
        """The frozen starting model, as constructor arguments, when the loss (`for_loss`: GRPO's KL term) or
        the training curves' drift measure (eval.curve_points) compare against it; {} when nothing does.
        Under LoRA it is the policy with its adapters switched off; otherwise a copy taken now, before any
        step (a resumed run's too: the checkpoint's weights are loaded into the policy later)."""
        from ..evaluation.curve import curves_enabled
        from ..models.adapters import has_adapters

        if not (for_loss or curves_enabled(cfg)):
            return {}
        if has_adapters(model):
            return {"adapter_reference": True}
        try:
            return {"reference": copy.deepcopy(model).eval().requires_grad_(False)}
        except Exception as exc:  # noqa: BLE001 - whatever stops the copy, the run must not start without it
            needs = "the KL term (kl=" + str(cfg.kl.name) + ")" if for_loss else "the KL-to-base curves (eval.curve_points)"
            raise RuntimeError(f"{needs} need a frozen copy of the starting model (model={cfg.model.name}, "
                               f"model.path={cfg.model.path}), and it could not be made: {type(exc).__name__}: "
                               f"{exc}") from exc

    @property
    def reference(self) -> torch.nn.Module | None:
        return self._reference[0] if self._reference else None

    @property
    def has_reference(self) -> bool:
        return self.reference is not None or self.adapter_reference

    def reference_log_probs(self, completions: Any, temperature: float = 1.0,
                            suppress_ids: tuple[int, ...] | list[int] = ()) -> torch.Tensor:
        """Per-token log-probs [N, C] of `completions` (models/rollouts.py) under the frozen starting model,
        without grad."""
        if not self.has_reference:
            raise RuntimeError("this module keeps no frozen starting model (no KL term, no KL-to-base curves)")
        with torch.no_grad():
            if self.reference is not None:
                return completions.log_probs(self.reference, temperature, suppress_ids)
            was_training = self.model.training
            self.model.eval()
            try:
                with self.model.disable_adapter():
                    return completions.log_probs(self.model, temperature, suppress_ids)
            finally:
                self.model.train(was_training)

    def on_fit_start(self) -> None:
        if self.reference is not None:
            self.reference.to(self.device).eval()

    def train_record(self) -> dict[str, Any]:
        """Method-specific facts for results.json's `train` record (how the run decoded, ...)."""
        return {}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Before the batch's hooks and checkpoint: a checkpoint after this batch counts it as consumed.
        if self.data_position is not None:
            self.data_position.consumed += 1

    def configure_optimizers(self) -> dict[str, Any]:
        m = self.method
        optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=m.lr, weight_decay=m.weight_decay,
                                      betas=tuple(m.adam_betas))
        scheduler = build_scheduler(optimizer, self.total_steps, m.warmup_ratio, m.lr_schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def guard_update(self, **values: Any) -> bool:
        """True when every value (loss, rewards, gradient norm, ...) is finite. Otherwise the step's
        gradients are dropped (set to None: AdamW then leaves every parameter and its moments as they
        were, while the step still counts, so the lr schedule and data stream stay aligned), the skip is
        counted and logged, and `method.max_nonfinite_skips` skips in a row stop the run."""
        bad = [name for name, value in values.items()
               if value is not None and not bool(torch.isfinite(torch.as_tensor(value, dtype=torch.float32)).all())]
        if not bad:
            self.consecutive_skips = 0
            return True
        stopping = self.consecutive_skips + 1 >= self.method.max_nonfinite_skips
        where = self.nonfinite_where() if stopping else ""  # read before the gradients are dropped
        for param in self.trainable_parameters():
            param.grad = None
        self.skipped_steps += 1
        self.consecutive_skips += 1
        log.warning("optimizer step %d skipped: non-finite %s (%d skipped so far, %d in a row)", self.global_step,
                    ", ".join(bad), self.skipped_steps, self.consecutive_skips)
        if stopping:
            rewards = ", check the reward functions (method.rewards)" if "rewards" in bad else ""
            raise NonFiniteError(
                f"{self.consecutive_skips} consecutive optimizer steps had a non-finite {', '.join(bad)} (the last at "
                f"step {self.global_step}); stopping. {where}. Lower method.lr{rewards}, or raise "
                f"method.max_nonfinite_skips={self.method.max_nonfinite_skips}")
        return False

    def nonfinite_where(self) -> str:
        """Where the non-finite values are, named as the load-time check names them (utils/finite.py): the
        first weights holding NaN/inf (the model itself diverged: every later step is NaN too), else the first
        gradients (this step's backward), else neither (the loss or a reward alone)."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        bad, total = nonfinite_tensors(named)
        if bad:
            return f"The model holds {describe(bad, total, 'weights')}"
        bad, total = nonfinite_tensors((n, p.grad) for n, p in named)
        if bad:
            return f"The step's backward gave {describe(bad, total, 'gradients')}; the weights are finite"
        return "The weights and gradients are finite: the loss or a reward itself was non-finite"

    def whole_policy(self) -> tuple[torch.nn.Module, dict[str, torch.Tensor] | None]:
        """The policy to export and its weights: the model itself (None: its own state dict), or under FSDP the
        wrapped model with its full state dict gathered to rank zero (a collective: every rank calls it)."""
        if not self.sharded:
            return self.model, None
        # The strategy's own full state dict (what its checkpoints hold), keyed from this module: "model." + the
        # policy's names.
        state = self.trainer.strategy.lightning_module_state_dict()
        weights = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
        policy = self.model.module
        # The gathered copies of tied weights (Qwen2-VL's head is its embedding) no longer share storage; shared
        # again, save_pretrained writes the tied one once, as from the plain model.
        for tied, source in (getattr(policy, "all_tied_weights_keys", None) or {}).items():
            if tied in weights and source in weights:
                weights[tied] = weights[source]
        return policy, weights

    def grad_norm(self) -> torch.Tensor | None:
        """Total L2 norm of the trainable parameters' gradients (before clipping); under FSDP over every
        process's slices."""
        norms = [p.grad.detach().norm(2) for p in self.trainable_parameters() if p.grad is not None]
        if not norms:
            return None
        total = torch.linalg.vector_norm(torch.stack(norms))
        if self.sharded:
            squared = total.square()
            torch.distributed.all_reduce(squared)
            total = squared.sqrt()
        return total

    def clip_to_norm(self, optimizer: Any, max_norm: float) -> None:
        """Gradients scaled to total norm `max_norm` at most (torch's clip_grad_norm_ rule); Lightning's own
        clipping refuses FSDP, so under it the slices are scaled by the norm over every process."""
        if not self.sharded:
            self.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")
            return
        norm = self.grad_norm()
        if norm is None:
            return
        scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for p in self.trainable_parameters():
            if p.grad is not None:
                p.grad.mul_(scale)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        # Automatic optimization (SFT): the same clipping as GRPO's, FSDP included.
        if gradient_clip_val:
            self.clip_to_norm(optimizer, float(gradient_clip_val))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from ..models.adapters import has_adapters, lora_config_dict

        if has_adapters(self.model) and self.lora_cfg is not None:
            # The frozen base comes from model.*; a LoRA checkpoint holds the adapters alone.
            trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
            checkpoint["lora"] = lora_config_dict(self.lora_cfg)
        checkpoint["samples_seen"] = self.samples_seen
        checkpoint["skipped_steps"] = self.skipped_steps
        # Sampling and shuffling continue from the same random state after a resume: each process's own (every
        # rank builds the checkpoint; rank zero writes it with every rank's state).
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        checkpoint["rng"] = rng
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:
            per_rank: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(per_rank, rng)
            checkpoint["rng_per_rank"] = per_rank

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.samples_seen = int(checkpoint.get("samples_seen", 0))
        self.skipped_steps = int(checkpoint.get("skipped_steps", 0))
        rng = checkpoint.get("rng")
        per_rank = checkpoint.get("rng_per_rank")
        if per_rank and len(per_rank) == self.trainer.world_size:
            rng = per_rank[self.global_rank]
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

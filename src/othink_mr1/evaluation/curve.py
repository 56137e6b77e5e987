"""Training curves: every eval task scored at a few evenly spaced optimizer steps, with the drift from the
starting model, so a run says how it got where it ended and not only where.

With `eval.curve_points=N` a training run measures, at N optimizer steps from 0 to the last (both
included), on a fixed subset of each eval task's split (`eval.curve_items` items chosen by
`eval.curve_seed`, the same for every run and method):

- `acc`: greedy accuracy (the paper's decoding) on the subset;
- `acc_sampled`: mean@k accuracy of k = `eval.curve_samples` completions per item at temperature 1;
- `kl_to_base`: KL(pi || pi_base) in nats per completion, estimated from the same completions
  (evaluation/drift.py), pi_base the frozen starting model (GRPO's KL reference where it has one).

The points are logged (eval/<task>/{acc_subset,acc_sampled,kl_to_base} at step = the optimizer step, with
progress/optimizer_steps) and kept in results.json under `curve` (step -> task -> metrics); a checkpoint
holds the points measured so far, so a resumed run ends with the curve of a run never stopped. The full
split is still scored after training (results.json `after`).

A point's sampling draws from its own seeded generator state (eval.curve_seed, the step, the task) inside
an isolated RNG, so measuring curves changes nothing a run trains on: with or without them, and resumed
or not, a run draws the same rollouts and ends with the same weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.seed import isolate_rng

from ..models.prefix_sharing import static_decoding_blocker
from ..models.rollouts import Sampling, TokenRules, shares_prompts
from ..rewards.scorers import get_scorer
from ..utils.errors import ConfigError
from .drift import DriftItem, sample_log_ratios, summarize_drift
from .harness import EvalAccumulator, EvalSpec, gather_items, generate
from .metrics import CURVE_POINT_METRICS



def curves_enabled(cfg: Any) -> bool:
    """Whether a run measures training curves: a training run with eval.curve_points set."""
    return cfg.get("mode") == "train" and bool(cfg.eval.get("curve_points"))


def check_curve_points(points: int, total_steps: int, every: int = 1, steps_from: str = "") -> None:
    """eval.curve_points must be at least 2 (step 0 and the last) and at most the run's optimizer steps (in
    rollout batches of `every` steps where a batch serves several: GRPO's num_iterations)."""
    units = total_steps // max(every, 1)
    if points < 2:
        raise ConfigError(f"eval.curve_points={points}: a curve needs at least 2 points (step 0 and the last step); "
                          "null measures no curve")
    if points > units:
        what = f"{total_steps} optimizer steps" + (f" ({units} rollout batches of {every})" if every > 1 else "")
        raise ConfigError(f"eval.curve_points={points} is more than the run's {what}{steps_from}: set it to 2..{units}, "
                          "or null for no curve")


def curve_steps(points: int, total_steps: int, every: int = 1) -> list[int]:
    """`points` optimizer steps from 0 to total_steps, both included, evenly spaced in units of `every`
    steps (rounded half up); distinct whenever check_curve_points accepts `points`."""
    check_curve_points(points, total_steps, every)
    units = total_steps // every
    return [every * int(i * units / (points - 1) + 0.5) for i in range(points)]


def curve_items(split_size: int, count: int, seed: int) -> list[int]:
    """The fixed subset of an eval split the curve scores: `count` item indices (all of a smaller split)
    drawn by `seed` alone, sorted, so every run and method of a grid scores the same items."""
    order = torch.randperm(split_size, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:min(count, split_size)])


@dataclass
class CurveTask:
    """One eval task as the curve scores it."""

    loader: Any  # its subset as prompt batches (VLMDataModule.eval_dataloader(name, items))
    scorer: str
    max_new_tokens: int


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class TrainingCurve(pl.Callback):
    """Measures the curve points (module docstring) at the start of training and after each optimizer step
    that is one. It runs before the checkpoint callback of the same step (Lightning orders checkpoint
    callbacks last), so a checkpoint holds every point up to its step."""

    def __init__(self, steps: list[int], tasks: dict[str, CurveTask], protocol: str, samples: int, seed: int,
                 compile_mode: str = "off"):
        self.steps, self.tasks, self.protocol = list(steps), tasks, protocol
        self.samples, self.seed, self.compile_mode = samples, seed, compile_mode
        self.points: dict[int, dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_config(cls, cfg: Any, dm: Any, spec: EvalSpec, total_steps: int, every: int) -> "TrainingCurve":
        e = cfg.eval
        # A task's subset is one batch: one prefill and one decode loop per point (about a third faster than
        # batches of eval.batch_size on tiny_base; the size of one GRPO rollout at the defaults).
        tasks = {name: CurveTask(dm.eval_dataloader(name, curve_items(len(dm.eval_splits[name]), e.curve_items,
                                                                      e.curve_seed), batch_size=e.curve_items),
                                 spec.scorers[name], spec.max_new_tokens[name]) for name in dm.eval_names}
        return cls(curve_steps(e.curve_points, total_steps, every), tasks, spec.protocol, e.curve_samples, e.curve_seed,
                   compile_mode=cfg.method.get("decode_compile", "off"))

    def settings(self) -> dict[str, Any]:
        """How the curve was measured, for results.json (`curve_settings`)."""
        return {"steps": self.steps, "items": {name: len(task.loader.dataset) for name, task in self.tasks.items()},
                "samples_per_item": self.samples, "seed": self.seed, "temperature": 1.0}

    def describe(self) -> str:
        """The curve's cost, for the start-up budget lines."""
        items = self.settings()["items"]
        per_task = ", ".join(f"{name} {n}" for name, n in items.items())
        return (f"[curve] {len(self.steps)} points (optimizer steps {', '.join(map(str, self.steps))}) x items per task "
                f"({per_task}) x (1 greedy + {self.samples} sampled at temperature 1) = "
                f"{len(self.steps) * sum(items.values()) * (1 + self.samples)} completions; KL to the starting model")

    # ------------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._measure_if_due(trainer, module)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._measure_if_due(trainer, module)

    def state_dict(self) -> dict[str, Any]:
        return {"points": {str(step): point for step, point in self.points.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.points = {int(step): point for step, point in state.get("points", {}).items()}

    def record(self) -> dict[str, dict[str, dict[str, Any]]]:
        """results.json's `curve`: optimizer step (as text, JSON's keys) -> task -> metrics, in step order."""
        return {str(step): self.points[step] for step in sorted(self.points)}

    # ------------------------------------------------------------------------------ measuring
    def _measure_if_due(self, trainer: pl.Trainer, module: Any) -> None:
        step = int(trainer.global_step)
        if step not in self.steps or step in self.points:
            return
        started = time.perf_counter()
        self.points[step] = point = self.measure(module, step)
        seconds = time.perf_counter() - started
        metrics = {f"eval/{name}/{logged}": float(values[key]) for name, values in point.items()
                   for key, logged in CURVE_POINT_METRICS.items()}
        metrics["progress/optimizer_steps"] = float(step)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
                logger.save()
            print(f"[curve] step {step}/{self.steps[-1]}: " + "; ".join(
                f"{name} acc {100 * v['acc']:.1f}, sampled {100 * v['acc_sampled']:.1f}, KL to base {v['kl_to_base']:.3f}"
                for name, v in point.items()) + f" ({seconds:.1f} s)", flush=True)

    def measure(self, module: Any, step: int) -> dict[str, dict[str, Any]]:
        """Every task's point at this step (the module's model as it is now; its frozen starting model as
        the base)."""
        model, processor = module.model, module.processor
        rules = TokenRules.of(model, processor)
        base_log_probs = lambda c: module.reference_log_probs(c, 1.0, rules.suppress_ids)  # noqa: E731
        out: dict[str, dict[str, Any]] = {}
        # Under FSDP the policy's parameters are gathered once for the whole point (sampling, scoring, no grad).
        with isolate_rng(include_cuda=True), module.full_parameters():
            was_training = model.training
            model.eval()
            try:
                for position, (name, task) in enumerate(self.tasks.items()):
                    torch.manual_seed(self.seed * 1_000_003 + step * 1_009 + position)
                    sampling = Sampling(max_new_tokens=task.max_new_tokens, compile_mode=self.compile_mode)
                    scorer = get_scorer(task.scorer, self.protocol)
                    greedy = EvalAccumulator(EvalSpec({name: task.scorer}, {name: task.max_new_tokens}, self.protocol))
                    drift: dict[int, DriftItem] = {}
                    for batch in task.loader:
                        batch = _to_device(batch, module.device)
                        greedy.add(name, batch["meta"], *generate(model, processor, batch, task.max_new_tokens))
                        shared = shares_prompts(batch, model, module.reference)
                        static = shared and static_decoding_blocker(model) is None
                        completions, ratios = sample_log_ratios(model, base_log_probs, batch, self.samples, sampling,
                                                                rules, static, shared)
                        meta = batch["meta"]
                        for row, (text, ratio) in enumerate(zip(completions.texts(processor.tokenizer), ratios.tolist())):
                            prompt = row // self.samples
                            item = drift.setdefault(meta["indices"][prompt], DriftItem(meta["indices"][prompt]))
                            item.log_ratios.append(ratio)
                            item.correct.append(scorer.score(text, meta["answers"][prompt]).correct)
                    greedy.items = gather_items(greedy.items)
                    summary = greedy.summaries()[name]
                    items = gather_items({name: drift}).get(name, {})
                    out[name] = {"acc": summary["accuracy"], "n": summary["n"],
                                 **summarize_drift([items[i] for i in sorted(items)])}
            finally:
                model.train(was_training)
        return out



def format_curve(curve: dict[str, dict[str, dict[str, Any]]], tasks: list[str]) -> str:
    """results.json's `curve` as a plain-text table: one row per point, per task greedy and sampled
    accuracy (%) and KL to the starting model (nats per completion)."""
    head = f"{'step':>6}  " + "  ".join(f"{t + ': acc':>16} {'sampled':>8} {'KL':>7}" for t in tasks)
    lines = [head, "-" * len(head)]
    for step, point in curve.items():
        cells = []
        for t in tasks:
            v = point.get(t)
            cells.append(f"{100 * v['acc']:>16.2f} {100 * v['acc_sampled']:>8.2f} {v['kl_to_base']:>7.3f}" if v
                         else f"{'-':>16} {'-':>8} {'-':>7}")
        lines.append(f"{step:>6}  " + "  ".join(cells))
    return "\n".join(lines)

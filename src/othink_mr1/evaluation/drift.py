"""How far a policy has drifted from its starting model, and how it scores when it samples.

For prompts x of a task, completions y ~ pi(. | x) are sampled at temperature 1 (k per prompt, the
model's stop tokens ending them, image markup never sampled: models/rollouts.py). Each completion's

    log pi(y | x) - log pi_base(y | x) = sum over its tokens of (log pi - log pi_base)

is an unbiased, single-sample estimate of KL(pi(. | x) || pi_base(. | x)) in nats per completion: its
expectation under pi is the KL of the two distributions over whole completions (of at most
max_new_tokens tokens, the distribution sampling draws from). Both log-probs are taken over the
distribution the tokens were drawn from (image markup removed from both), so the estimate is exact in
expectation, not only close; a model against itself gives 0 exactly. The mean over the k completions of
each prompt and then over prompts is the measure ("RL's Razor", arXiv 2509.04259, relates forgetting to
it); its standard error treats prompts as fixed strata.

The same completions, scored by the task's scorer, give the sampled accuracy (mean@k at temperature 1):
what GRPO optimizes, and a far steadier readout than the greedy accuracy of a small model.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..models.rollouts import Completions, Sampling, TokenRules, sample_completions


def sequence_log_ratios(logp: torch.Tensor, base_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] sum over each completion's tokens of log pi - log pi_base (mask: [N, C], 1 on its tokens). The
    positions after a completion's end are left out, not multiplied by 0: the pads there may be a token both
    distributions exclude (log-prob -inf, and -inf - -inf is nan)."""
    return torch.where(mask.bool(), logp.float() - base_logp.float(), 0.0).sum(dim=1)


@torch.no_grad()
def sample_log_ratios(policy: torch.nn.Module, base_log_probs: Callable[[Completions], torch.Tensor],
                      batch: dict[str, Any], k: int, sampling: Sampling, rules: TokenRules, static: bool,
                      shared: bool) -> tuple[Completions, torch.Tensor]:
    """k completions per prompt of `batch` sampled from `policy`, and each one's log pi - log pi_base [N]
    (`base_log_probs`: the starting model's per-token log-probs of the same completions, with `rules`'
    suppressed tokens taken out as here). `static`/`shared`: prefix sharing for sampling / log-probs
    (models/rollouts.py)."""
    ids = sample_completions(policy, batch, k, sampling, rules, static)
    completions = Completions.of(batch, ids, rules, k, shared)
    was_training = policy.training
    policy.eval()
    try:
        logp = completions.log_probs(policy, sampling.temperature, rules.suppress_ids)
    finally:
        policy.train(was_training)
    return completions, sequence_log_ratios(logp, base_log_probs(completions), completions.completion_mask)


@dataclass
class DriftItem:
    """One prompt's k sampled completions: their log-ratios to the base (nats) and whether each was right."""

    index: int
    log_ratios: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)


def stratified_mean(groups: list[list[float]]) -> tuple[float, float]:
    """The mean over groups of each group's mean, and its standard error with the groups as fixed strata
    (sqrt(sum var_i / k_i) / n, var_i the group's sample variance); groups of one value fall back to the
    standard error of all values, between-group spread included (larger, never smaller)."""
    groups = [g for g in groups if g]
    if not groups:
        return math.nan, math.nan
    mean = statistics.fmean(statistics.fmean(g) for g in groups)
    if all(len(g) > 1 for g in groups):
        return mean, math.sqrt(sum(statistics.variance(g) / len(g) for g in groups)) / len(groups)
    flat = [v for g in groups for v in g]
    return mean, (statistics.stdev(flat) / math.sqrt(len(flat)) if len(flat) > 1 else math.nan)


def summarize_drift(items: list[DriftItem]) -> dict[str, Any]:
    """kl_to_base (nats per completion) and acc_sampled (mean@k) with their standard errors, over prompts."""
    kl, kl_se = stratified_mean([item.log_ratios for item in items])
    acc, acc_se = stratified_mean([[float(c) for c in item.correct] for item in items])
    return {"kl_to_base": kl, "kl_to_base_stderr": kl_se, "acc_sampled": acc, "acc_sampled_stderr": acc_se,
            "prompts": len(items), "samples": sum(len(item.log_ratios) for item in items)}

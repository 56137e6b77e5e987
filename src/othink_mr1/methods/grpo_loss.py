"""The GRPO loss, as pure functions, readable top to bottom.

For the G completions o_1..o_G of one prompt with rewards r_i (DeepSeekMath; R1-V; OThink-MR1):

    A_i   = (r_i - mean(r)) / (std(r) + 1e-4)            group-relative advantage, std unbiased
    rho_t = pi_theta(o_t) / pi_old(o_t)                  per-token ratio to the rollout policy
    KL_t  = exp(ref_t - logp_t) - (ref_t - logp_t) - 1   the "k3" estimator, >= 0
    L     = -(1/G) sum_i (1/|o_i|) sum_t [ min(rho_t A_i, clip(rho_t, 1-eps, 1+eps_high) A_i) - beta KL_t ]

With one update per rollout (num_iterations = 1, R1-V) pi_old is pi_theta itself (detached): rho is
exactly 1 and the clip never binds, but the gradient is A_i * grad log pi. With mu > 1 updates the
rollout's log-probs are pi_old and the clip is live.

Aggregations (how per-token terms become one number), each normalised by the whole optimizer step
so that gradient accumulation (4 x micro-batch 1 or 1 x micro-batch 4) gives the same gradient:
    grpo     token mean per completion, then mean over completions (the paper's, the default)
    dapo     token mean over all completion tokens of the step (DAPO)
    dr_grpo  token sum divided by completions x a fixed max length (Dr. GRPO)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("grpo", "dapo", "dr_grpo")
ADVANTAGE_EPS = 1e-4


def check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"method.loss_aggregation='{aggregation}': expected one of {list(AGGREGATIONS)}")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """(r - group mean) / (group std + 1e-4) for consecutive groups of `group_size` rewards."""
    grouped = rewards.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centered = centered / (grouped.std(dim=1, keepdim=True) + ADVANTAGE_EPS)  # unbiased std (R1-V)
    return centered.reshape(-1)


# exp(20) = 4.9e8 is finite in fp32 and bf16; a policy that puts 20 nats less on a token than the
# reference gets the same (huge) penalty as one at 20, instead of an inf that poisons the step.
MAX_KL_LOG_RATIO = 20.0


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref) (Schulman, 2020): always >= 0, 0 iff equal. The
    log-ratio is capped at MAX_KL_LOG_RATIO so exp() cannot overflow."""
    delta = (ref_logp - logp).clamp(max=MAX_KL_LOG_RATIO)
    return torch.exp(delta) - delta - 1.0


@dataclass
class StepSizes:
    """Normalisers for the whole optimizer step (all micro-batches), so accumulation is exact."""

    num_sequences: int
    num_tokens: int
    max_completion_length: int

    @classmethod
    def of_micro_batch(cls, mask: torch.Tensor) -> "StepSizes":
        """A step of this one micro-batch ([sequences, completion tokens] mask): the loss is the full-batch loss."""
        return cls(mask.shape[0], int(mask.sum().item()), mask.shape[1])


def grpo_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    aggregation: str = "grpo",
    sizes: StepSizes | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of the step loss, and statistics for logging.

    logp, old_logp, ref_logp, mask: [sequences, completion tokens]; advantages: [sequences].
    `sizes` defaults to this micro-batch alone (then the loss is the full-batch loss).
    `token_weights` [sequences, completion tokens], no grad: each token's policy-gradient term is multiplied
    by it (truncated importance sampling of a rollout engine's mismatch, methods/grpo.py); None = 1.
    """
    check_aggregation(aggregation)
    mask = mask.to(logp.dtype)
    if sizes is None:
        sizes = StepSizes.of_micro_batch(mask)
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high

    # Policy-gradient term with the PPO clip.
    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old)
    adv = advantages.unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    per_token = -torch.min(unclipped, clipped)
    if token_weights is not None:
        per_token = per_token * token_weights.detach()

    # KL penalty to the frozen reference.
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if beta != 0.0:
        per_token = per_token + beta * kl

    # Aggregate.
    if aggregation == "grpo":
        per_sequence = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        loss = per_sequence.sum() / sizes.num_sequences
    elif aggregation == "dapo":
        loss = (per_token * mask).sum() / max(sizes.num_tokens, 1)
    else:
        loss = (per_token * mask).sum() / (sizes.num_sequences * sizes.max_completion_length)

    with torch.no_grad():
        tokens = mask.sum().clamp(min=1.0)
        is_clipped = ((ratio < 1.0 - eps_low) & (adv < 0)) | ((ratio > 1.0 + eps_high) & (adv > 0))
        stats = {
            "kl": (kl * mask).sum() / tokens,
            "clip_ratio": (is_clipped.to(mask.dtype) * mask).sum() / tokens,
            "tokens": mask.sum(),
        }
    return loss, stats

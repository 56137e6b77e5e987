"""GSPO, Group Sequence Policy Optimization (Zheng et al., 2025, arXiv 2507.18071): GRPO with the
importance ratio and its clip per sequence instead of per token. Sampling, rewards, group advantages,
the KL schedule and the update loop are GRPO's (GRPOModule); only the objective differs:

    s_i = exp( (1/|o_i|) sum_t (logp_t - old_t) )        the sequence ratio: the token ratios' geometric mean
    L   = (1/N) sum_i [ -min(s_i A_i, clip(s_i, 1-eps, 1+eps_high) A_i) + beta (1/|o_i|) sum_t KL_t ]

N counts the sequences of the whole optimizer step (so accumulation is exact), KL_t is GRPO's k3
estimate to the reference. A sequence is clipped as a whole: when s_i leaves the band on the side its
advantage pushes towards, none of its tokens carries policy gradient, however close to 1 a token's
own ratio is. With one update per rollout (num_iterations = 1) s_i is exactly 1 and the gradient is
GRPO's with the per-sequence token mean (loss_aggregation=grpo); with num_iterations > 1 the ratio and
the clip are live.
"""

from __future__ import annotations

import torch

from .grpo import GRPOModule, Rollout
from .grpo_loss import StepSizes, k3_kl


def gspo_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon: float,
    epsilon_high: float | None = None,
    sizes: StepSizes | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of the step loss, and statistics for logging (as grpo_loss).

    logp, old_logp, ref_logp, mask: [sequences, completion tokens]; advantages: [sequences].
    `sizes` defaults to this micro-batch alone (then the loss is the full-batch loss).
    """
    mask = mask.to(logp.dtype)
    lengths = mask.sum(dim=1).clamp(min=1.0)
    if sizes is None:
        sizes = StepSizes.of_micro_batch(mask)
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high

    # Policy-gradient term with the clip on the sequence ratio.
    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(((logp - old) * mask).sum(dim=1) / lengths)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    per_sequence = -torch.min(unclipped, clipped)

    # KL penalty to the frozen reference: GRPO's per-token k3, a token mean per sequence.
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if beta != 0.0:
        per_sequence = per_sequence + beta * (kl * mask).sum(dim=1) / lengths

    loss = per_sequence.sum() / sizes.num_sequences

    with torch.no_grad():
        tokens = mask.sum().clamp(min=1.0)
        is_clipped = ((ratio < 1.0 - eps_low) & (advantages < 0)) | ((ratio > 1.0 + eps_high) & (advantages > 0))
        stats = {
            "kl": (kl * mask).sum() / tokens,
            # Tokens of clipped sequences, so the step's token-weighted mean is comparable with GRPO's.
            "clip_ratio": (is_clipped.to(mask.dtype) * mask.sum(dim=1)).sum() / tokens,
            "tokens": mask.sum(),
        }
    return loss, stats


class GSPOModule(GRPOModule):
    """GRPOModule with the sequence-level objective."""

    def policy_loss(self, logp: torch.Tensor, rollout: Rollout, beta: float,
                    sizes: StepSizes) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = self.method
        return gspo_loss(logp, rollout.advantages, rollout.completion_mask, old_logp=rollout.old_logp,
                         ref_logp=rollout.ref_logp, beta=beta, epsilon=m.epsilon, epsilon_high=m.epsilon_high,
                         sizes=sizes)

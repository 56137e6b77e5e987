"""GSPO: with the ratio exactly 1 its gradient is GRPO's with the per-sequence mean; the clip acts on whole
sequences; `run.py method=gspo` trains the tiny model and names the run gspo; num_iterations > 1 (the
ratio and the clip live) trains too."""

from __future__ import annotations

import pytest
import torch

from othink_mr1.methods.grpo_loss import StepSizes, grpo_loss
from othink_mr1.methods.gspo import gspo_loss


def random_batch(seed: int) -> dict:
    """Sequences of varied lengths (at least one token each), advantages, reference log-probs, beta."""
    g = torch.Generator().manual_seed(seed)
    n, c = int(torch.randint(2, 9, (1,), generator=g)), int(torch.randint(1, 13, (1,), generator=g))
    lengths = torch.randint(1, c + 1, (n,), generator=g)
    return dict(
        logp=-torch.rand(n, c, generator=g) * 3,
        advantages=torch.randn(n, generator=g),
        mask=(torch.arange(c) < lengths.unsqueeze(1)).long(),
        ref_logp=-torch.rand(n, c, generator=g) * 3,
        beta=float(torch.rand(1, generator=g)) * 0.1,
    )


def loss_and_grad(loss_fn, logp: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    logp = logp.clone().requires_grad_(True)
    loss, _ = loss_fn(logp, **kwargs)
    loss.backward()
    return loss.detach(), logp.grad


@pytest.mark.parametrize("seed", range(20))
def test_with_the_ratio_at_one_the_gradient_is_grpos_with_the_sequence_mean(seed):
    b = random_batch(seed)
    common = dict(advantages=b["advantages"], mask=b["mask"], ref_logp=b["ref_logp"], beta=b["beta"])
    # A step of several micro-batches: the normalisers are the step's, not this micro-batch's.
    sizes = StepSizes(num_sequences=b["mask"].shape[0] + 3, num_tokens=int(b["mask"].sum()) + 7, max_completion_length=16)
    for old in (None, b["logp"]):  # mu = 1 (no old log-probs), and mu > 1 before its first update
        gspo = loss_and_grad(gspo_loss, b["logp"], old_logp=old, epsilon=3e-4, epsilon_high=4e-4, sizes=sizes, **common)
        grpo = loss_and_grad(grpo_loss, b["logp"], old_logp=old, epsilon=0.2, aggregation="grpo", sizes=sizes, **common)
        assert torch.allclose(gspo[0], grpo[0], atol=1e-6)
        assert torch.allclose(gspo[1], grpo[1], atol=1e-7)


def test_the_clip_acts_on_whole_sequences():
    eps_low, eps_high = 3e-4, 4e-4
    # Row 0: mean log-ratio 0.1 (above the band) although two of its three tokens have ratio 1.
    # Row 1: the same row with a negative advantage: clipping never helps it, so its gradient stays.
    # Row 2: mean log-ratio 0 (ratio exactly 1) although one token's ratio is e^0.5, far outside
    #        a token-level band: nothing is clipped.
    # Row 3: mean log-ratio -0.1 (below the band) with a negative advantage: clipped, no gradient.
    log_ratio = torch.tensor([[0.0, 0.0, 0.3], [0.0, 0.0, 0.3], [0.5, -0.5, 0.0], [0.0, 0.0, -0.3]])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    mask = torch.ones_like(log_ratio, dtype=torch.long)
    old = -torch.ones_like(log_ratio)
    logp = (old + log_ratio).requires_grad_(True)
    loss, stats = gspo_loss(logp, advantages, mask, old_logp=old, epsilon=eps_low, epsilon_high=eps_high)
    loss.backward()
    ratio = log_ratio.mean(dim=1).exp()

    assert torch.equal(logp.grad[0], torch.zeros(3)) and torch.equal(logp.grad[3], torch.zeros(3))
    # d/dlogp_t of -s*A/N = -A * s / |o| / N on every token of an unclipped sequence.
    for row in (1, 2):
        expected = torch.full((3,), float(-advantages[row] * ratio[row] / 3 / 4))
        assert torch.allclose(logp.grad[row], expected), row
    assert float(stats["clip_ratio"]) == pytest.approx(0.5)  # rows 0 and 3: half of the tokens

    # Token-level GRPO with the same band would keep row 0's two tokens at ratio 1 and clip row 2's first.
    token_logp = (old + log_ratio).requires_grad_(True)
    grpo_loss(token_logp, advantages, mask, old_logp=old, epsilon=eps_low, epsilon_high=eps_high)[0].backward()
    assert (token_logp.grad[0, :2] != 0).all() and token_logp.grad[2, 0] == 0



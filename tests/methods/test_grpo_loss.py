"""The GRPO loss against values computed by hand, for each aggregation, with the clip inert (mu 1)
and live (mu 2); the k3 KL; group advantages."""

from __future__ import annotations

import math

import pytest
import torch

from othink_mr1.methods.grpo_loss import StepSizes, group_advantages, grpo_loss, k3_kl
from othink_mr1.models.rollouts import token_log_probs

# Two completions (one group of G=2): lengths 2 and 3, padded to 3.
LOGP = [[-1.0, -2.0, -9.0], [-0.5, -1.5, -0.25]]
REF = [[-1.2, -1.8, -9.0], [-0.4, -1.5, -0.75]]
MASK = [[1, 1, 0], [1, 1, 1]]
ADV = [1.0, -1.0]
BETA = 0.1


def k3(logp: float, ref: float) -> float:
    return math.exp(ref - logp) - (ref - logp) - 1.0


def hand_terms() -> list[list[float]]:
    """Per-token loss with ratio 1: -A_i + beta * KL_t, on the unmasked tokens."""
    return [[-ADV[i] + BETA * k3(LOGP[i][t], REF[i][t]) for t in range(3) if MASK[i][t]] for i in range(2)]


def tensors():
    logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
    return logp, torch.tensor(REF, dtype=torch.float64), torch.tensor(MASK), torch.tensor(ADV, dtype=torch.float64)


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
def test_loss_and_gradient_match_hand_computation_with_the_clip_inert(aggregation):
    logp, ref, mask, adv = tensors()
    loss, stats = grpo_loss(logp, adv, mask, ref_logp=ref, beta=BETA, aggregation=aggregation)
    terms = hand_terms()
    if aggregation == "grpo":
        expected = sum(sum(row) / len(row) for row in terms) / 2
    elif aggregation == "dapo":
        expected = sum(sum(row) for row in terms) / 5
    else:  # sum over a fixed max length of 3 per completion
        expected = sum(sum(row) for row in terms) / (2 * 3)
    assert loss.item() == pytest.approx(expected, rel=1e-12)

    # d/dlogp of (-A * rho + beta * KL) at rho = 1: -A + beta * (1 - exp(ref - logp)), times the weight.
    loss.backward()
    for i in range(2):
        for t in range(3):
            if not MASK[i][t]:
                assert logp.grad[i, t].item() == 0.0
                continue
            weight = {"grpo": 1 / (sum(MASK[i]) * 2), "dapo": 1 / 5, "dr_grpo": 1 / 6}[aggregation]
            d = -ADV[i] + BETA * (1 - math.exp(REF[i][t] - LOGP[i][t]))
            assert logp.grad[i, t].item() == pytest.approx(weight * d, rel=1e-9)
    assert stats["clip_ratio"].item() == 0.0
    expected_kl = sum(k3(LOGP[i][t], REF[i][t]) for i in range(2) for t in range(3) if MASK[i][t]) / 5
    assert stats["kl"].item() == pytest.approx(expected_kl)


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
def test_the_clip_binds_outside_the_band_when_old_logprobs_differ(aggregation):
    # mu > 1: the rollout's log-probs are pi_old. rho per token (logp - old = log rho), 0 marks padding:
    rho = [[1.5, 0.5, 1.0], [0.5, 1.1, 1.3]]
    mask_rows = [[1, 1, 0], [1, 1, 1]]
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    logp = torch.full((2, 3), -1.0, dtype=torch.float64, requires_grad=True)
    old = logp.detach() - torch.log(torch.tensor(rho, dtype=torch.float64))
    loss, stats = grpo_loss(logp, adv, torch.tensor(mask_rows), old_logp=old, epsilon=0.2, aggregation=aggregation)
    # A>0: min(1.5, 1.2) -> 1.2 (clipped), min(0.5, 0.8) -> 0.5 (below the band but not clipped for A>0);
    # A<0: min(-0.5, -0.8) -> -0.8 (clipped), -1.1 (inside), min(-1.3, -1.2) -> -1.3 (not clipped for A<0).
    per_token = [[-1.2, -0.5], [0.8, 1.1, 1.3]]
    expected = {"grpo": (sum(per_token[0]) / 2 + sum(per_token[1]) / 3) / 2,
                "dapo": (sum(per_token[0]) + sum(per_token[1])) / 5,
                "dr_grpo": (sum(per_token[0]) + sum(per_token[1])) / (2 * 3)}[aggregation]
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert stats["clip_ratio"].item() == pytest.approx(2 / 5)
    loss.backward()
    # Clipped and padded tokens carry no gradient; the others -A * rho times the aggregation's weight.
    for i, t in ((0, 0), (1, 0), (0, 2)):
        assert logp.grad[i, t].item() == 0.0
    for i, t in ((0, 1), (1, 1), (1, 2)):
        weight = {"grpo": 1 / (sum(mask_rows[i]) * 2), "dapo": 1 / 5, "dr_grpo": 1 / 6}[aggregation]
        assert logp.grad[i, t].item() == pytest.approx(-adv[i].item() * rho[i][t] * weight, rel=1e-9)


def test_epsilon_high_widens_only_the_upper_bound():
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    logp = torch.zeros(2, 1, dtype=torch.float64)
    old = -torch.log(torch.tensor([[1.25], [0.75]], dtype=torch.float64))
    _, symmetric = grpo_loss(logp, adv, torch.ones(2, 1), old_logp=old, epsilon=0.2)
    _, clip_higher = grpo_loss(logp, adv, torch.ones(2, 1), old_logp=old, epsilon=0.2, epsilon_high=0.28)
    assert symmetric["clip_ratio"].item() == pytest.approx(1.0)  # 1.25 > 1.2 (A>0) and 0.75 < 0.8 (A<0)
    assert clip_higher["clip_ratio"].item() == pytest.approx(0.5)  # 1.25 < 1.28 now passes; 0.75 still clipped


def test_explicit_step_sizes_split_the_batch_loss_exactly():
    logp, ref, mask, adv = tensors()
    for aggregation in ("grpo", "dapo", "dr_grpo"):
        whole, _ = grpo_loss(logp, adv, mask, ref_logp=ref, beta=BETA, aggregation=aggregation)
        sizes = StepSizes(num_sequences=2, num_tokens=5, max_completion_length=3)
        parts = [grpo_loss(logp[i:i + 1], adv[i:i + 1], mask[i:i + 1], ref_logp=ref[i:i + 1], beta=BETA,
                           aggregation=aggregation, sizes=sizes)[0] for i in range(2)]
        assert (parts[0] + parts[1]).item() == pytest.approx(whole.item(), rel=1e-12)


def test_unknown_aggregation_is_named():
    logp, ref, mask, adv = tensors()
    with pytest.raises(ValueError, match="method.loss_aggregation='mean'"):
        grpo_loss(logp, adv, mask, aggregation="mean")


def test_k3_kl_is_nonnegative_and_zero_only_at_equality():
    torch.manual_seed(0)
    a, b = torch.randn(1000, dtype=torch.float64), torch.randn(1000, dtype=torch.float64)
    assert (k3_kl(a, b) >= 0).all()
    assert torch.equal(k3_kl(a, a), torch.zeros_like(a))
    assert (k3_kl(a, b)[a != b] > 0).all()
    assert k3_kl(torch.tensor(-1.0), torch.tensor(-2.0)).item() == pytest.approx(math.exp(-1) + 1 - 1)


def test_group_advantages_use_the_unbiased_std_per_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, 4)
    std = math.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 3)  # unbiased: divide by G - 1
    assert adv[:4].tolist() == pytest.approx([0.75 / (std + 1e-4)] + [-0.25 / (std + 1e-4)] * 3)
    assert adv[4:].tolist() == [0.0] * 4  # a group with one reward value carries no signal
    assert group_advantages(rewards, 4, scale=False)[:4].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


@pytest.mark.parametrize("chunk", [1 << 24, 55, 1])  # whole batch, one row (5 x 11 = 55), one row (minimum)
def test_token_log_probs_is_a_temperature_scaled_log_softmax_gather(monkeypatch, chunk):
    from othink_mr1.models import rollouts as module

    monkeypatch.setattr(module, "LOG_SOFTMAX_CHUNK", chunk)
    torch.manual_seed(1)
    logits, ids = torch.randn(3, 5, 11), torch.randint(0, 11, (3, 5))
    expected = torch.gather((logits / 0.7).log_softmax(-1), 2, ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_log_probs(logits, ids, temperature=0.7), expected, atol=1e-6)
    # Suppressed tokens leave the distribution (as sampling leaves them out): the rest renormalise.
    kept = logits.clone()
    kept[..., [2, 7]] = float("-inf")
    ids = torch.where(torch.isin(ids, torch.tensor([2, 7])), 0, ids)
    expected = torch.gather(kept.log_softmax(-1), 2, ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_log_probs(logits, ids, suppress_ids=[2, 7]), expected, atol=1e-6)

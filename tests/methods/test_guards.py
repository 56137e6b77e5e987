"""Numerical guards (a non-finite step is skipped, counted, logged; K in a row stop the run) and
determinism (the same config and seed give the same results.json)."""

from __future__ import annotations

import torch

from othink_mr1.methods.grpo_loss import k3_kl


def test_k3_kl_cannot_overflow():
    logp = torch.tensor([-300.0, -5.0, 0.0], requires_grad=True)
    ref = torch.tensor([0.0, -5.0, -300.0])
    kl = k3_kl(logp, ref)
    assert torch.isfinite(kl).all() and kl[1] == 0
    kl.sum().backward()
    assert torch.isfinite(logp.grad).all()



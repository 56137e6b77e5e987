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




def _module(max_skips: int):
    from types import SimpleNamespace

    from othink_mr1.methods.evaluation_module import TrainableModule

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    return TrainableModule(model, None, method=SimpleNamespace(max_nonfinite_skips=max_skips), total_steps=4)


def test_the_stopping_message_names_the_first_non_finite_gradients_like_the_load_check():
    """A NaN in training is reported as a NaN at load is (utils/finite.py): what, which tensors, what to do;
    a ModelError, so run.py prints it as one `error:` line, exit status 2."""
    import pytest

    from othink_mr1.methods.evaluation_module import NonFiniteError
    from othink_mr1.utils.errors import ModelError

    module = _module(max_skips=2)
    for p in module.model.parameters():
        p.grad = torch.ones_like(p)
    module.model[1].weight.grad[0, 0] = float("nan")
    assert module.guard_update(grad_norm=torch.tensor(float("nan"))) is False  # the first skip: no stop
    assert all(p.grad is None for p in module.model.parameters())  # skip semantics: the step's gradients dropped
    for p in module.model.parameters():  # the next step's backward
        p.grad = torch.ones_like(p)
    module.model[1].weight.grad = torch.full((1, 2), float("nan"))
    with pytest.raises(NonFiniteError) as err:
        module.guard_update(loss=float("nan"), grad_norm=torch.tensor(float("nan")))
    assert isinstance(err.value, ModelError) and isinstance(err.value, RuntimeError)
    assert str(err.value) == (
        "2 consecutive optimizer steps had a non-finite loss, grad_norm (the last at step 0); stopping. The step's "
        "backward gave non-finite gradients (NaN or inf) in 1 of 4 tensors (first: 1.weight); the weights are finite. "
        "Lower method.lr, or raise method.max_nonfinite_skips=2")


def test_the_stopping_message_names_diverged_weights_and_a_bad_reward():
    import pytest

    from othink_mr1.methods.evaluation_module import NonFiniteError

    module = _module(max_skips=1)
    with torch.no_grad():
        module.model[0].bias.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match=r"non-finite rewards \(the last at step 0\); stopping. The model holds "
                                             r"non-finite weights \(NaN or inf\) in 1 of 4 tensors \(first: 0.bias\). "
                                             r"Lower method.lr, check the reward functions \(method.rewards\), or raise"):
        module.guard_update(rewards=torch.tensor([1.0, float("nan")]))
    module = _module(max_skips=1)
    with pytest.raises(NonFiniteError, match="The weights and gradients are finite: the loss or a reward itself"):
        module.guard_update(loss=float("inf"))

"""SFT: a few steps on the tiny model move every trainable parameter; the lr schedules are right."""

from __future__ import annotations

import math

import pytest
import torch

from othink_mr1.methods.lr_schedules import build_scheduler, lr_multiplier


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_lr_schedule_warms_up_then_decays(kind):
    total, warmup = 100, 10
    values = [lr_multiplier(s, total, warmup, kind) for s in range(total + 1)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values[:10], values[1:10]))  # rising during warmup
    if kind == "constant":
        assert values[50] == values[100] == 1.0
    elif kind == "linear":
        assert values[55] == pytest.approx(0.5) and values[100] == pytest.approx(0.0)
    else:
        assert values[55] == pytest.approx(0.5) and values[100] == pytest.approx(0.0)
        assert values[30] == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 90)))


def test_schedule_rejects_an_unknown_kind_and_drives_the_optimizer():
    with pytest.raises(ValueError, match="method.lr_schedule='step'"):
        lr_multiplier(0, 10, 0, "step")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total_steps=10, warmup_ratio=0.2, kind="linear")
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(1 / 8)

"""Training curves (evaluation/curve.py): the steps they are measured at, the fixed items, the checks
on eval.curve_points, what a run records, and that measuring them changes nothing a run trains on."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config

from othink_mr1.config_checks import check_config
from othink_mr1.evaluation.curve import curve_items, curve_steps, format_curve
from othink_mr1.runner import build_module
from othink_mr1.utils.errors import ConfigError


@pytest.mark.parametrize("points,total,every,expected", [
    (5, 80, 1, [0, 20, 40, 60, 80]),
    (9, 250, 1, [0, 31, 63, 94, 125, 156, 188, 219, 250]),  # rounded half up
    (4, 10, 1, [0, 3, 7, 10]),
    (2, 2, 1, [0, 2]),
    (3, 12, 2, [0, 6, 12]),  # mu = 2: a rollout batch serves two steps, points land on its ends
    (3, 10, 2, [0, 6, 10]),
])
def test_curve_steps_are_evenly_spaced_from_zero_to_the_last_step(points, total, every, expected):
    assert curve_steps(points, total, every) == expected


@pytest.mark.parametrize("points,total,every,message", [
    (1, 80, 1, r"eval.curve_points=1: a curve needs at least 2 points"),
    (0, 80, 1, r"eval.curve_points=0: a curve needs at least 2 points"),
    (5, 4, 1, r"eval.curve_points=5 is more than the run's 4 optimizer steps: set it to 2..4"),
    (4, 6, 2, r"eval.curve_points=4 is more than the run's 6 optimizer steps \(3 rollout batches of 2\)"),
])
def test_bad_curve_points_are_errors_naming_the_key(points, total, every, message):
    with pytest.raises(ConfigError, match=message):
        curve_steps(points, total, every)


def test_the_curve_items_are_fixed_by_their_seed_alone():
    items = curve_items(200, 32, seed=0)
    assert len(items) == 32 == len(set(items)) and items == sorted(items) and max(items) < 200
    assert curve_items(200, 32, seed=0) == items != curve_items(200, 32, seed=1)
    assert curve_items(10, 32, seed=0) == list(range(10))  # a split smaller than the subset: all of it


@pytest.mark.parametrize("overrides,message", [
    (["eval.curve_points=1"], "eval.curve_points=1: a curve needs at least 2 points"),
    (["eval.curve_points=5", "method.max_steps=2"],
     r"eval.curve_points=5 is more than the run's 2 optimizer steps \(method.max_steps=2\)"),
    (["eval.curve_points=3", "method.max_steps=4", "method.num_iterations=2"],
     r"eval.curve_points=3 is more than the run's 4 optimizer steps \(2 rollout batches of 2\)"),
    (["eval.curve_items=0"], "eval.curve_items=0: must be at least 1"),
    (["eval.curve_samples=0"], "eval.curve_samples=0: must be at least 1"),
])
def test_the_config_checks_refuse_a_curve_the_run_cannot_have(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(make_cfg(*overrides))


def test_eval_mode_measures_no_curve(make_cfg):
    cfg = make_cfg("mode=eval", "model=tiny", "eval.curve_points=5")
    check_config(cfg)  # a default meant for training runs is no error for an evaluation


def test_every_method_keeps_one_frozen_start_when_curves_need_it(tmp_path, tiny):
    """SFT and GRPO with beta 0 keep a copy for the curves alone (GRPO's loss then still has no KL term);
    GRPO with beta > 0 measures against the reference its loss already has."""
    model, processor = tiny
    budget = type("B", (), {"total_steps": 4})()
    for overrides, kl_term in ((["method=sft"], None), (["kl=none"], False), (["kl=constant"], True)):
        for curve in ("null", "2"):
            cfg = compose_config(["model=tiny", "method.max_steps=4", f"eval.curve_points={curve}", *overrides],
                                 output_dir=tmp_path)
            module = build_module(cfg, model, processor, budget, None, {})
            wanted = curve != "null" or bool(kl_term)
            assert (module.reference is not None) == wanted, (overrides, curve)
            if kl_term is not None:
                assert module.uses_kl == kl_term
            if module.reference is not None:
                assert module.reference is not model and not module.reference.training
                assert not any(p.requires_grad for p in module.reference.parameters())


def test_the_curve_table_shows_every_point():
    curve = {"0": {"a": {"acc": 0.25, "acc_sampled": 0.2, "kl_to_base": 0.0}},
             "10": {"a": {"acc": 0.5, "acc_sampled": 0.375, "kl_to_base": 1.25}}}
    lines = format_curve(curve, ["a", "b"]).splitlines()
    assert lines[2].split() == ["0", "25.00", "20.00", "0.000", "-", "-", "-"]
    assert lines[3].split() == ["10", "50.00", "37.50", "1.250", "-", "-", "-"]


def test_curve_steps_seed_nothing_global():
    state = torch.get_rng_state()
    curve_items(200, 32, 0)
    assert torch.equal(state, torch.get_rng_state())

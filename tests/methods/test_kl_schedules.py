"""KL schedules: values at the start, the turn and the end; continuity; the adaptive controller;
state round trips; every kl/ config option builds its schedule."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import CONF, compose_config

from othink_mr1.methods.kl_schedules import (
    GRPODKL,
    AdaptiveKL,
    ConstantKL,
    CosineKL,
    LinearKL,
    NoKL,
    StepKL,
    build_kl_schedule,
)

T = 100


def test_none_and_constant():
    assert [NoKL().value(s, T) for s in (0, 50, 100)] == [0.0, 0.0, 0.0]
    assert not NoKL().can_be_positive
    assert [ConstantKL(0.04).value(s, T) for s in (0, 50, 100)] == [0.04, 0.04, 0.04]
    assert ConstantKL(0.04).can_be_positive and not ConstantKL(0.0).can_be_positive


def test_grpo_d_is_the_papers_v_shape():
    kl = GRPODKL(beta_min=0.04, beta_max=0.10, warmup_ratio=0.3)
    assert kl.value(0, T) == pytest.approx(0.07)  # beta_mid
    assert kl.value(30, T) == pytest.approx(0.04)  # the turn: beta_min at w = 0.3 t
    assert kl.value(100, T) == pytest.approx(0.10)  # beta_max at the end
    assert kl.value(15, T) == pytest.approx(0.055)
    assert kl.value(65, T) == pytest.approx(0.04 + 0.06 * 35 / 70)
    values = [kl.value(s, T) for s in range(T + 1)]
    assert all(a > b for a, b in zip(values[:30], values[1:31]))  # falls while exploring
    assert all(a < b for a, b in zip(values[30:], values[31:]))  # rises while exploiting
    # Continuous: no jump anywhere, including across the turn (a fine step grid).
    fine = [kl.value(s / 100, 1.0) for s in range(101)]
    assert max(abs(a - b) for a, b in zip(fine, fine[1:])) < 0.002
    geometry = GRPODKL(beta_min=0.0, beta_max=0.02, warmup_ratio=0.3)
    assert (geometry.value(0, T), geometry.value(30, T), geometry.value(T, T)) == pytest.approx((0.01, 0.0, 0.02))
    with pytest.raises(ValueError, match="beta_min=0.2 > kl.beta_max=0.1"):
        GRPODKL(0.2, 0.1, 0.3)


def test_linear_cosine_and_step():
    lin = LinearKL(0.0, 0.04)
    assert (lin.value(0, T), lin.value(50, T), lin.value(100, T)) == pytest.approx((0.0, 0.02, 0.04))
    cos = CosineKL(0.04, 0.0)
    assert (cos.value(0, T), cos.value(50, T), cos.value(100, T)) == pytest.approx((0.04, 0.02, 0.0))
    assert cos.value(25, T) > 0.02 > cos.value(75, T)
    step = StepKL(milestones=[0.25, 0.75], values=[0.01, 0.02, 0.05])
    assert [step.value(s, T) for s in (0, 24, 25, 74, 75, 100)] == [0.01, 0.01, 0.02, 0.02, 0.05, 0.05]
    with pytest.raises(ValueError, match="kl.values needs"):
        StepKL(milestones=[0.5], values=[0.01])


def test_adaptive_controller_tracks_its_target():
    kl = AdaptiveKL(beta=0.04, target=0.01, horizon=10, beta_min=0.0, beta_max=1.0)
    kl.observe(0.05)  # far above target: error clipped at +0.2
    assert kl.value(1, T) == pytest.approx(0.04 * 1.02)
    before = kl.value(2, T)
    kl.observe(0.005)  # below target: beta falls
    assert kl.value(2, T) < before
    kl.observe(0.01)  # on target: unchanged
    assert kl.value(3, T) == pytest.approx(before * (1 - 0.2 / 10))  # the -0.5 error was clipped to -0.2
    capped = AdaptiveKL(beta=0.9, target=0.01, horizon=1, beta_min=0.0, beta_max=1.0)
    for _ in range(10):
        capped.observe(1.0)
    assert capped.value(0, T) == 1.0


def test_schedule_state_round_trips_through_a_checkpoint():
    kl = AdaptiveKL(beta=0.04, target=0.01, horizon=5, beta_min=0.0, beta_max=1.0)
    for measured in (0.05, 0.02, 0.001):
        kl.observe(measured)
    buffer = io.BytesIO()
    torch.save({"kl_schedule": kl.state_dict()}, buffer)
    buffer.seek(0)
    fresh = AdaptiveKL(beta=0.04, target=0.01, horizon=5, beta_min=0.0, beta_max=1.0)
    fresh.load_state_dict(torch.load(buffer)["kl_schedule"])
    assert fresh.value(0, T) == kl.value(0, T) != 0.04
    fresh.observe(0.03)
    kl.observe(0.03)
    assert fresh.value(1, T) == kl.value(1, T)
    stateless = GRPODKL(0.04, 0.1, 0.3)
    stateless.load_state_dict(stateless.state_dict())
    assert stateless.value(10, T) == GRPODKL(0.04, 0.1, 0.3).value(10, T)


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "kl").glob("*.yaml")))
def test_every_kl_option_builds_its_schedule(option):
    method = "method=sft" if option == "none" else "method=grpo"
    schedule = build_kl_schedule(compose_config([method, f"kl={option}"], shrink=False).kl)
    assert schedule.name == option
    assert schedule.can_be_positive == (option != "none")
    assert all(v >= 0 for v in (schedule.value(s, T) for s in range(0, T + 1, 10)))


def test_a_schedule_is_registered_with_its_schema_and_composes(monkeypatch, tmp_path):
    """A new schedule is its class (with its Config) in kl_schedules.py plus conf/kl/<name>.yaml: registered
    by the decorator, its schema stored for the YAML to name, typo'd keys rejected by that schema."""
    from dataclasses import dataclass

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import MISSING

    from othink_mr1.config import KLConfig
    from othink_mr1.hydra_setup import register_configs
    from othink_mr1.methods import kl_schedules

    monkeypatch.setattr(kl_schedules, "KL_SCHEDULES", dict(kl_schedules.KL_SCHEDULES))

    @kl_schedules.register_kl_schedule
    class HalvingKL(kl_schedules.KLSchedule):
        name = "halving"

        @dataclass
        class Config(KLConfig):
            beta: float = MISSING

        def __init__(self, beta: float):
            self.beta = beta

        def value(self, step: int, total_steps: int) -> float:
            return self.beta / 2 ** (step * 2 // max(total_steps, 1))

    with pytest.raises(ValueError, match="two KL schedules are named 'halving'"):
        kl_schedules.register_kl_schedule(HalvingKL)
    register_configs()
    conf = tmp_path / "conf"
    import shutil

    shutil.copytree(CONF, conf)
    (conf / "kl" / "halving.yaml").write_text("defaults:\n  - /schema/kl_halving@_here_\n  - _self_\n\n"
                                              "name: halving\nbeta: 0.08\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["kl=halving"])
        schedule = build_kl_schedule(cfg.kl)
        assert isinstance(schedule, HalvingKL)
        assert [schedule.value(s, T) for s in (0, 50, 100)] == [0.08, 0.04, 0.02]
        from hydra.errors import ConfigCompositionException

        with pytest.raises(ConfigCompositionException, match="kl.betta"):
            compose("config", overrides=["kl=halving", "kl.betta=1"])
    GlobalHydra.instance().clear()

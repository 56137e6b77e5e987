"""KL-coefficient schedules: beta(step) for the k3 KL term of the GRPO loss.

Each schedule is a small class with `value(step, total_steps)`, `state_dict()` / `load_state_dict()`
(checkpointed with the run, so a resumed run continues with the same beta), `observe(kl)` (called
after every optimizer step with the measured mean per-token KL; only the adaptive controller uses
it) and `can_be_positive`, which decides whether a reference model is loaded at all.

`step` is the optimizer step about to be taken (0-based), `total_steps` the run's optimizer steps.

This module is the schedules' one home. A schedule is a class registered with `@register_kl_schedule`
beside its schema, the dataclass `Config` nested in it (its fields are the constructor's arguments;
stored as `schema/kl_<name>` for `conf/kl/<name>.yaml` to name). Its values are stated in that YAML
only: no argument here has a default. Adding a schedule touches this module, its YAML and its test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from ..config import KLConfig

# name -> schedule class, filled by @register_kl_schedule as the classes below are defined.
KL_SCHEDULES: dict[str, type["KLSchedule"]] = {}


def register_kl_schedule(cls: type["KLSchedule"]) -> type["KLSchedule"]:
    """Registers `cls` under `cls.name`; `cls.Config` (a KLConfig) is its schema."""
    if cls.name in KL_SCHEDULES:
        raise ValueError(f"two KL schedules are named '{cls.name}': {KL_SCHEDULES[cls.name].__qualname__} and "
                         f"{cls.__qualname__}")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, KLConfig)):
        raise TypeError(f"{cls.__qualname__}.Config must be a dataclass deriving from KLConfig")
    KL_SCHEDULES[cls.name] = cls
    return cls


class KLSchedule:
    """Base: a stateless schedule (state_dict is empty)."""

    name = "base"
    Config: type[KLConfig] = KLConfig  # the schema of conf/kl/<name>.yaml

    def value(self, step: int, total_steps: int) -> float:
        raise NotImplementedError

    @property
    def can_be_positive(self) -> bool:
        return True

    def observe(self, kl: float) -> None:
        """Feedback after an optimizer step (mean per-token KL to the reference)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _progress(step: int, total_steps: int) -> float:
    return min(1.0, max(0.0, step / max(1, total_steps)))


@register_kl_schedule
class NoKL(KLSchedule):
    """beta = 0: no KL term and no reference model (TRL's default since v0.19; Dr. GRPO, DAPO)."""

    name = "none"
    Config = KLConfig

    def value(self, step: int, total_steps: int) -> float:
        return 0.0

    @property
    def can_be_positive(self) -> bool:
        return False


@register_kl_schedule
class ConstantKL(KLSchedule):
    """A fixed beta, as in GRPO (Shao et al., DeepSeekMath, 2024) and R1-V (beta 0.04).
    The paper's plain-GRPO baselines tune it per task: 0.04 counting, 0.01 geometry."""

    name = "constant"

    @dataclass
    class Config(KLConfig):
        beta: float = MISSING

    def __init__(self, beta: float):
        self.beta = beta

    def value(self, step: int, total_steps: int) -> float:
        return self.beta

    @property
    def can_be_positive(self) -> bool:
        return self.beta > 0


@register_kl_schedule
class GRPODKL(KLSchedule):
    """GRPO-D, OThink-MR1 (Liu et al., arXiv 2503.16081, Sec. 3): explore early, exploit late.

    With w = warmup_ratio * total_steps and beta_mid = (beta_min + beta_max) / 2:
      step <= w: beta = beta_mid - (beta_mid - beta_min) * step / w        (falls to beta_min)
      step >  w: beta = beta_min + (beta_max - beta_min) * (step - w) / (total_steps - w)   (rises)
    The paper's extracted equation is garbled; this is the only continuous reading that matches its
    prose. Counting: beta_min 0.04, beta_max 0.10; geometry: 0.0, 0.02; warmup_ratio 0.3.
    """

    name = "grpo_d"

    @dataclass
    class Config(KLConfig):
        beta_min: float = MISSING
        beta_max: float = MISSING
        warmup_ratio: float = MISSING

    def __init__(self, beta_min: float, beta_max: float, warmup_ratio: float):
        if not 0.0 < warmup_ratio < 1.0:
            raise ValueError(f"kl.warmup_ratio={warmup_ratio}: must be in (0, 1)")
        if beta_min > beta_max:
            raise ValueError(f"kl.beta_min={beta_min} > kl.beta_max={beta_max}")
        self.beta_min, self.beta_max, self.warmup_ratio = beta_min, beta_max, warmup_ratio

    def value(self, step: int, total_steps: int) -> float:
        beta_mid = (self.beta_min + self.beta_max) / 2
        w = self.warmup_ratio * total_steps
        if step <= w:
            return beta_mid - (beta_mid - self.beta_min) * (step / w if w > 0 else 1.0)
        rise = (step - w) / max(total_steps - w, 1e-12)
        return self.beta_min + (self.beta_max - self.beta_min) * min(1.0, rise)

    @property
    def can_be_positive(self) -> bool:
        return self.beta_max > 0


@register_kl_schedule
class LinearKL(KLSchedule):
    """beta moves linearly from beta_start (step 0) to beta_end (the last step): a plain annealing
    baseline for GRPO-D's V shape."""

    name = "linear"

    @dataclass
    class Config(KLConfig):
        beta_start: float = MISSING
        beta_end: float = MISSING

    def __init__(self, beta_start: float, beta_end: float):
        self.beta_start, self.beta_end = beta_start, beta_end

    def value(self, step: int, total_steps: int) -> float:
        return self.beta_start + (self.beta_end - self.beta_start) * _progress(step, total_steps)

    @property
    def can_be_positive(self) -> bool:
        return max(self.beta_start, self.beta_end) > 0


@register_kl_schedule
class CosineKL(KLSchedule):
    """Half-cosine from beta_start to beta_end, the annealing shape of SGDR (Loshchilov & Hutter, 2017)."""

    name = "cosine"

    @dataclass
    class Config(KLConfig):
        beta_start: float = MISSING
        beta_end: float = MISSING

    def __init__(self, beta_start: float, beta_end: float):
        self.beta_start, self.beta_end = beta_start, beta_end

    def value(self, step: int, total_steps: int) -> float:
        t = _progress(step, total_steps)
        return self.beta_end + (self.beta_start - self.beta_end) * 0.5 * (1.0 + math.cos(math.pi * t))

    @property
    def can_be_positive(self) -> bool:
        return max(self.beta_start, self.beta_end) > 0


@register_kl_schedule
class StepKL(KLSchedule):
    """Piecewise constant: values[0] until the first milestone (a fraction of the run), values[i]
    from milestones[i-1] on, like a step learning-rate decay."""

    name = "step"

    @dataclass
    class Config(KLConfig):
        # beta = values[i] from milestones[i-1] (a fraction of the run) on; values has one more entry.
        milestones: list[float] = MISSING
        values: list[float] = MISSING

    def __init__(self, milestones: list[float], values: list[float]):
        if len(values) != len(milestones) + 1:
            raise ValueError(f"kl.values needs len(kl.milestones) + 1 = {len(milestones) + 1} entries, got {len(values)}")
        if list(milestones) != sorted(milestones) or any(not 0 < m < 1 for m in milestones):
            raise ValueError(f"kl.milestones={list(milestones)}: increasing fractions in (0, 1)")
        self.milestones, self.values = list(milestones), list(values)

    def value(self, step: int, total_steps: int) -> float:
        t = _progress(step, total_steps)
        return self.values[sum(t >= m for m in self.milestones)]

    @property
    def can_be_positive(self) -> bool:
        return max(self.values) > 0


@register_kl_schedule
class AdaptiveKL(KLSchedule):
    """A proportional controller on beta towards a target per-token KL, after Ziegler et al.,
    "Fine-Tuning Language Models from Human Preferences" (2019), as OpenRLHF's AdaptiveKLController,
    here acting on the loss-term coefficient rather than on a reward penalty:

        error = clip(kl / target - 1, -0.2, 0.2);   beta <- beta * (1 + error / horizon)

    Measured KL above target raises beta, below lowers it. beta is the controller's state.
    """

    name = "adaptive"

    @dataclass
    class Config(KLConfig):
        beta: float = MISSING
        target: float = MISSING
        # Optimizer steps over which a 20% KL error moves beta by about 20%.
        horizon: int = MISSING
        beta_min: float = MISSING
        beta_max: float = MISSING

    def __init__(self, beta: float, target: float, horizon: int, beta_min: float, beta_max: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"kl.target={target} and kl.horizon={horizon} must be positive")
        self.beta, self.target, self.horizon = beta, target, horizon
        self.beta_min, self.beta_max = beta_min, beta_max

    def value(self, step: int, total_steps: int) -> float:
        return self.beta

    def observe(self, kl: float) -> None:
        error = min(0.2, max(-0.2, kl / self.target - 1.0))
        self.beta = min(self.beta_max, max(self.beta_min, self.beta * (1.0 + error / self.horizon)))

    @property
    def can_be_positive(self) -> bool:
        return self.beta_max > 0 and self.beta > 0

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = float(state["beta"])


def build_kl_schedule(cfg: Any) -> KLSchedule:
    """The schedule for a `kl` config node; its fields are the constructor's arguments."""
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    name = params.pop("name")
    if name not in KL_SCHEDULES:
        raise ValueError(f"kl.name='{name}': expected one of {sorted(KL_SCHEDULES)}")
    return KL_SCHEDULES[name](**params)

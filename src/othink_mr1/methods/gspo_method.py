"""GSPO as the runner sees it (methods/method.py): GRPO's descriptor with its own module and name.
Torch-free (see method.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..utils.errors import ConfigError
from . import grpo_method


def check(cfg: Any) -> None:
    grpo_method.check(cfg)
    if cfg.method.loss_aggregation != "grpo":
        raise ConfigError(f"method.loss_aggregation='{cfg.method.loss_aggregation}': GSPO's loss is a mean over "
                          "sequences (grpo); the token-level aggregations do not apply")
    if cfg.method.rollout_is_cap is not None:
        raise ConfigError(f"method.rollout_is_cap={cfg.method.rollout_is_cap}: truncated importance sampling weighs "
                          "tokens, and GSPO's ratio is per sequence; leave it null with method=gspo")


def tag(kl: str) -> str:
    """gspo with no KL term (the paper's), gspo_kl-<schedule> with one."""
    return "gspo" if kl == "none" else f"gspo_kl-{kl}"


METHOD = dataclasses.replace(
    grpo_method.METHOD,
    name="gspo",
    module="othink_mr1.methods.gspo.GSPOModule",
    schema=None,  # conf/method/gspo.yaml extends grpo.yaml (GRPO's schema)
    check=check,
    tag=tag,
)

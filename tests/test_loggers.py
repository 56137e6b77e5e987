"""wandb faults: `logger.mode=online` without credentials or without a reachable server logs offline
with one warning, never hangs, and the local results are written as always."""

from __future__ import annotations

from othink_mr1.loggers import resolve_wandb_mode


def test_offline_and_disabled_are_kept(bare_wandb_env, monkeypatch):
    assert resolve_wandb_mode("offline") == "offline" and resolve_wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    resolve_wandb_mode.cache_clear()
    assert resolve_wandb_mode("online") == "offline"  # the environment's choice wins, as wandb's own does

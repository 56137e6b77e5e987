"""wandb faults: `logger.mode=online` without credentials or without a reachable server logs offline
with one warning, never hangs, and the local results are written as always."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import compose_config

from othink_mr1.loggers import resolve_wandb_mode
from othink_mr1.runner import run


@pytest.fixture
def bare_wandb_env(monkeypatch, tmp_path):
    """No WANDB_MODE, no API key, an empty netrc: a fresh machine that never ran `wandb login`."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    empty = tmp_path / "netrc"
    empty.write_text("")
    monkeypatch.setenv("NETRC", str(empty))
    resolve_wandb_mode.cache_clear()
    yield
    resolve_wandb_mode.cache_clear()


def run_online(tmp_path: Path, caplog) -> Path:
    cfg = compose_config(["model=tiny", "logger=wandb", "logger.mode=online", "eval.row_zero=false"], output_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="othink_mr1.loggers"):
        results = run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    assert results["after"] and (run_dir / "results.json").exists()
    assert list((run_dir / "wandb").glob("offline-run-*")), "the run should be logged offline"
    return run_dir


def test_online_without_credentials_logs_offline_with_one_warning(tmp_path, bare_wandb_env, caplog):
    run_online(tmp_path / "a", caplog)
    run_online(tmp_path / "b", caplog)  # a second run in the same process (a sweep): no second warning
    assert sum("no wandb credentials" in r.getMessage() for r in caplog.records) == 1


def test_online_without_network_logs_offline(tmp_path, bare_wandb_env, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    run_online(tmp_path, caplog)
    assert sum("127.0.0.1:9 cannot be reached" in r.getMessage() for r in caplog.records) == 1


def test_offline_and_disabled_are_kept(bare_wandb_env, monkeypatch):
    assert resolve_wandb_mode("offline") == "offline" and resolve_wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    resolve_wandb_mode.cache_clear()
    assert resolve_wandb_mode("online") == "offline"  # the environment's choice wins, as wandb's own does

"""wandb online without credentials or network: the run logs offline with one warning and records it."""

from __future__ import annotations

import logging
from pathlib import Path

from conftest import compose_config

from othink_mr1.runner import run


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

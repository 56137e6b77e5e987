"""Runs with bad rows: data.on_bad_row=skip trains on the good rows and lists the bad ones; the default
stops before training naming the row (unit tests of the checks: tests/data/test_bad_rows.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from support.bad_rows import (
    BAD_TEST_LINES,
    _bad_test_file,
    _hf_cache_in_tmp,  # noqa: F401 - autouse: the HF datasets cache in tmp
)

from othink_mr1.data.records import DataError
from othink_mr1.runner import run
from othink_mr1.utils.errors import ConfigError


def _r1v_files(folder: Path) -> tuple[Path, Path]:
    """A train JSONL (12 good lines, 2 bad) and a test JSONL (20 good, 8 bad) in R1-V's schemas."""
    test, _ = _bad_test_file(folder)
    lines = [json.dumps({"image": "good.png", "problem": f"How many items are there in image {i}?",
                         "solution": f"<answer> {i % 5} </answer>"}) for i in range(12)]
    lines.insert(2, json.dumps({"image": "garbage.png", "problem": "How many?", "solution": "<answer> 1 </answer>"}))
    lines.insert(9, "not json at all")
    train = folder / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    return train, test


def _r1v_overrides(train: Path, test: Path, folder: Path) -> list[str]:
    return ["model=tiny", "method=sft", "method.max_steps=2", "method.batch_size=4", "task=clevr_count",
            f"task.train_source={train}", "task.train_size=null", f"task.test_jsonl={test}",
            f"task.image_root={folder}", "eval.tasks=[clevr_count]", "eval.batch_size=8",
            "model.max_new_tokens_cap=8", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "save_model=false", "eval.curve_points=null"]


def test_a_run_with_skip_trains_on_the_good_rows_and_lists_the_bad_ones(make_cfg, tmp_path, caplog):
    train, test = _r1v_files(tmp_path / "data")
    cfg = make_cfg(*_r1v_overrides(train, test, tmp_path / "data"), "data.on_bad_row=skip",
                   "data.max_bad_fraction=0.3", shrink=False)
    with caplog.at_level(logging.WARNING, logger="othink_mr1.runner"):
        results = run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    listed = [json.loads(line) for line in (run_dir / "bad_rows.jsonl").read_text().splitlines()]
    assert [(r["split"], r["line"]) for r in listed if r["split"] == "clevr_count train"] == [
        ("clevr_count train", 3), ("clevr_count train", 10)]
    assert sum(r["split"] == "clevr_count test" for r in listed) == len(BAD_TEST_LINES)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["data"] == {"on_bad_row": "skip", "bad_rows_file": "bad_rows.jsonl",
                             "skipped_rows": {"clevr_count train": 2, "clevr_count test": len(BAD_TEST_LINES)}}
    assert saved["after"]["clevr_count"]["n"] == 20 and saved["before"]["clevr_count"]["n"] == 20
    assert saved["train"]["steps"] == 2 and results["data"] == saved["data"]
    warnings = [r.getMessage() for r in caplog.records if "data.on_bad_row=skip" in r.getMessage()]
    assert len(warnings) == 2  # one per split
    assert "2 bad row(s) of the clevr_count train split left out (first: line 3: unreadable image" in warnings[0]


def test_a_run_with_the_default_stops_before_training_naming_the_row(make_cfg, tmp_path):
    train, test = _r1v_files(tmp_path / "data")
    cfg = make_cfg(*_r1v_overrides(train, test, tmp_path / "data"), shrink=False)
    with pytest.raises(DataError, match=rf"{train}, line 3: unreadable image"):
        run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "results.json").exists()
    assert not (run_dir / "bad_rows.jsonl").exists()


def test_on_bad_row_values_are_checked_at_start(make_cfg):
    with pytest.raises(ConfigError, match="data.on_bad_row='drop': expected one of"):
        run(make_cfg("model=tiny", "data.on_bad_row=drop"))
    with pytest.raises(ConfigError, match="data.max_bad_fraction=1.5"):
        run(make_cfg("model=tiny", "data.max_bad_fraction=1.5"))

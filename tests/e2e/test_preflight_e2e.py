"""Preflight checks inside runs: a disagreeing evaluation processor, a poisoned training set and missing
devices stop the run before training (unit tests: tests/test_preflight.py)."""

from __future__ import annotations

import copy

import pytest
from conftest import compose_config

from othink_mr1 import preflight as preflight_module
from othink_mr1.data.records import DataError
from othink_mr1.data.tasks import TaskSplit
from othink_mr1.methods.grpo import GRPOModule
from othink_mr1.preflight import PreflightError
from othink_mr1.runner import run
from othink_mr1.utils.errors import ConfigError


def test_an_evaluation_processor_that_disagrees_stops_the_run_before_training(tmp_path, monkeypatch):
    steps = []
    monkeypatch.setattr(GRPOModule, "training_step", lambda self, batch, idx: steps.append(idx))
    original = preflight_module.preflight

    def eval_with_another_budget(model_cfg, model, train_loader, eval_loaders):
        bent = copy.deepcopy(eval_loaders["geometry"].collate_fn.processor)
        bent.image_processor.size = {**dict(bent.image_processor.size), "longest_edge": 99999}
        eval_loaders["geometry"].collate_fn.processor = bent
        return original(model_cfg, model, train_loader, eval_loaders)

    monkeypatch.setattr("othink_mr1.runner.preflight", eval_with_another_budget)
    with pytest.raises(PreflightError, match="evaluation on 'geometry' would use max_pixels=99999"):
        run(compose_config(["model=tiny"], output_dir=tmp_path))
    assert steps == []


def test_a_poisoned_training_set_fails_before_step_one(tmp_path, monkeypatch):
    steps = []
    monkeypatch.setattr(GRPOModule, "training_step", lambda self, batch, idx: steps.append(idx))
    original = TaskSplit.__getitem__

    def poisoned(self, index):
        example = original(self, index)
        if self.role == "train":
            example.question += "<|image_pad|>"
        return example

    monkeypatch.setattr(TaskSplit, "__getitem__", poisoned)
    with pytest.raises(DataError, match=r"counting train item \d+: the prompt holds 2 image slots"):
        run(compose_config(["model=tiny"], output_dir=tmp_path))
    assert steps == []


def test_devices_that_are_not_there_fail_before_loading_anything(tmp_path):
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu but no CUDA device is visible"):
        run(compose_config(["model=tiny", "trainer=gpu", "trainer.accelerator=gpu"], output_dir=tmp_path))
    with pytest.raises(ConfigError, match="trainer.accelerator=cuda but no CUDA device is visible"):
        run(compose_config(["model=tiny", "trainer=ddp", "trainer.accelerator=cuda"], output_dir=tmp_path))

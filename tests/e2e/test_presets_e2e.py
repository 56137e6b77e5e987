"""GRPO, SFT and eval run on every preset built from its checkpoint's published files (the files and the
build: tests/models/test_presets.py)."""

from __future__ import annotations

import json

import pytest
from conftest import PRESETS
from support.grpo import VARYING, varying_reward  # noqa: F401 - the fixture is used by name
from support.presets import FACTS, preset_cfg

from othink_mr1.runner import run


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_grpo_sft_and_eval_run_on_every_preset_from_its_published_files(preset, tmp_path):
    """run.py's job on the preset as it is (its pixel budget, its attention): GRPO with rewards that
    differ within groups takes 2 real steps, SFT 2 steps, evaluation scores every item; results.json
    records how a reply ends and what stops generation."""
    how, end, stops, _ = FACTS[preset]
    # 2 prompts x G=2 per GRPO step, 2 samples per SFT step: the presets' real image sizes (up to 3699 image
    # tokens a prompt) make each sequence cost a full vision pass on the plain path.
    grpo = run(preset_cfg(preset, tmp_path / "grpo", *VARYING, "method.prompts_per_step=2", "method.batch_size=2",
                          "method.num_generations=2"))
    assert grpo["train"]["steps"] == 2 and grpo["train"]["skipped_steps"] == 0
    sft = run(preset_cfg(preset, tmp_path / "sft", "method=sft", "method.batch_size=2"))
    assert sft["train"]["steps"] == 2
    evaluation = run(preset_cfg(preset, tmp_path / "eval", "mode=eval"))
    for results in (grpo, sft, evaluation):
        assert results["reply"] == {"ends_with": end, "how": how, "stop_tokens": stops}
        assert results["after"]["counting"]["n"] == 8
    saved = json.loads((tmp_path / "eval" / "runs" / evaluation["run_name"] / "results.json").read_text())
    assert saved["reply"]["how"] == how

"""The tiny_base build (a training job): its accuracy window on both synthetic tasks, the sampling
headroom check, a task missing from its item counts."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CACHE, compose_config

from othink_mr1.models.factory import load_local, load_model, tiny_folder


@pytest.mark.slow
def test_tiny_base_lands_in_its_accuracy_window_on_both_synthetic_tasks():
    """Built on first use (about 1.5 minutes here) and cached; re-scored here from the cached weights."""
    from othink_mr1.jobs.tiny_base import BUILD_EVAL_MAX_NEW_TOKENS, ensure_built, evaluate_synthetic

    cfg = compose_config(["model=tiny_base"], shrink=False).model
    folder = ensure_built(cfg, CACHE)
    report = json.loads((folder / "build_report.json").read_text())
    assert report["window"] == [0.15, 0.60]
    model, processor = load_local(folder)
    assert cfg.max_new_tokens_cap == BUILD_EVAL_MAX_NEW_TOKENS  # the default cap is the one the build checks at
    summaries = evaluate_synthetic(model, processor, CACHE, BUILD_EVAL_MAX_NEW_TOKENS)
    for task in ("counting", "geometry"):
        accuracy = summaries[task]["accuracy"]
        assert 0.15 <= accuracy <= 0.60, (task, accuracy)
        assert summaries[task]["n"] == 200
        # The cached model scores exactly what the build measured (greedy decoding is deterministic), at
        # the build's own cap, whatever cap the run that triggered the build had.
        assert accuracy == pytest.approx(report["accuracy"][task])
        # It stands in for an instruct model: mostly in the R1 <think>/<answer> format.
        assert summaries[task]["format_rate"] > 0.8
    # GRPO's room on each task, as recorded: sampling is seeded, so the cached weights give the same figures.
    from othink_mr1.jobs.tiny_base import sampling_headroom, synthetic_task

    for task in ("counting", "geometry"):
        recorded = report["sampling_headroom"][task]
        assert sampling_headroom(model, processor, synthetic_task(task), CACHE) == recorded
        assert 0 < recorded["mean_accuracy"] <= recorded["pass_at_group"] < 1
        assert recorded["zero_variance_groups"] < 0.6  # most groups give GRPO a signal


@pytest.mark.slow  # samples twice; the fast tier keeps the aggregation test above
def test_sampling_headroom_is_seeded_and_counts_mixed_groups(monkeypatch):
    """Alternating verdicts within a group: every group mixed (zero-variance 0), mean 0.5, pass@G 1; the same
    seed draws the same samples, and the caller's RNG is left as it was."""
    import othink_mr1.jobs.tiny_base as job

    cfg = compose_config(["model=tiny"]).model
    model, processor = load_model(cfg, CACHE)
    seen = []

    class Alternating:
        def score(self, completion, answer):
            seen.append(completion)
            return type("Score", (), {"correct": len(seen) % 2 == 0})()

    monkeypatch.setattr(job, "get_scorer", lambda name, protocol: Alternating())
    state = torch.random.get_rng_state()
    h = job.sampling_headroom(model, processor, job.synthetic_task("counting"), CACHE, prompts=3, group=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert (h["mean_accuracy"], h["pass_at_group"], h["zero_variance_groups"]) == (0.5, 1.0, 0.0)
    first = list(seen)
    seen.clear()
    job.sampling_headroom(model, processor, job.synthetic_task("counting"), CACHE, prompts=3, group=2)
    assert seen == first and len(first) == 6


def test_tiny_base_build_names_a_task_missing_from_its_item_counts(tmp_path):
    from othink_mr1.jobs.tiny_base import build_tiny_base
    from othink_mr1.utils.errors import ConfigError

    cfg = compose_config(["model=tiny_base", "~model.base_build.num_train.geometry"]).model
    with pytest.raises(ConfigError, match=r"model.base_build.num_train=.*no item count for \['geometry'\]"):
        build_tiny_base(cfg, tiny_folder(cfg, CACHE), tmp_path / "out", CACHE)
    assert not (tmp_path / "out").exists()

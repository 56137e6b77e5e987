"""Training curves in real runs: recorded without changing training, sized by epochs, an SFT run's drift
from a copy of its start, a start that cannot be copied stops the run (unit tests: tests/evaluation/test_curve.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import compose_config

from othink_mr1.runner import run
from othink_mr1.utils.errors import ConfigError

METRICS = {"acc", "n", "kl_to_base", "kl_to_base_stderr", "acc_sampled", "acc_sampled_stderr", "prompts", "samples"}


def test_a_run_sized_by_epochs_is_checked_once_its_train_split_is_known(make_cfg, monkeypatch):
    """32 train samples in batches of 4 are 8 SFT steps: 9 points cannot fit. The check comes with the budget,
    after the data and before any model is built."""
    import othink_mr1.models.factory as factory

    monkeypatch.setattr(factory, "load_model", lambda *a, **k: pytest.fail("a model was built"))
    cfg = make_cfg("model=tiny", "method=sft", "method.max_steps=null", "method.epochs=1", "eval.curve_points=9")
    with pytest.raises(ConfigError, match=r"eval.curve_points=9 is more than the run's 8 optimizer steps \(32 train "):
        run(cfg)


def test_a_start_that_cannot_be_copied_stops_the_run_before_training(make_cfg, monkeypatch):
    from transformers import Qwen2VLForConditionalGeneration

    def no_copy(model, memo):
        raise MemoryError("out of memory")

    monkeypatch.setattr(Qwen2VLForConditionalGeneration, "__deepcopy__", no_copy, raising=False)
    cfg = make_cfg("model=tiny", "method=sft", "method.max_steps=2", "eval.curve_points=2")
    with pytest.raises(RuntimeError, match=r"the KL-to-base curves \(eval.curve_points\) need a frozen copy of the starting "
                                           r"model \(model=tiny.*MemoryError: out of memory"):
        run(cfg)
    assert not (Path(cfg.paths.run_dir) / "checkpoints").exists()  # nothing trained, and no KL of 0 recorded
    assert not (Path(cfg.paths.run_dir) / "results.json").exists()


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow  # two short GRPO runs on tiny_base
def test_a_grpo_run_records_its_curve_and_trains_as_it_would_without_one(tmp_path, capsys, monkeypatch):
    # 24 tokens are too few for tiny_base to close its answer (every reward 0, no update): a reward that
    # varies with the length gives every group a signal.
    from othink_mr1.rewards import grpo_rewards

    monkeypatch.setitem(grpo_rewards.REWARDS, "length_mod", lambda completions, **_: [float(len(c) % 5) for c in completions])
    common = ["model=tiny_base", "method.max_steps=4", "method.lr=1e-3", "kl=constant", "model.max_new_tokens_cap=24",
              "+method.rewards.length_mod=1.0"]
    with_curve = compose_config(common + ["eval.curve_points=3", "eval.curve_items=6", "eval.curve_samples=3"],
                                output_dir=tmp_path / "a")
    results = run(with_curve)
    without = run(compose_config(common, output_dir=tmp_path / "b"))

    # Measuring the curve changed nothing the run trained on: the same rollouts, losses and final scores.
    assert results["after"] == without["after"] and results["before"] == without["before"]
    losses = [[r["train/loss"] for r in _csv_rows(Path(c.paths.run_dir)) if r.get("train/loss")]
              for c in (with_curve, compose_config(common, output_dir=tmp_path / "b"))]
    assert losses[0] == losses[1] and len(losses[0]) == 4

    assert without["curve"] is None
    curve = results["curve"]
    assert list(curve) == ["0", "2", "4"]
    assert results["curve_settings"] == {"steps": [0, 2, 4], "items": {"counting": 6, "geometry": 6},
                                         "samples_per_item": 3, "seed": 0, "temperature": 1.0}
    for step, point in curve.items():
        assert set(point) == {"counting", "geometry"}
        for task, values in point.items():
            assert set(values) == METRICS
            assert values["n"] == values["prompts"] == 6 and values["samples"] == 18
            assert 0 <= values["acc"] <= 1 and 0 <= values["acc_sampled"] <= 1
            if step == "0":
                assert values["kl_to_base"] == 0.0  # the start against itself, exactly
    assert curve["4"]["counting"]["kl_to_base"] != 0.0  # lr 1e-3 for 4 steps moves the policy
    # The same starting model and items at step 0, whichever run: the base is the row zero's model.
    assert curve["0"]["counting"]["acc"] in {i / 6 for i in range(7)}

    # The points are logged at their optimizer steps, under eval/<task>/...
    rows = [r for r in _csv_rows(Path(with_curve.paths.run_dir)) if r.get("eval/counting/kl_to_base")]
    assert [int(float(r["step"])) for r in rows] == [0, 2, 4]
    assert [float(r["eval/geometry/acc_subset"]) for r in rows] == [curve[s]["geometry"]["acc"] for s in curve]
    assert [float(r["progress/optimizer_steps"]) for r in rows] == [0.0, 2.0, 4.0]
    printed = capsys.readouterr().out
    assert "[curve] 3 points (optimizer steps 0, 2, 4)" in printed and "[curve] step 4/4: counting acc" in printed
    assert "training curve (items per task: counting 6, geometry 6" in printed


@pytest.mark.slow  # a short SFT run on tiny_base
def test_an_sft_run_measures_its_drift_from_a_copy_of_its_start(tmp_path):
    cfg = compose_config(["model=tiny_base", "method=sft", "method.max_steps=4", "method.lr=1e-3",
                          "eval.curve_points=2", "eval.curve_items=6", "eval.curve_samples=2", "eval.row_zero=false"],
                         output_dir=tmp_path)
    results = run(cfg)
    assert list(results["curve"]) == ["0", "4"]
    assert results["curve"]["0"]["counting"]["kl_to_base"] == 0.0
    # SFT on counting's answers moves the policy: on average the samples are likelier under it than the base.
    assert results["curve"]["4"]["counting"]["kl_to_base"] > 0.0
    saved = json.loads((Path(cfg.paths.run_dir) / "results.json").read_text())
    assert saved["curve"] == results["curve"]

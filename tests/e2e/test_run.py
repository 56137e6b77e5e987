"""The main job end to end on the tiny model: outputs, no overwrite, eval mode, wandb, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from othink_mr1.data.records import DataError
from othink_mr1.runner import run
from othink_mr1.utils.errors import ConfigError, RunExistsError

TINY = ["model=tiny", "method=sft"]  # these tests look at the SFT path; test_grpo.py covers GRPO


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One short SFT run on the tiny model, shared by the tests that only read its outputs."""
    from conftest import compose_config

    out = tmp_path_factory.mktemp("outputs")
    cfg = compose_config(TINY + ["save_model=true"], output_dir=out)
    results = run(cfg)
    return cfg, Path(cfg.paths.run_dir), results


def test_train_run_writes_everything_a_researcher_needs(finished_run, capsys):
    cfg, run_dir, results = finished_run
    assert run_dir.name == "counting_sft_tiny_seed42"
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["eval_tasks"] == ["counting", "geometry"]
    for stage in ("before", "after"):
        for task in ("counting", "geometry"):
            summary = saved[stage][task]
            assert summary["n"] == 8
            assert 0.0 <= summary["accuracy"] <= 1.0
            assert set(summary) >= {"accuracy", "format_rate", "parse_failure_rate", "mean_completion_tokens"}
    assert saved["train"]["steps"] == 2 and saved["train"]["samples"] == 8
    assert saved["prompts"]["counting"]["prompt"] == cfg.task.prompt
    # Per-stage results and per-item completions, for both tasks.
    for stage in ("row_zero", "final"):
        stage_results = json.loads((run_dir / "eval" / stage / "results.json").read_text())
        assert set(stage_results["results"]) == {"counting", "geometry"}
        lines = (run_dir / "eval" / stage / "geometry" / "completions.jsonl").read_text().splitlines()
        assert len(lines) == 8
        item = json.loads(lines[0])
        assert set(item) >= {"question", "ground_truth", "model_output", "extracted", "correct"}
    # Provenance: the resolved config, git SHA and package versions.
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["run_name"] == run_dir.name and "${" not in (run_dir / "config.yaml").read_text()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["git"]["sha"] is None or len(meta["git"]["sha"]) == 40
    assert meta["versions"]["torch"].startswith("2.13.0")
    assert {"transformers", "pytorch-lightning", "hydra-core", "math-verify"} <= set(meta["versions"])
    # CSV metrics: training curves and the eval metrics of row zero and the final pass.
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    columns = set(rows[0])
    assert {"train/loss", "train/lr", "progress/samples", "eval/counting/acc", "eval/geometry/format_rate"} <= columns
    assert [float(r["progress/samples"]) for r in rows if r["progress/samples"]] == [4.0, 8.0]
    assert len([r for r in rows if r["eval/counting/acc"]]) == 2
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "model" / "config.json").is_file()


def test_a_finished_run_is_never_overwritten(finished_run):
    cfg, run_dir, _ = finished_run
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(RunExistsError, match="already holds a finished run"):
        run(cfg)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_an_unfinished_attempt_is_kept_aside(make_cfg):
    cfg = make_cfg(*TINY, "eval.row_zero=false")
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "meta.json").write_text('{"crashed": true}')
    run(cfg)
    kept = list((run_dir / "attempts").glob("*/meta.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == {"crashed": True}
    assert (run_dir / "results.json").is_file()


def test_eval_mode_scores_a_checkpoint_and_an_exported_model(finished_run, make_cfg):
    _, run_dir, results = finished_run
    for ckpt in (run_dir / "checkpoints" / "last.ckpt", run_dir / "model"):
        cfg = make_cfg("mode=eval", *TINY, f"ckpt={ckpt}")
        evaluated = run(cfg)
        assert evaluated["before"] is None and evaluated["train"] is None
        # Same weights, greedy decoding: exactly the trained run's final scores.
        for task in ("counting", "geometry"):
            assert evaluated["after"][task]["accuracy"] == results["after"][task]["accuracy"]
            assert evaluated["after"][task]["mean_completion_tokens"] == results["after"][task]["mean_completion_tokens"]
        assert (Path(cfg.paths.run_dir) / "eval" / "eval" / "counting" / "completions.jsonl").is_file()


def test_wandb_runs_offline_with_grouping_keys_and_is_always_finished(make_cfg, monkeypatch):
    import wandb

    # Look at the run's config as wandb holds it, just before the runner finishes the run.
    seen: dict = {}
    summary: dict = {}
    real_finish = wandb.finish

    def spy_finish(*args, **kwargs):
        seen.update(dict(wandb.run.config))
        summary.update({key: wandb.run.summary[key] for key in wandb.run.summary.keys()})
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(wandb, "finish", spy_finish)
    cfg = make_cfg(*TINY, "logger=wandb", "eval.row_zero=false")
    run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    assert len(list((run_dir / "wandb").glob("offline-run-*/*.wandb"))) == 1  # for `wandb sync`
    assert wandb.run is None  # finished
    assert (seen["task"], seen["method"], seen["model"], seen["seed"]) == ("counting", "sft", "tiny", 42)
    assert seen["config"]["method"]["lr"] == cfg.method.lr
    assert summary["status"] == "finished" and summary["data/skipped_rows"] == 0
    assert summary["eval/counting/acc"] == json.loads((run_dir / "results.json").read_text())["after"]["counting"]["accuracy"]
    assert summary["eval/counting/protocol"] == "r1v"  # the report reads it, and refuses to mix protocols

    # A failure mid-training still finishes the wandb run, and the error propagates.
    from othink_mr1.methods.sft import SFTModule

    def boom(self, batch, batch_idx):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(SFTModule, "training_step", boom)
    cfg = make_cfg(*TINY, "logger=wandb", "eval.row_zero=false", "seed=7")
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(cfg)
    assert wandb.run is None
    assert not (Path(cfg.paths.run_dir) / "results.json").exists()


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the runner gets as far as building a model."""
    import othink_mr1.models.factory as factory

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the bad input was reported")

    monkeypatch.setattr(factory, "load_model", refuse)
    monkeypatch.setattr(factory, "load_local", refuse)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_eval_split_validation_scores_other_items_under_its_own_run_name(make_cfg, no_model):
    """eval.split=validation (for tuning) scores the validation items, says so in results.json and the run
    name, and never takes the test run's directory; a task without a validation split fails before a model."""
    test_cfg = make_cfg("mode=eval", *TINY)
    cfg = make_cfg("mode=eval", *TINY, "eval.split=validation")
    assert cfg.run_name == f"{test_cfg.run_name}_validation" and cfg.paths.run_dir != test_cfg.paths.run_dir
    with pytest.raises(DataError, match="task 'clevr_count' .*has no validation split"):
        run(make_cfg(*TINY, "eval.split=validation", "eval.tasks=[counting,clevr_count]"))


@pytest.mark.slow  # a whole mode=eval run; the fast tier keeps the naming and refusal test above
def test_eval_split_validation_results_name_their_split(make_cfg):
    cfg = make_cfg("mode=eval", *TINY, "eval.split=validation")
    results = run(cfg)
    assert results["eval_split"] == "validation"
    assert {task: scores["n"] for task, scores in results["after"].items()} == {"counting": 8, "geometry": 8}
    rows = [json.loads(line) for line in (Path(cfg.paths.run_dir) / "eval" / "eval" / "geometry" / "completions.jsonl").open()]
    from othink_mr1.data.synthetic import geometry

    assert [r["question"] for r in rows] == [geometry.make_item("validation", i, 0, 112, render=False)["question"] for i in range(8)]


def png(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), "white").save(path)
    return path


@pytest.mark.parametrize("case", ["missing_image", "unreadable_image", "missing_field", "empty_split"])
def test_bad_eval_data_fails_before_any_model_is_built(case, make_cfg, tmp_path, no_model):
    good = {"image_path": "./a.png", "question": "How many items are there?", "ground_truth": 3}
    png(tmp_path / "a.png")
    if case == "missing_image":
        records, expected = [good, dict(good, image_path="./missing.png")], r"line 2: image file not found: .*missing.png"
    elif case == "unreadable_image":
        (tmp_path / "broken.png").write_bytes(b"not a png at all")
        records, expected = [dict(good, image_path="./broken.png")], r"line 1: unreadable image .*broken.png"
    elif case == "missing_field":
        records, expected = [good, {k: v for k, v in good.items() if k != "ground_truth"}], r"line 2: missing field\(s\) \['ground_truth'\]"
    else:
        records, expected = [], "the test split is empty"
    jsonl = write_jsonl(tmp_path / f"{case}.jsonl", records)
    cfg = make_cfg(*TINY, f"tasks.clevr_count.test_jsonl={jsonl}", f"tasks.clevr_count.image_root={tmp_path}",
                   "eval.tasks=[counting,clevr_count]")
    with pytest.raises(DataError, match=expected) as err:
        run(cfg)
    assert str(jsonl) in str(err.value)
    assert not (Path(cfg.paths.run_dir) / "results.json").exists()


def test_bad_train_data_and_config_fail_before_any_model_is_built(make_cfg, tmp_path, no_model):
    cfg = make_cfg(*TINY, "task=clevr_count", f"task.train_source={tmp_path / 'nowhere'}", shrink=False)
    with pytest.raises(DataError, match="train data not found: .*nowhere"):
        run(cfg)
    cfg = make_cfg(*TINY, "task.synthetic.num_train=0")
    with pytest.raises(DataError, match="train split of task 'counting' is empty"):
        run(cfg)
    cfg = make_cfg(*TINY, "eval.tasks=[counting,no_such_task]")
    with pytest.raises(ConfigError, match="eval.tasks: unknown task 'no_such_task'"):
        run(cfg)


@pytest.mark.slow  # two run.py subprocesses
def test_cli_runs_the_main_job_and_refuses_a_rerun(tmp_path):
    """`python run.py ...` end to end (Hydra run dir, exit codes), on the tiny model."""
    env = dict(os.environ, OTHINK_OUTPUT_DIR=str(tmp_path), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline")
    from conftest import CACHE, SHRINK

    args = [sys.executable, str(ROOT / "run.py"), *SHRINK, *TINY, f"paths.cache_dir={CACHE}"]
    first = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir = tmp_path / "runs" / "counting_sft_tiny_seed42"
    assert (run_dir / "results.json").is_file()
    assert "before (row zero)" in first.stdout and "after sft" in first.stdout
    assert "[budget] sft: 4 samples/device x 1 accumulation x 1 process(es) = 4 samples per optimizer step" in first.stdout
    second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith(f"error: {run_dir} already holds a finished run")


def test_in_training_validation_and_gradient_accumulation(make_cfg):
    cfg = make_cfg(*TINY, "eval.every_n_steps=1", "method.accumulate_grad_batches=2", "eval.row_zero=false")
    results = run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    # 2 optimizer steps x 2 micro-batches x 4 samples; validated after each optimizer step.
    assert results["train"]["steps"] == 2 and results["train"]["samples"] == 16
    assert results["train"]["samples_per_step"] == 8
    stages = sorted(p.name for p in (run_dir / "eval").iterdir())
    assert stages == ["final", "step1", "step2"]
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    # Each eval row says after how many optimizer steps it was measured (step1, step2, final).
    assert [float(r["progress/optimizer_steps"]) for r in rows if r["eval/counting/acc"]] == [1.0, 2.0, 2.0]


def test_bf16_mixed_precision_trains_fp32_master_weights(make_cfg):
    import torch

    cfg = make_cfg(*TINY, "trainer.precision=bf16-mixed", "eval.row_zero=false", "save_model=true")
    run(cfg)
    rows = list(csv.DictReader((Path(cfg.paths.run_dir) / "csv" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r["train/loss"]]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    from safetensors import safe_open

    # The weights themselves stay fp32 (autocast computes in bf16): what was saved says so.
    with safe_open(str(Path(cfg.paths.run_dir) / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}


@pytest.mark.parametrize("every, steps, saved_steps", [("1", 2, [1, 2]), ("2", 3, [2, 3]), ("null", 2, [2])],
                         ids=["last-step-on-interval", "last-step-off-interval", "no-interval"])
def test_the_final_checkpoint_is_written_once(make_cfg, monkeypatch, every, steps, saved_steps):
    import torch

    from othink_mr1.utils.checkpoints import AtomicCheckpointIO

    writes: list[tuple[str, int]] = []
    real_save = AtomicCheckpointIO.save_checkpoint

    def counted(self, checkpoint, path, storage_options=None):
        writes.append((Path(path).name, checkpoint["global_step"]))
        return real_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", counted)
    cfg = make_cfg(*TINY, "eval.row_zero=false", f"method.max_steps={steps}",
                   f"trainer.checkpoint_every_n_steps={every}")
    results = run(cfg)
    assert results["train"]["steps"] == steps
    # Each interval step once, and the final state once (also when it is itself an interval step).
    assert writes == [("last.ckpt", s) for s in saved_steps]
    saved = torch.load(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert saved["global_step"] == steps
    assert sorted(p.name for p in (Path(cfg.paths.run_dir) / "checkpoints").iterdir()) == ["last.ckpt"]


def test_eval_mode_honours_every_tasks_overrides(make_cfg):
    """mode=eval scores each task from tasks.<name>; task.* overrides set the task `task` names."""
    overrides = ["mode=eval", *TINY, "tasks.counting.eval_size=4", "tasks.geometry.eval_size=3"]
    results = run(make_cfg(*overrides), overrides=overrides)
    assert {task: scores["n"] for task, scores in results["after"].items()} == {"counting": 4, "geometry": 3}
    overrides = ["mode=eval", *TINY, "task=geometry", "task.eval_size=2", "tasks.geometry.eval_size=2",
                 "tasks.counting.eval_size=5", "tag=b"]
    cfg = make_cfg(*overrides)
    run(cfg, overrides=overrides)
    saved = json.loads((Path(cfg.paths.run_dir) / "eval" / "eval" / "results.json").read_text())["results"]
    assert {task: scores["n"] for task, scores in saved.items()} == {"counting": 5, "geometry": 2}



"""results.json's owner (othink_mr1/results.py): what the runner writes round-trips byte for byte, files of
earlier commits (without the newer keys) still read as they did, and a broken file is an error naming it."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pytest

from othink_mr1 import results
from othink_mr1.report.__main__ import main as report_main
from othink_mr1.report.runs import read_run_dir
from othink_mr1.results import Results, ResultsError
from othink_mr1.utils.errors import ConfigError

RUNNER = Path(__file__).resolve().parents[1] / "src" / "othink_mr1" / "runner.py"


def summary(accuracy: float, protocol: str | None = "r1v") -> dict:
    out = {"protocol": protocol, "n": 200, "correct": round(200 * accuracy), "accuracy": accuracy, "format_rate": 1.0,
           "parse_failure_rate": 0.0, "mean_completion_tokens": 26.34, "mean_completion_chars": 82.34}
    return out if protocol else {k: v for k, v in out.items() if k != "protocol"}


def curve_point(acc: float, kl: float) -> dict:
    return {"acc": acc, "n": 32, "kl_to_base": kl, "kl_to_base_stderr": 0.1, "acc_sampled": acc - 0.1,
            "acc_sampled_stderr": 0.03, "prompts": 32, "samples": 128}


# A GRPO-D run's results.json as the runner writes it today: every key, in the runner's order.
CURRENT = {
    "run_name": "counting_grpo_d_tiny_base_seed42", "sweep": None, "cell": None, "mode": "train", "task": "counting",
    "method": "grpo_d", "kl": "grpo_d", "model": "tiny_base", "seed": 42, "tag": None,
    "ckpt": None, "eval_tasks": ["counting", "geometry"], "eval_split": "test",
    "prompts": {t: {"prompt": "{question}  Answer in <answer> </answer> tags (°, 米).",
                    "eval_prompt": "{question}  Answer in <answer> </answer> tags (°, 米)."} for t in ("counting", "geometry")},
    "before": {"counting": summary(0.25), "geometry": summary(0.405)},
    "after": {"counting": summary(0.575), "geometry": summary(0.37)},
    "curve": {"0": {"counting": curve_point(0.34375, 0.0), "geometry": curve_point(0.4375, 0.0)},
              "20": {"counting": curve_point(0.53125, 0.83), "geometry": curve_point(0.3125, 0.97)}},
    "curve_settings": {"steps": [0, 20], "items": {"counting": 32, "geometry": 32}, "samples_per_item": 4, "seed": 0,
                       "temperature": 1.0},
    "train": {"steps": 20, "samples": 320, "seconds": 146.9, "skipped_steps": 0, "resumed_from": None, "processes": 1,
              "samples_per_step": 16, "steps_per_epoch": 125, "total_steps": 20, "micro_batches": 20, "warmup_steps": 0,
              "decode": {"switch": "auto", "compiled": False, "why": "cpu"}},
    "data": {"on_bad_row": "error", "skipped_rows": {}, "bad_rows_file": None},
    "seconds": 159.5,
    "hardware": {"accelerator": "cpu", "devices": 1, "gpu": None, "peak_memory_gib": None},
    "processing": {"image_backend": "pil", "image_processor": "Qwen2VLImageProcessorPil",
                   "processor": "ImageOnlyQwen2VLProcessor"},
    "reply": {"ends_with": "<|im_end|>", "how": "template", "stop_tokens": ["<|im_end|>", "<|endoftext|>"]},
}

# The first commit's results.json: no sweep, cell, kl, tag, eval_split, curve, data, hardware, processing or
# reply, and summaries without a protocol.
OLD = {
    "run_name": "counting_sft_tiny_seed1", "mode": "train", "task": "counting", "method": "sft", "model": "tiny",
    "seed": 1, "ckpt": None, "eval_tasks": ["counting"], "prompts": {"counting": {"prompt": "q", "eval_prompt": "q"}},
    "before": {"counting": summary(0.1, None)}, "after": {"counting": summary(0.6, None)},
    "train": {"steps": 2, "samples": 8, "seconds": 3.5, "total_steps": 2}, "seconds": 9.0,
}


def runner_keys() -> list[str]:
    """The keys runner.py writes, from its source: run_identity's, then the Results(...) call's keywords."""
    calls = [node for node in ast.walk(ast.parse(RUNNER.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Results"]
    assert len(calls) == 1, "runner.py builds its results.json in one Results(...) call"
    [identity] = [kw.value for kw in calls[0].keywords if kw.arg is None]
    assert getattr(identity.func, "id", None) == "run_identity"
    return list(results.IDENTITY) + [kw.arg for kw in calls[0].keywords if kw.arg is not None]


def test_the_fields_are_the_keys_the_runner_writes_in_its_order():
    from othink_mr1.naming import run_identity

    assert runner_keys() == list(CURRENT)
    assert list(Results(**CURRENT).to_dict()) == list(CURRENT)
    assert list(run_identity({"mode": "train"})) == list(results.IDENTITY)


def test_write_then_read_gives_the_same_record_and_the_runners_bytes(tmp_path):
    record = Results(**copy.deepcopy(CURRENT))
    path = results.write(tmp_path, record)
    assert path == tmp_path / "results.json" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    # The bytes the runner wrote before results.py existed (utils/run_dir.write_json of the same dict).
    assert path.read_text(encoding="utf-8") == json.dumps(CURRENT, indent=2, ensure_ascii=False)
    assert "米" in path.read_text(encoding="utf-8")
    assert results.read(tmp_path) == record == results.read(path)
    assert results.read(path).to_dict() == CURRENT


def test_a_current_results_json_reads_with_its_accessors(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(CURRENT, indent=2, ensure_ascii=False), encoding="utf-8")
    record = results.read(tmp_path)
    assert record.identity == {k: CURRENT[k] for k in results.IDENTITY}
    assert record.accuracy == {"counting": 0.575, "geometry": 0.37}
    assert record.protocols == {"counting": "r1v", "geometry": "r1v"}
    assert (record.split, record.seconds, record.train_seconds, record.devices) == ("test", 159.5, 146.9, 1)
    assert record.curve["20"]["geometry"]["kl_to_base"] == 0.97 and record.extra == {}
    run = read_run_dir(tmp_path, with_curves=False)
    assert (run.status, run.method, run.kl, run.accuracy, run.devices) == ("finished", "grpo_d", "grpo_d",
                                                                           record.accuracy, 1)
    assert sorted(run.curve) == [0, 20] and run.curve[20]["counting"] == {"acc": 0.53125, "acc_sampled": pytest.approx(0.43125),
                                                                           "kl_to_base": 0.83}


def test_an_old_results_json_reads_its_missing_keys_as_what_those_runs_did(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(OLD))
    record = results.read(tmp_path)
    assert (record.sweep, record.cell, record.kl, record.tag, record.curve, record.hardware, record.reply) == (None,) * 7
    assert record.split == results.DEFAULT_SPLIT == "test"
    assert record.protocols == {"counting": results.LEGACY_PROTOCOL} == {"counting": "normalized"}
    assert (record.devices, record.train_seconds, record.accuracy) == (None, 3.5, {"counting": 0.6})
    # The report reads it as it always did.
    run = read_run_dir(tmp_path, with_curves=False)
    assert (run.run_name, run.mode, run.model, run.status, run.seed) == ("counting_sft_tiny_seed1", "train", "tiny",
                                                                         "finished", 1)
    assert (run.sweep, run.cell, run.kl, run.tag) == (None,) * 4
    assert (run.accuracy, run.protocol, run.eval_split) == ({"counting": 0.6}, {"counting": "normalized"}, "test")
    assert (run.seconds, run.train_seconds, run.devices, run.curve) == (9.0, 3.5, None, {})


def test_keys_it_does_not_know_are_kept_and_written_after_the_known_ones(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({**OLD, "note": "hand-added"}))
    record = results.read(tmp_path)
    assert record.extra == {"note": "hand-added"}
    assert list(record.to_dict())[-1] == "note" and list(record.to_dict())[:-1] == list(CURRENT)


@pytest.mark.parametrize("text, message", [
    ('{"run_name": "a", "mode": "train",', "not valid JSON"),
    ("[1, 2]", "a JSON object expected, got list"),
    (json.dumps({k: v for k, v in OLD.items() if k not in ("model", "after")}), "no model, after"),
    (json.dumps({**OLD, "after": {"counting": {"n": 3}}}), "after.counting has no accuracy"),
])
def test_a_broken_results_json_is_an_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "results.json"
    path.write_bytes(text.encode())
    with pytest.raises(ResultsError) as info:
        results.read(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert isinstance(info.value, ConfigError)  # the report and run.py print it as one line


def test_the_report_says_which_results_json_is_broken(tmp_path, capsys):
    run = tmp_path / "grid" / "counting_sft_tiny_seed1"
    run.mkdir(parents=True)
    (run / "results.json").write_text('{"run_name": ')
    assert report_main([str(tmp_path / "grid"), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'results.json'}: not valid JSON")

"""The offline rescore CLI: both input shapes, the report, --out, and one-line input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT
from support.rescore import GEOQA_LOG, _read_jsonl, _write_jsonl, _write_log

from othink_mr1.evaluation.metrics import ItemResult, score_item, summarize
from othink_mr1.evaluation.rescore import RescoreError, load_records, main, scorer_for, task_names
from othink_mr1.rewards.scorers import get_scorer

ITEM_KEYS = {
    "question",
    "ground_truth",
    "model_output",
    "extracted",
    "correct",
    "format_ok",
    "parsed",
    "completion_tokens",
    "protocol",
}

# Counting JSONL (with a blank line, which is skipped): items 1 and 3 correct, 2 wrong, 4 unparsed.
COUNTING_LINES = [
    {
        "question": "How many cubes?",
        "ground_truth": 3,
        "model_output": "<think>1, 2, 3</think><answer>3</answer>",
        "completion_tokens": 10,
    },
    {
        "question": "How many spheres?",
        "ground_truth": 5,
        "model_output": "<think>four?</think><answer>4</answer>",
        "completion_tokens": 20,
        "correct": False,
    },
    None,  # blank line
    {"question": "How many items?", "ground_truth": "10", "model_output": "<think>...</think> <answer> 10 </answer>"},
    {"ground_truth": 7, "model_output": "<answer>seven</answer>", "completion_tokens": 30, "correct": True},
]


# --------------------------------------------------------------------------------------------------
# Successful runs
# --------------------------------------------------------------------------------------------------


def test_geoqa_r1v_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _write_log(tmp_path)
    out = tmp_path / "sub" / "items.jsonl"
    assert main(["--task", "geoqa", "--scorer", "normalized", str(log), "--out", str(out)]) == 0
    report = capsys.readouterr().out.splitlines()

    assert "task: geoqa (scorer: geometry)" in report
    assert "protocol: normalized" in report
    assert not any(line.startswith("saved protocol") for line in report)  # R1-V's log names none
    assert "verdicts that differ between normalized and r1v: 2 of 4" in report
    assert "items: 4" in report
    assert "correct: 3" in report
    assert "accuracy: 75.00%" in report
    assert "format rate: 75.00%" in report
    assert "parse failures: 1 (25.00%)" in report
    assert "saved accuracy (as stored): 50.0" in report
    assert "disagreements with saved per-item correctness: 3 of 4" in report

    items = _read_jsonl(out)
    assert len(items) == 4
    assert all(set(item) == ITEM_KEYS for item in items)
    assert all(item["protocol"] == "normalized" for item in items)
    assert [item["correct"] for item in items] == [True, True, False, True]
    assert [item["format_ok"] for item in items] == [True, True, True, False]
    assert [item["parsed"] for item in items] == [True, True, False, True]
    assert [item["question"] for item in items] == ["angle CED?", "length of AB?", "ratio?", "height?"]
    assert [item["ground_truth"] for item in items] == ["140°", "4√{3}", "\\frac{5}{2}", "12米"]
    assert items[0]["extracted"] == "140"
    assert items[1]["extracted"] == "4\\sqrt{3} cm"
    assert items[2]["extracted"] is None
    assert items[3]["extracted"] == "12"
    assert items[1]["model_output"] == GEOQA_LOG["results"][1]["model_output"]
    assert all(item["completion_tokens"] is None for item in items)


def test_geoqa_log_under_the_default_r1v_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _write_log(tmp_path)
    out = tmp_path / "items.jsonl"
    assert main(["--task", "geoqa", str(log), "--out", str(out)]) == 0
    report = capsys.readouterr().out.splitlines()
    assert "protocol: r1v" in report
    assert "correct: 1" in report
    assert "parse failures: 2 (50.00%)" in report
    assert "verdicts that differ between r1v and normalized: 2 of 4" in report
    assert "disagreements with saved per-item correctness: 3 of 4" in report
    items = _read_jsonl(out)
    assert [item["correct"] for item in items] == [False, False, False, True]
    assert [item["extracted"] for item in items] == ["60", None, None, "12"]
    assert all(item["protocol"] == "r1v" for item in items)


def test_rescoring_completions_under_another_protocol_leaves_the_input_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run's completions.jsonl (scored under normalized) re-scored under r1v: the saved protocol is
    # printed, the input is untouched, and nothing is written without --out (never onto the input).
    first = tmp_path / "normalized.jsonl"
    assert main(["--task", "geoqa", "--scorer", "normalized", str(_write_log(tmp_path)), "--out", str(first)]) == 0
    capsys.readouterr()
    completions = tmp_path / "completions.jsonl"
    first.rename(completions)
    before = completions.read_bytes()
    listing = sorted(tmp_path.iterdir())

    assert main(["--task", "geoqa", "--scorer", "r1v", str(completions)]) == 0
    report = capsys.readouterr().out.splitlines()
    assert "protocol: r1v" in report
    assert "saved protocol: normalized" in report
    assert "verdicts that differ between r1v and normalized: 2 of 4" in report
    assert "disagreements with saved per-item correctness: 2 of 4" in report  # its own "correct" flags
    assert not any(line.startswith("wrote:") for line in report)
    assert completions.read_bytes() == before and sorted(tmp_path.iterdir()) == listing

    message = _run_error(["--task", "geoqa", "--scorer", "r1v", str(completions), "--out", str(completions)], capsys)
    assert "already exists" in message
    assert completions.read_bytes() == before


def test_saved_protocol_of_some_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_jsonl(tmp_path, [{**COUNTING_LINES[0], "protocol": "r1v"}, COUNTING_LINES[1]])
    assert main(["--task", "counting", str(path)]) == 0
    report = capsys.readouterr().out.splitlines()
    assert "saved protocol: r1v (1 of 2 records)" in report
    assert "verdicts that differ between r1v and normalized: 0 of 2" in report  # counting: one rule


def test_unknown_scorer_is_a_usage_error_listing_the_protocols(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_jsonl(tmp_path, COUNTING_LINES)
    with pytest.raises(SystemExit) as excinfo:
        main(["--task", "counting", "--scorer", "exact", str(path)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "--scorer" in err and "'exact'" in err and "r1v" in err and "normalized" in err


def test_counting_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_jsonl(tmp_path, COUNTING_LINES)
    out = tmp_path / "items.jsonl"
    assert main(["--task", "counting", str(path), "--out", str(out)]) == 0
    report = capsys.readouterr().out.splitlines()

    assert "task: counting (scorer: counting)" in report
    assert "items: 4" in report
    assert "correct: 2" in report
    assert "accuracy: 50.00%" in report
    assert "format rate: 75.00%" in report
    assert "parse failures: 1 (25.00%)" in report
    assert not any(line.startswith("saved accuracy") for line in report)  # JSONL carries none
    assert "disagreements with saved per-item correctness: 1 of 2" in report

    items = _read_jsonl(out)
    assert [item["correct"] for item in items] == [True, False, True, False]
    assert [item["extracted"] for item in items] == ["3", "4", "10", None]
    assert [item["ground_truth"] for item in items] == [3, 5, "10", 7]  # kept as given
    assert [item["completion_tokens"] for item in items] == [10, 20, None, 30]
    assert [item["question"] for item in items] == ["How many cubes?", "How many spheres?", "How many items?", None]


def test_task_alias_and_no_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_jsonl(tmp_path, COUNTING_LINES)
    assert main(["--task", "clevr_count", str(path)]) == 0
    report = capsys.readouterr().out
    assert "task: clevr_count (scorer: counting)" in report
    assert "accuracy: 50.00%" in report
    assert "wrote:" not in report


def test_every_task_config_resolves_to_the_scorer_it_names() -> None:
    import yaml

    files = sorted((ROOT / "conf" / "task").glob("*.yaml"))
    assert task_names() == [path.stem for path in files] and "geoqa" in task_names()
    for path in files:
        assert scorer_for(path.stem) == yaml.safe_load(path.read_text(encoding="utf-8"))["scorer"], path
    assert scorer_for("geoqa") == "geometry" and scorer_for("clevr_count") == "counting"


def test_a_task_is_scored_with_the_scorer_its_yaml_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkout with one task, named nowhere in the code: its YAML alone picks the scorer. A scorer name
    # that is no task there is still accepted as itself.
    tasks = tmp_path / "checkout" / "conf" / "task"
    tasks.mkdir(parents=True)
    (tasks / "dice.yaml").write_text("defaults:\n  - /schema/task@_here_\n  - _self_\n\nname: dice\n"
                                     "source: synthetic_dice\nscorer: counting\nmax_new_tokens: 64\n")
    monkeypatch.setenv("OTHINK_ROOT", str(tmp_path / "checkout"))
    assert task_names() == ["dice"]
    path = _write_jsonl(tmp_path, COUNTING_LINES)
    assert main(["--task", "dice", str(path)]) == 0
    report = capsys.readouterr().out.splitlines()
    assert "task: dice (scorer: counting)" in report and "accuracy: 50.00%" in report
    assert main(["--task", "geometry", str(_write_log(tmp_path))]) == 0
    assert "task: geometry (scorer: geometry)" in capsys.readouterr().out.splitlines()
    message = _run_error(["--task", "geoqa", str(path)], capsys)
    assert message == "error: unknown task or scorer 'geoqa'; valid tasks: dice; valid scorers: counting, geometry"
    (tasks / "dice.yaml").write_text("name: dice\nscorer: dice_rule\n")
    message = _run_error(["--task", "dice", str(path)], capsys)
    assert str(tasks / "dice.yaml") in message and "'dice_rule'" in message and "counting, geometry" in message


# --------------------------------------------------------------------------------------------------
# load_records / metrics
# --------------------------------------------------------------------------------------------------


def test_load_records_both_shapes(tmp_path: Path) -> None:
    records = load_records(_write_log(tmp_path))
    assert records == GEOQA_LOG["results"]
    records = load_records(_write_jsonl(tmp_path, COUNTING_LINES))
    assert records == [record for record in COUNTING_LINES if record is not None]


def test_load_records_single_line_jsonl(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path, [{"ground_truth": 3, "model_output": "<answer>3</answer>"}])
    assert load_records(path) == [{"ground_truth": 3, "model_output": "<answer>3</answer>"}]


def test_summarize_and_item_json() -> None:
    scorer = get_scorer("counting")
    items = [
        score_item(scorer, "<think>.</think><answer>3</answer>", 3, question="q", completion_tokens=4),
        score_item(scorer, "<answer>2</answer>", 3),
        score_item(scorer, "none", 3, completion_tokens=8),
    ]
    summary = summarize(items)
    assert summary == {
        "protocol": "r1v",
        "n": 3,
        "correct": 1,
        "accuracy": pytest.approx(1 / 3),
        "format_rate": pytest.approx(1 / 3),
        "parse_failure_rate": pytest.approx(1 / 3),
        "mean_completion_tokens": pytest.approx(6.0),
        "mean_completion_chars": pytest.approx((34 + 18 + 4) / 3),
    }
    assert items[0].to_json() == {
        "question": "q",
        "ground_truth": 3,
        "model_output": "<think>.</think><answer>3</answer>",
        "extracted": "3",
        "correct": True,
        "format_ok": True,
        "parsed": True,
        "completion_tokens": 4,
        "protocol": "r1v",
    }
    assert summarize([score_item(get_scorer("counting", "normalized"), "x", 3)])["protocol"] == "normalized"
    with pytest.raises(ValueError, match="different protocols"):
        summarize([items[0], score_item(get_scorer("counting", "normalized"), "x", 3)])
    assert summarize(items[1:2])["mean_completion_tokens"] is None
    with pytest.raises(ValueError):
        summarize([])


def test_item_json_stringifies_unserialisable_ground_truth() -> None:
    item = ItemResult(None, {1, 2}, "out", None, False, False, False)  # type: ignore[arg-type]
    assert item.to_json()["ground_truth"] == str({1, 2})
    json.dumps(item.to_json())


# --------------------------------------------------------------------------------------------------
# Input errors: exit 2, one line naming the file and the record, no traceback
# --------------------------------------------------------------------------------------------------


def _run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    message = captured.err.strip()
    assert message.startswith("error: ")
    assert "\n" not in message and "Traceback" not in message
    return message


def test_error_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    message = _run_error(["--task", "geoqa", str(missing)], capsys)
    assert str(missing) in message and "no such file" in message


def test_error_invalid_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ground_truth": 3, "model_output": "x"}\n\n{"ground_truth": 3, "model_o\n', encoding="utf-8")
    message = _run_error(["--task", "counting", str(path)], capsys)
    assert str(path) in message and "line 3" in message and "not valid JSON" in message


def test_error_missing_key_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_jsonl(tmp_path, [{"ground_truth": 3, "model_output": "x"}, None, {"ground_truth": 4}])
    message = _run_error(["--task", "counting", str(path)], capsys)
    assert str(path) in message and "line 3" in message and "'model_output'" in message
    with pytest.raises(RescoreError, match="line 3: missing key 'model_output'"):
        load_records(path)


def test_error_missing_key_in_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = json.loads(json.dumps(GEOQA_LOG))
    del log["results"][1]["ground_truth"]
    path = tmp_path / "log.json"
    path.write_text(json.dumps(log), encoding="utf-8")
    message = _run_error(["--task", "geoqa", str(path)], capsys)
    assert str(path) in message and "record 2" in message and "'ground_truth'" in message


def test_error_record_not_an_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text('{"ground_truth": 3, "model_output": "x"}\n[1, 2]\n', encoding="utf-8")
    message = _run_error(["--task", "counting", str(path)], capsys)
    assert str(path) in message and "line 2" in message and "JSON object" in message


@pytest.mark.parametrize("content", ["", "\n\n  \n", '{"accuracy": 0.0, "results": []}'])
def test_error_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str) -> None:
    path = tmp_path / "empty.json"
    path.write_text(content, encoding="utf-8")
    message = _run_error(["--task", "geoqa", str(path)], capsys)
    assert str(path) in message and "no records" in message


def test_error_unknown_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_jsonl(tmp_path, COUNTING_LINES)
    message = _run_error(["--task", "mathvista", str(path)], capsys)
    assert "'mathvista'" in message
    assert f"valid tasks: {', '.join(task_names())};" in message and "clevr_count" in task_names()
    assert "valid scorers: counting, geometry" in message


def test_error_bad_counting_ground_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = [{"ground_truth": 3, "model_output": "x"}, {"ground_truth": "140°", "model_output": "x"}]
    path = _write_jsonl(tmp_path, records)
    message = _run_error(["--task", "counting", str(path)], capsys)
    assert str(path) in message and "line 2" in message and "140°" in message


def test_error_out_file_exists_and_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _write_log(tmp_path)
    before = log.read_bytes()
    message = _run_error(["--task", "geoqa", str(log), "--out", str(log)], capsys)
    assert str(log) in message and "already exists" in message
    assert log.read_bytes() == before
    for protocol in ("r1v", "normalized"):
        message = _run_error(["--task", "geoqa", "--scorer", protocol, str(log), "--out", str(log)], capsys)
        assert "already exists" in message
        assert log.read_bytes() == before

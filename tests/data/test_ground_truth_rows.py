"""Every split checks each record's ground truth with its task's scorer when it loads (`load_split`), for
the JSONL loaders (naming the line) and dataset rows (naming the row) alike: a bad one is a DataError
naming the file, line and value, or a recorded bad row under data.on_bad_row=skip."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from conftest import task_config
from support.bad_rows import _hf_cache_in_tmp, _image_bytes  # noqa: F401 - autouse: the HF datasets cache in tmp

from othink_mr1.data.records import BadRows, DataError, record_answer
from othink_mr1.data.tasks import TaskSplit, load_split

FEATURES = datasets.Features(
    {"image": datasets.Image(), "problem": datasets.Value("string"), "solution": datasets.Value("string")})


def write_test_jsonl(folder: Path, ground_truths: list) -> Path:
    """R1-V's test schema, one line per ground truth (each image a real PNG)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.png").write_bytes(_image_bytes())
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps({"image_path": "./a.png", "question": f"Question {i}?", "ground_truth": gt}) + "\n"
                            for i, gt in enumerate(ground_truths)), encoding="utf-8")
    return path


def test_a_counting_ground_truth_that_is_no_integer_stops_the_load_naming_file_line_and_value(tmp_path):
    path = write_test_jsonl(tmp_path, [3, 4, "many", 5])
    with pytest.raises(DataError) as err:
        load_split(task_config(test_jsonl=str(path), image_root=str(tmp_path)), "test", str(tmp_path / "c"))
    assert str(err.value) == (f"{path}, line 3: field 'ground_truth': counting ground truth must be an integer, "
                              "got 'many'")


def test_skip_leaves_a_bad_ground_truth_out_and_lists_it(tmp_path):
    path = write_test_jsonl(tmp_path, [3, 4, "many", 5, 6, 7, 8, 9, 10, 11])
    bad_rows = BadRows("skip", max_fraction=0.2)
    ds = load_split(task_config(test_jsonl=str(path), image_root=str(tmp_path)), "test", str(tmp_path / "c"), bad_rows)
    assert ds["ground_truth"] == ["3", "4", "5", "6", "7", "8", "9", "10", "11"]
    assert bad_rows.rows == [{"split": "t test", "source": str(path), "line": 3,
                              "reason": "field 'ground_truth': counting ground truth must be an integer, got 'many'"}]


def test_a_geometry_ground_truth_math_verify_cannot_read_is_reported(tmp_path):
    path = write_test_jsonl(tmp_path, ["140°", "√{3}", "\\frac{7}{2}", "many"])
    task = task_config(scorer="geometry", test_jsonl=str(path), image_root=str(tmp_path))
    with pytest.raises(DataError, match=rf"{path}, line 4: field 'ground_truth': math-verify reads no value from "
                                        r"geometry ground truth 'many'"):
        load_split(task, "test", str(tmp_path / "c"))


def test_a_train_jsonl_checks_the_answer_inside_its_solution(tmp_path):
    (tmp_path / "a.png").write_bytes(_image_bytes())
    solutions = ["<answer> 2 </answer>", "<answer> a few </answer>", "<answer> 4 </answer>"]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"image": "a.png", "problem": "How many?", "solution": s}) + "\n"
                            for s in solutions), encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_split(task_config(train_source=str(path)), "train", str(tmp_path / "c"))
    assert str(err.value) == (f"{path}, line 2: field 'solution': counting ground truth must be an integer, "
                              "got 'a few'")


def test_a_saved_train_split_names_the_row(tmp_path):
    folder = tmp_path / "train"
    rows = {"image": [{"bytes": _image_bytes(), "path": None}] * 4, "problem": ["How many?"] * 4,
            "solution": ["<answer> 1 </answer>", "<answer> 2 </answer>", "<answer> 2.5 </answer>", "<answer> 3 </answer>"]}
    datasets.Dataset.from_dict(rows, features=FEATURES).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"\(train split\), row 2: field 'solution': counting ground truth must be an "
                                        r"integer, got '2.5'"):
        load_split(task_config(train_source=str(folder)), "train", str(tmp_path / "c"))


def test_the_value_checked_is_the_value_scored(tmp_path):
    """R1-V writes counting ground truths as JSON numbers; the check and the scorer both read the text the
    split gives (`record_answer`), so nothing that passed the check can fail in scoring."""
    path = write_test_jsonl(tmp_path, [4, " 9 "])
    task = task_config(test_jsonl=str(path), image_root=str(tmp_path))
    split = TaskSplit(task, "test", load_split(task, "test", str(tmp_path / "c")))
    assert [split[i].answer for i in range(2)] == ["4", "9"]
    assert [record_answer(split.ds[i], "test") for i in range(2)] == ["4", "9"]


@pytest.mark.parametrize("name", ["counting", "geometry", "counting_multi"])
def test_every_synthetic_split_passes_its_scorer(make_cfg, tmp_path, name):
    """The generators' records (test and validation in the test schema, train in the train schema) all hold
    ground truths their task's scorer judges."""
    cfg = make_cfg("model=tiny", f"task={name}", "task.synthetic.num_train=16", "task.synthetic.num_test=8",
                   "task.synthetic.num_validation=8", shrink=False)
    for split in ("train", "validation", "test"):
        assert len(load_split(cfg.task, split, str(tmp_path / "c"))) > 0

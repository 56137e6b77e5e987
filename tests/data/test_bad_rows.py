"""data.on_bad_row: "error" (the default) stops at the first bad row and names it; "skip" leaves bad
rows out, counts them and lists them in the run's outputs; too many bad rows still stop the run."""

from __future__ import annotations

import json

import datasets
import pytest
from conftest import task_config
from support.bad_rows import (
    BAD_TEST_LINES,
    _bad_test_file,
    _hf_cache_in_tmp,  # noqa: F401 - autouse: the HF datasets cache in tmp
    _image_bytes,
    _truncated_jpeg,
)

from othink_mr1.data.hub import load_test_jsonl, load_train_source
from othink_mr1.data.records import BadRows, DataError
from othink_mr1.data.tasks import TaskSplit, load_split

FEATURES = datasets.Features(
    {"image": datasets.Image(), "problem": datasets.Value("string"), "solution": datasets.Value("string")})


# ----------------------------------------------------------------------------------------- skip


def test_skip_leaves_every_kind_of_bad_test_line_out_and_lists_it(tmp_path):
    path, bad_lines = _bad_test_file(tmp_path)
    bad_rows = BadRows("skip", max_fraction=0.5)
    ds = load_split(task_config(test_jsonl=str(path), image_root=str(tmp_path)), "test", str(tmp_path / "c"), bad_rows)
    assert ds["question"] == [f"Question {i}?" for i in range(20)]  # every good line, in order
    assert [r["line"] for r in bad_rows.rows] == bad_lines
    for row, (_, reason) in zip(bad_rows.rows, BAD_TEST_LINES.values()):
        assert row["split"] == "t test" and row["source"] == str(path)
        assert reason in row["reason"], (reason, row)
    assert bad_rows.counts() == {"t test": len(BAD_TEST_LINES)}


@pytest.mark.parametrize("kind", list(BAD_TEST_LINES))
def test_error_mode_stops_at_the_bad_line_and_names_it(tmp_path, kind):
    path, _ = _bad_test_file(tmp_path, good=2)
    record, reason = BAD_TEST_LINES[kind]
    lines = path.read_text().splitlines()[:1] + [record if isinstance(record, str) else json.dumps(record)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_test_jsonl(path, tmp_path)
    assert f"{path}, line 2: " in str(err.value) and reason in str(err.value)


def _train_dataset(n: int, bad: dict[int, str]) -> datasets.Dataset:
    rows = {"image": [], "problem": [], "solution": []}
    for i in range(n):
        image = {"bytes": _image_bytes((i, 2 * i % 256, 50)), "path": None}
        problem, solution = f"Problem {i}?", f"<answer> {i} </answer>"
        kind = bad.get(i)
        if kind == "empty problem":
            problem = " "
        elif kind == "no solution":
            solution = None
        elif kind == "garbage image":
            image = {"bytes": b"GIF89a broken", "path": None}
        elif kind == "truncated jpeg":
            image = {"bytes": _truncated_jpeg(), "path": None}
        elif kind == "sliver image":
            image = {"bytes": _image_bytes(size=(1, 300)), "path": None}
        rows["image"].append(image)
        rows["problem"].append(problem)
        rows["solution"].append(solution)
    return datasets.Dataset.from_dict(rows, features=FEATURES)


TRAIN_FAULTS = {3: "empty problem", 7: "no solution", 11: "garbage image", 20: "truncated jpeg", 26: "sliver image"}


def test_skip_on_a_saved_train_split_keeps_the_good_rows_in_order(tmp_path):
    folder = tmp_path / "train"
    _train_dataset(40, TRAIN_FAULTS).save_to_disk(str(folder))
    bad_rows = BadRows("skip", max_fraction=0.2)
    ds = load_split(task_config(train_source=str(folder)), "train", str(tmp_path / "c"), bad_rows)
    assert ds["problem"] == [f"Problem {i}?" for i in range(40) if i not in TRAIN_FAULTS]
    assert {r["row"]: r["reason"] for r in bad_rows.rows}.keys() == TRAIN_FAULTS.keys()
    reasons = {r["row"]: r["reason"] for r in bad_rows.rows}
    assert "'problem' is empty" in reasons[3] and "'solution' is empty" in reasons[7]
    assert "unreadable image" in reasons[11] and "unreadable image" in reasons[20]
    assert "aspect ratio" in reasons[26]
    # What is kept decodes: the loader never meets a skipped row.
    split = TaskSplit(task_config(), "train", ds)
    assert [split[i].images[0].size for i in range(len(split))] == [(16, 16)] * len(split)
    # The default stops at the first, named by its row.
    with pytest.raises(DataError, match=r"\(train split\), row 3: field 'problem' is empty"):
        load_split(task_config(train_source=str(folder)), "train", str(tmp_path / "c"))


def test_a_few_shot_subset_is_the_first_good_rows_of_its_seeded_order(tmp_path):
    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    _train_dataset(60, {}).save_to_disk(str(clean))
    # Unchanged when nothing is bad: the subset `datasets`' shuffle(seed) gave before rows were skippable.
    subset = load_split(task_config(train_source=str(clean), train_size=20, train_subset_seed=3), "train", str(tmp_path / "c"))
    assert subset["problem"] == _train_dataset(60, {}).shuffle(seed=3).select(range(20))["problem"]
    # Two of the chosen rows are bad: the subset still has 20 rows, the next good ones in that order.
    order = [int(p.split()[1][:-1]) for p in _train_dataset(60, {}).shuffle(seed=3)["problem"]]
    faults = {order[4]: "garbage image", order[9]: "empty problem"}
    _train_dataset(60, faults).save_to_disk(str(dirty))
    bad_rows = BadRows("skip", max_fraction=0.2)
    ds = load_split(task_config(train_source=str(dirty), train_size=20, train_subset_seed=3), "train", str(tmp_path / "c"),
                    bad_rows)
    expected = [f"Problem {i}?" for i in order if i not in faults][:20]
    assert ds["problem"] == expected
    assert sorted(r["row"] for r in bad_rows.rows) == sorted(faults)
    # Rows beyond the subset are never examined (rows past it may be bad and cost nothing).
    assert len(bad_rows.rows) == 2


def test_skip_on_a_train_jsonl_names_lines(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_image_bytes())
    lines = [json.dumps({"image": "imgs/a.png", "problem": f"P{i}?", "solution": f"<answer> {i} </answer>"})
             for i in range(12)]
    lines.insert(4, '{"image": "imgs/a.png", "problem": "broken')
    lines.insert(8, json.dumps({"image": "imgs/gone.png", "problem": "P?", "solution": "<answer> 1 </answer>"}))
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    bad_rows = BadRows("skip", max_fraction=0.2)
    ds = load_train_source(str(path), bad_rows=bad_rows)
    assert ds["problem"] == [f"P{i}?" for i in range(12)]
    assert [(r["line"], r["reason"].split(" (")[0].split(":")[0]) for r in bad_rows.rows] == [
        (5, "not valid JSON"), (9, "image file not found")]


def test_a_json_array_train_file_is_read_and_checked_by_row(tmp_path):
    (tmp_path / "a.png").write_bytes(_image_bytes())
    records = [{"image": "a.png", "problem": f"P{i}?", "solution": f"<answer> {i} </answer>"} for i in range(3)]
    records[1]["problem"] = ""
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"train.json, row 1: field 'problem' is empty"):
        load_train_source(str(path))
    bad_rows = BadRows("skip", max_fraction=0.5)
    assert load_train_source(str(path), bad_rows=bad_rows)["problem"] == ["P0?", "P2?"]


def test_too_many_bad_rows_stop_the_run_even_with_skip(tmp_path):
    path, _ = _bad_test_file(tmp_path, good=20)  # 8 bad of 28: 29%
    task = task_config(test_jsonl=str(path), image_root=str(tmp_path))
    with pytest.raises(DataError) as err:
        load_split(task, "test", str(tmp_path / "c"), BadRows("skip", max_fraction=0.1))
    message = str(err.value)
    assert "8 of 28 rows examined are bad" in message and "data.max_bad_fraction=0.1" in message
    assert str(path) in message and "not found" in message  # the first ones, so the cause is visible
    # Every row bad (a wrong image_root): stops whatever the fraction allows.
    with pytest.raises(DataError, match=r"no usable rows, all 28 are bad \(first: line 1: image file not found"):
        load_split(task_config(test_jsonl=str(path), image_root=str(tmp_path / "wrong")), "test", str(tmp_path / "c"),
                   BadRows("skip", max_fraction=1.0))


# ------------------------------------------------------------------------------------ whole runs



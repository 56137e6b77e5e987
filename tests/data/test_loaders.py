"""Loaders of the real R1-V data (local fixtures in its exact schemas), validation errors, examples
and collators."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from conftest import R1V_EVAL, task_config
from PIL import Image

from othink_mr1.config import SyntheticDataConfig
from othink_mr1.data.collate import IGNORE_INDEX, PromptCollator, SFTCollator, render_prompt
from othink_mr1.data.hub import PUBLISHED_SHA256, check_published, file_sha256, load_test_jsonl, load_train_source
from othink_mr1.data.records import DataError, Example, answer_from_solution, sft_target
from othink_mr1.data.synthetic import counting
from othink_mr1.data.tasks import TaskSplit, load_split

FILES = {"superclevr_test_200.jsonl": 200, "geoqa_test_754.jsonl": 754}
TRAIN_FEATURES = datasets.Features(
    {"image": datasets.Image(), "problem": datasets.Value("string"), "solution": datasets.Value("string")}
)


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path, monkeypatch):
    """`datasets` caches local parquet/json builds in its own cache: keep that inside tmp_path."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")


# ------------------------------------------------------------------------------------------ helpers


def _png(colour=(10, 20, 30), size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def _colour(i: int) -> tuple[int, int, int]:
    return (i % 256, (7 * i) % 256, (13 * i + 5) % 256)


def _train_rows(n: int) -> dict[str, list]:
    return {
        "image": [Image.new("RGB", (8, 8), _colour(i)) for i in range(n)],
        "problem": [f"How many items are there in image {i}?" for i in range(n)],
        "solution": [f"<answer> {3 + i % 8} </answer>" for i in range(n)],
    }


def _train_folder(path: Path, n: int = 5, **extra_columns) -> Path:
    rows = _train_rows(n)
    features = TRAIN_FEATURES.copy()
    for name, values in extra_columns.items():
        rows[name] = values
        features[name] = datasets.Value("string")
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return path


def _image_paths(name: str) -> list[str]:
    with (R1V_EVAL / name).open(encoding="utf-8") as fh:
        return [json.loads(line)["image_path"] for line in fh if line.strip()]


def _records(name: str) -> list[dict]:
    with (R1V_EVAL / name).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def image_roots(tmp_path_factory) -> dict[str, Path]:
    """Placeholder PNGs at every path the two R1-V test files name, one root per file."""
    roots = {}
    png = _png()
    for name in FILES:
        root = tmp_path_factory.mktemp(name.split("_")[0])
        for rel in _image_paths(name):
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png)
        roots[name] = root
    return roots


def _where_line(message: str, line: int) -> bool:
    """The message names the 1-based line of the JSONL file."""
    return re.search(rf"\bline {line}\b", message) is not None


# ------------------------------------------------------------------------------------------ sha256


def test_test_files_match_the_published_checksums():
    listed = {}
    for line in (R1V_EVAL / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            listed[name] = digest
    assert set(listed) == set(FILES)
    for name, digest in listed.items():
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        assert file_sha256(R1V_EVAL / name) == digest == PUBLISHED_SHA256[name]
        assert check_published(R1V_EVAL / name) is True
    # The alternative names R1-V uses carry the same sums.
    assert PUBLISHED_SHA256["superclevr_test200_counting_problems.jsonl"] == listed["superclevr_test_200.jsonl"]
    assert PUBLISHED_SHA256["geoqa_test_prompts.jsonl"] == listed["geoqa_test_754.jsonl"]


def test_check_published_warns_about_a_modified_copy(tmp_path, caplog):
    copy = tmp_path / "geoqa_test_754.jsonl"
    data = (R1V_EVAL / "geoqa_test_754.jsonl").read_bytes()
    copy.write_bytes(data.replace("140\\u00b0".encode(), "150\\u00b0".encode(), 1))
    assert copy.read_bytes() != data
    with caplog.at_level(logging.WARNING, logger="othink_mr1.data.hub"):
        assert check_published(copy) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(copy) in warnings[0].getMessage() and "sha256" in warnings[0].getMessage()
    # An exact copy under its own name is recognised; an unknown name is not judged.
    exact = tmp_path / "superclevr_test_200.jsonl"
    shutil.copy(R1V_EVAL / "superclevr_test_200.jsonl", exact)
    assert check_published(exact) is True
    other = tmp_path / "my_test.jsonl"
    shutil.copy(R1V_EVAL / "superclevr_test_200.jsonl", other)
    assert check_published(other) is None


# -------------------------------------------------------------------------------------- test jsonl


@pytest.mark.parametrize("name", list(FILES))
def test_load_test_jsonl_reads_the_real_files(name, image_roots, caplog):
    root = image_roots[name]
    with caplog.at_level(logging.WARNING, logger="othink_mr1.data.hub"):
        ds = load_test_jsonl(R1V_EVAL / name, root)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # the published files
    assert len(ds) == FILES[name]
    assert set(ds.column_names) == {"image_path", "question", "ground_truth"}
    records = _records(name)
    assert ds["question"] == [r["question"] for r in records]
    assert ds["ground_truth"] == [str(r["ground_truth"]) for r in records]  # kept as text
    assert all(isinstance(g, str) for g in ds["ground_truth"])
    assert ds["image_path"] == [str((root / r["image_path"]).resolve()) for r in records]
    assert all(Path(p).is_file() for p in ds["image_path"])
    if name.startswith("geoqa"):
        assert ds[0]["ground_truth"] == "140°"
        assert ds[0]["image_path"].endswith("Geo170K/images/test/0.png")
    else:
        assert ds[0]["ground_truth"] == "4"
        assert ds[0]["image_path"].endswith("images/superCLEVR_new_025000.png")


def test_load_test_jsonl_resolves_images_next_to_the_file_without_image_root(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_png())
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"image_path": "./imgs/a.png", "question": "q?", "ground_truth": 3}) + "\n")
    ds = load_test_jsonl(path, None)
    assert ds["image_path"] == [str((tmp_path / "imgs" / "a.png").resolve())]
    assert ds["ground_truth"] == ["3"]


# ---------------------------------------------------------------------------------- test jsonl: errors


GOOD = {"image_path": "good.png", "question": "How many?", "ground_truth": "140°"}


def _bad_test_file(tmp_path: Path, bad_line: str | None) -> Path:
    (tmp_path / "good.png").write_bytes(_png())
    (tmp_path / "garbage.png").write_bytes(b"this is not a png at all")
    path = tmp_path / "bad_test.jsonl"
    # Line 2 is blank: line numbers count physical lines, from 1.
    lines = [json.dumps(GOOD, ensure_ascii=False), ""] + ([bad_line] if bad_line is not None else [])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "bad_line,names",
    [
        (json.dumps(dict(GOOD, image_path="missing/nothing.png")), ["image file not found", "nothing.png"]),
        (json.dumps(dict(GOOD, image_path="garbage.png")), ["unreadable image", "garbage.png"]),
        (json.dumps({"image_path": "good.png", "question": "How many?"}), ["missing field", "ground_truth"]),
        (json.dumps(dict(GOOD, question="   ")), ["'question'", "empty"]),
        (json.dumps(dict(GOOD, ground_truth="")), ["'ground_truth'", "empty"]),
        (json.dumps(dict(GOOD, image_path="")), ["'image_path'", "empty"]),
        ('{"image_path": "good.png", "question": "How many?", "ground_truth": 3', ["not valid JSON"]),
        (json.dumps([1, 2, 3]), ["expected a JSON object", "list"]),
    ],
    ids=["missing-image", "unreadable-image", "missing-field", "blank-question", "empty-ground-truth",
         "empty-image-path", "not-json", "not-an-object"],
)
def test_load_test_jsonl_names_file_line_and_field(tmp_path, bad_line, names):
    path = _bad_test_file(tmp_path, bad_line)
    with pytest.raises(DataError) as err:
        load_test_jsonl(path, tmp_path)
    message = str(err.value)
    assert str(path) in message
    assert _where_line(message, 3), message
    for part in names:
        assert part in message, (part, message)


def test_load_test_jsonl_rejects_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="test split is empty") as err:
        load_test_jsonl(empty, tmp_path)
    assert str(empty) in str(err.value)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\n")
    with pytest.raises(DataError, match="test split is empty"):
        load_test_jsonl(blank, tmp_path)
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="test file not found") as err:
        load_test_jsonl(missing, tmp_path)
    assert str(missing) in str(err.value)


def test_load_split_reports_test_file_errors(tmp_path):
    path = _bad_test_file(tmp_path, json.dumps(dict(GOOD, image_path="missing.png")))
    # GOOD's ground truth is an angle: a geometry task's (a counting task refuses it at line 1).
    task = task_config(scorer="geometry", test_jsonl=str(path), image_root=str(tmp_path))
    with pytest.raises(DataError, match="missing.png") as err:
        load_split(task, "test", str(tmp_path / "cache"))
    assert str(path) in str(err.value) and _where_line(str(err.value), 3)
    with pytest.raises(DataError, match="test_jsonl is not set"):
        load_split(task_config(), "test", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------- train loaders


def _assert_train_rows(ds, n: int) -> None:
    rows = _train_rows(n)
    assert len(ds) == n
    assert {"image", "problem", "solution"} <= set(ds.column_names)
    assert ds["problem"] == rows["problem"]
    assert ds["solution"] == rows["solution"]
    examples = TaskSplit(task_config(), "train", ds)
    for i in range(n):
        ex = examples[i]
        assert [im.size for im in ex.images] == [(8, 8)] and ex.images[0].mode == "RGB"
        assert ex.images[0].getpixel((3, 3)) == _colour(i)


def test_load_train_source_reads_a_save_to_disk_folder(tmp_path):
    folder = _train_folder(tmp_path / "train_folder", n=6)
    _assert_train_rows(load_train_source(str(folder)), 6)


def test_load_train_source_reads_a_dataset_dict_folder_and_names_missing_splits(tmp_path):
    ds = datasets.Dataset.from_dict(_train_rows(4), features=TRAIN_FEATURES)
    folder = tmp_path / "dict_folder"
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(folder))
    _assert_train_rows(load_train_source(str(folder), "train"), 4)
    assert len(load_train_source(str(folder), "validation")) == 1

    only_val = tmp_path / "only_validation"
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(only_val))
    with pytest.raises(DataError) as err:
        load_train_source(str(only_val), "train")
    message = str(err.value)
    assert str(only_val) in message and "'train'" in message and "validation" in message


@pytest.mark.parametrize("as_folder", [False, True], ids=["file", "folder"])
def test_load_train_source_reads_parquet(tmp_path, as_folder):
    folder = tmp_path / "parquet"
    folder.mkdir()
    path = folder / "train-00000.parquet"
    datasets.Dataset.from_dict(_train_rows(5), features=TRAIN_FEATURES).to_parquet(str(path))
    _assert_train_rows(load_train_source(str(folder if as_folder else path)), 5)


def test_load_train_source_reads_jsonl_with_image_paths_relative_to_the_file(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    rows = _train_rows(4)
    with (data / "train.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(4):
            rows["image"][i].save(data / "imgs" / f"{i}.png")
            fh.write(json.dumps({"image": f"imgs/{i}.png", "problem": rows["problem"][i],
                                 "solution": rows["solution"][i]}) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the file, not to the working directory
    ds = load_train_source(str(data / "train.jsonl"))
    assert ds.features["image"] == datasets.Image(decode=False)
    assert [v["path"] for v in ds["image"]] == [str((data / "imgs" / f"{i}.png").resolve()) for i in range(4)]
    _assert_train_rows(ds, 4)


def test_load_train_source_names_a_missing_local_path(tmp_path):
    missing = str(tmp_path / "no" / "train.jsonl")
    with pytest.raises(DataError, match="train data not found") as err:
        load_train_source(missing)
    assert missing in str(err.value)
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    with pytest.raises(DataError, match="no dataset files") as err:
        load_train_source(str(empty_dir))
    assert str(empty_dir) in str(err.value)
    csv = tmp_path / "train.csv"
    csv.write_text("image,problem,solution\n")
    with pytest.raises(DataError, match="unsupported train data format '.csv'"):
        load_train_source(str(csv))


def test_load_train_source_offline_hub_id_suggests_a_local_copy(tmp_path):
    hub_id = "leonardPKU/clevr_cogen_a_train"
    with pytest.raises(DataError) as err:
        load_train_source(hub_id, "train", cache_dir=str(tmp_path / "hub"))
    message = str(err.value)
    assert hub_id in message and "'train'" in message
    assert "local copy" in message and "task.train_source" in message


# ------------------------------------------------------------------------------ load_split: subsets


@pytest.fixture
def train_150(tmp_path) -> Path:
    return _train_folder(tmp_path / "train150", n=150)


def test_load_split_few_shot_subset_is_seeded(tmp_path, train_150):
    cache = str(tmp_path / "cache")
    full = load_split(task_config(train_source=str(train_150)), "train", cache)
    assert len(full) == 150
    first = load_split(task_config(train_source=str(train_150), train_size=100), "train", cache)
    again = load_split(task_config(train_source=str(train_150), train_size=100), "train", cache)
    other = load_split(task_config(train_source=str(train_150), train_size=100, train_subset_seed=1), "train", cache)
    assert len(first) == len(again) == len(other) == 100
    assert first["problem"] == again["problem"]
    assert first["problem"] != other["problem"]
    assert len(set(first["problem"])) == 100 and set(first["problem"]) <= set(full["problem"])
    assert first["problem"] != full["problem"][:100]  # shuffled, not the first 100
    # A size at least the split's size keeps everything.
    assert len(load_split(task_config(train_source=str(train_150), train_size=500), "train", cache)) == 150
    with pytest.raises(DataError, match="train_size=0"):
        load_split(task_config(train_source=str(train_150), train_size=0), "train", cache)


def test_load_split_eval_size_takes_the_first_rows(tmp_path, image_roots):
    name = "geoqa_test_754.jsonl"
    task = task_config(scorer="geometry", test_jsonl=str(R1V_EVAL / name), image_root=str(image_roots[name]), eval_size=7)
    ds = load_split(task, "test", str(tmp_path / "cache"))
    records = _records(name)[:7]
    assert len(ds) == 7
    assert ds["question"] == [r["question"] for r in records]
    assert ds["ground_truth"] == [r["ground_truth"] for r in records]
    whole = load_split(task_config(test_jsonl=str(R1V_EVAL / "superclevr_test_200.jsonl"),
                             image_root=str(image_roots["superclevr_test_200.jsonl"])), "test", str(tmp_path / "c"))
    assert len(whole) == 200
    with pytest.raises(DataError, match="eval_size=-1"):
        load_split(task_config(test_jsonl=str(R1V_EVAL / name), image_root=str(image_roots[name]), eval_size=-1),
                   "test", str(tmp_path / "cache"))


def test_load_split_rejects_an_unknown_source(tmp_path):
    with pytest.raises(DataError, match="task.source='bogus'") as err:
        load_split(task_config(source="bogus"), "train", str(tmp_path))
    assert "r1v" in str(err.value)
    with pytest.raises(DataError, match="train_source is not set"):
        load_split(task_config(), "train", str(tmp_path))


# ----------------------------------------------------------------------------- load_split: bad train


def _bad_train(tmp_path: Path, case: str) -> Path:
    rows = _train_rows(4)
    features = TRAIN_FEATURES
    if case == "missing-field":
        del rows["solution"]
        features = datasets.Features({k: v for k, v in TRAIN_FEATURES.items() if k != "solution"})
    elif case == "empty-problem":
        rows["problem"][2] = "  "
    elif case == "none-solution":
        rows["solution"][2] = None
    elif case == "unreadable-bytes":
        rows["image"][2] = {"bytes": b"\x89PNG garbage, not an image", "path": None}
    elif case == "empty-split":
        rows = {k: [] for k in rows}
    folder = tmp_path / f"train-{case}"
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize(
    "case,names",
    [
        ("missing-field", ["missing field", "'solution'"]),
        ("empty-problem", ["row 2", "'problem'", "empty"]),
        ("none-solution", ["row 2", "'solution'", "empty"]),
        ("unreadable-bytes", ["row 2", "unreadable image"]),
        ("empty-split", ["train split", "empty"]),
    ],
)
def test_load_split_names_source_row_and_field_of_bad_train_data(tmp_path, case, names):
    folder = _bad_train(tmp_path, case)
    with pytest.raises(DataError) as err:
        load_split(task_config(train_source=str(folder)), "train", str(tmp_path / "cache"))
    message = str(err.value)
    assert str(folder) in message, message
    for part in names:
        assert part in message, (part, message)


@pytest.mark.parametrize("fmt", ["dataset-dict", "parquet", "jsonl", "blank-jsonl"])
def test_load_split_names_an_empty_train_split_in_every_local_format(tmp_path, fmt):
    empty = datasets.Dataset.from_dict({k: [] for k in TRAIN_FEATURES}, features=TRAIN_FEATURES)
    if fmt == "dataset-dict":
        path = tmp_path / "dict"
        datasets.DatasetDict({"train": empty, "validation": empty}).save_to_disk(str(path))
    elif fmt == "parquet":
        path = tmp_path / "empty.parquet"
        empty.to_parquet(str(path))
    else:
        path = tmp_path / "empty.jsonl"
        path.write_text("" if fmt == "jsonl" else "\n \n")
    with pytest.raises(DataError) as err:
        load_split(task_config(train_source=str(path)), "train", str(tmp_path / "cache"))
    message = str(err.value)
    assert str(path) in message and "train split" in message and "empty" in message


def test_load_split_names_a_missing_image_of_a_jsonl_train_file(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png())
    path = tmp_path / "train.jsonl"
    lines = [{"image": "ok.png", "problem": "How many?", "solution": "<answer> 3 </answer>"},
             {"image": "gone.png", "problem": "How many?", "solution": "<answer> 4 </answer>"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(DataError) as err:
        load_split(task_config(train_source=str(path)), "train", str(tmp_path / "cache"))
    message = str(err.value)
    assert str(path) in message and "line 2" in message  # the file's own line number
    assert "image file not found" in message and "gone.png" in message


# --------------------------------------------------------------------------------------- examples


def test_answer_from_solution_and_sft_target():
    assert answer_from_solution("<answer> 3 </answer>") == "3"
    assert answer_from_solution("<answer>3</answer>") == "3"
    assert answer_from_solution("<think> 2 or 3 </think> <answer>\n140° </answer>") == "140°"
    assert answer_from_solution(" 7 ") == "7"  # no tags: the whole solution
    row = {"solution": " <answer> 3 </answer> ", "thinking": "I count three."}
    assert sft_target(row, "auto") == "<think> I count three. </think> <answer> 3 </answer>"
    assert sft_target(row, "thinking_solution") == "<think> I count three. </think> <answer> 3 </answer>"
    assert sft_target(row, "solution") == "<answer> 3 </answer>"
    assert sft_target({"solution": "<answer>3</answer>", "thinking": "<think>x</think>"}, "auto") == \
        "<think>x</think> <answer>3</answer>"
    assert sft_target({"solution": "<answer>3</answer>", "thinking": None}, "auto") == "<answer>3</answer>"
    with pytest.raises(DataError, match="'thinking'"):
        sft_target({"solution": "<answer>3</answer>"}, "thinking_solution")


def test_task_split_train_examples(tmp_path):
    rows = _train_rows(3)
    rows["solution"] = ["<answer> 3 </answer>", "<answer>10</answer>", "<answer>\\frac{7}{2}</answer>"]
    folder = tmp_path / "train"
    datasets.Dataset.from_dict(rows, features=TRAIN_FEATURES).save_to_disk(str(folder))
    task = task_config(scorer="geometry", train_source=str(folder))  # \frac{7}{2} is no count
    split = TaskSplit(task, "train", load_split(task, "train", str(tmp_path / "cache")))
    assert len(split) == 3
    examples = [split[i] for i in range(3)]
    assert all(isinstance(ex, Example) for ex in examples)
    assert [ex.answer for ex in examples] == ["3", "10", "\\frac{7}{2}"]
    assert [ex.target for ex in examples] == rows["solution"]
    assert [ex.question for ex in examples] == rows["problem"]
    assert [ex.index for ex in examples] == [0, 1, 2]
    assert all(len(ex.images) == 1 and ex.images[0].mode == "RGB" for ex in examples)


def test_task_split_thinking_column_makes_think_targets(tmp_path):
    folder = _train_folder(tmp_path / "thinking", n=3,
                           thinking=["I count 3 objects.", "<think> Four. </think>", None])
    task = task_config(train_source=str(folder))
    ds = load_split(task, "train", str(tmp_path / "cache"))
    auto = TaskSplit(task, "train", ds, sft_target_mode="auto")
    assert auto[0].target == "<think> I count 3 objects. </think> <answer> 3 </answer>"
    assert auto[1].target == "<think> Four. </think> <answer> 4 </answer>"
    assert auto[2].target == "<answer> 5 </answer>"  # no thinking for this row
    assert auto[0].answer == "3"
    assert TaskSplit(task, "train", ds, sft_target_mode="solution")[0].target == "<answer> 3 </answer>"
    with pytest.raises(DataError, match="thinking"):
        TaskSplit(task, "train", ds, sft_target_mode="thinking_solution")[2]


def test_task_split_test_examples_from_jsonl(tmp_path, image_roots):
    name = "geoqa_test_754.jsonl"
    task = task_config(scorer="geometry", test_jsonl=str(R1V_EVAL / name), image_root=str(image_roots[name]), eval_size=3)
    split = TaskSplit(task, "test", load_split(task, "test", str(tmp_path / "cache")))
    ex = split[0]
    assert ex.answer == "140°"
    assert ex.target == "<answer> 140° </answer>"
    assert ex.question == _records(name)[0]["question"]
    assert [im.size for im in ex.images] == [(8, 8)] and ex.images[0].mode == "RGB"


def test_synthetic_task_split_through_load_split(tmp_path):
    task = task_config(name="counting", source="synthetic_counting",
                 synthetic=SyntheticDataConfig(num_train=5, num_test=4, image_size=112, seed=0))
    train = TaskSplit(task, "train", load_split(task, "train", str(tmp_path)))
    test = TaskSplit(task, "test", load_split(task, "test", str(tmp_path)))
    assert (len(train), len(test)) == (5, 4)
    for i in range(5):
        item = counting.make_item("train", i, 0, 112, render=False)
        assert train[i].target == item["solution"] and train[i].answer == item["solution"].split()[1]
        assert [im.size for im in train[i].images] == [(112, 112)]
    for i in range(4):
        assert test[i].answer == str(counting.make_item("test", i, 0, 112, render=False)["ground_truth"])
    assert (tmp_path / "datasets").is_dir()


# --------------------------------------------------------------------------------------- collators


def _examples(targets: list[str], questions: list[str] | None = None) -> list[Example]:
    out = []
    for i, target in enumerate(targets):
        item = counting.make_item("train", i, 0, 112)
        out.append(Example(images=[item["image"]], question=questions[i] if questions else item["problem"],
                           answer=str(i), target=target, index=i))
    return out


RAGGED = [
    "<answer> 3 </answer>",
    "<think> I count the objects one by one: there are seven of them. </think> <answer> 7 </answer>",
    "<answer>\\frac{7}{2}</answer>",
]


@pytest.fixture(scope="module")
def processor(tiny):
    return tiny[1]


def _image_pad_id(processor) -> int:
    return processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_sft_collator_labels_only_the_assistant_reply(processor):
    batch = SFTCollator(processor, "{question} Answer in tags.", loss_on="assistant")(_examples(RAGGED))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert labels.shape == ids.shape == mask.shape and ids.shape[0] == 3
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]] * 3
    lengths = mask.sum(1).tolist()
    assert len(set(lengths)) == 3  # ragged
    tok = processor.tokenizer
    for row, target in enumerate(RAGGED):
        n = lengths[row]
        assert mask[row, :n].all() and not mask[row, n:].any()  # right padding
        kept = (labels[row] != IGNORE_INDEX).nonzero().flatten()
        assert tok.decode(labels[row][kept], skip_special_tokens=False) == target + "<|im_end|>"
        # One contiguous span that ends the sequence, copying the input ids.
        assert kept.tolist() == list(range(int(kept[0]), n))
        assert torch.equal(labels[row][kept], ids[row][kept])
        assert tok.decode(ids[row][: int(kept[0])]).endswith("<|im_start|>assistant\n")
        assert (labels[row, n:] == IGNORE_INDEX).all()


def test_sft_collator_loss_on_all_skips_images_and_padding(processor):
    batch = SFTCollator(processor, "{question} Answer in tags.", loss_on="all")(_examples(RAGGED))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    pad_id = _image_pad_id(processor)
    expected = (mask == 1) & (ids != pad_id)
    assert torch.equal(labels != IGNORE_INDEX, expected)
    assert torch.equal(labels[expected], ids[expected])
    assert (mask == 0).any() and (ids == pad_id).sum(1).tolist() == [16, 16, 16]
    assert not (labels == pad_id).any()
    tok = processor.tokenizer
    for row, (ex, target) in enumerate(zip(_examples(RAGGED), RAGGED)):
        text = tok.decode(labels[row][labels[row] != IGNORE_INDEX], skip_special_tokens=False)
        assert f"{ex.question} Answer in tags." in text  # the prompt is trained on too
        assert "<|im_start|>user" in text and "<|image_pad|>" not in text
        assert text.endswith(target + "<|im_end|>")


def test_prompt_collator_left_pads_and_carries_meta(processor):
    questions = ["How many?", "How many different items are there in the image, counting all of them?", "Count."]
    examples = _examples(["", "", ""], questions)
    batch = PromptCollator(processor, "{question} Think first.")(examples)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 3
    assert mask[:, -1].all()  # left padding: every row ends with real tokens
    for row in range(3):
        n = int(mask[row].sum())
        assert not mask[row, : ids.shape[1] - n].any() and mask[row, ids.shape[1] - n:].all()
    assert not mask[0, 0] and not mask[2, 0] and mask[1].all()
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]] * 3
    assert batch["pixel_values"].shape[0] == 3 * 8 * 8
    assert (ids == _image_pad_id(processor)).sum(1).tolist() == [16, 16, 16]
    assert batch["meta"] == {"questions": questions, "answers": ["0", "1", "2"], "indices": [0, 1, 2], "image_counts": [1, 1, 1],
                             "images": [list(ex.images) for ex in examples], "fields": [{}, {}, {}]}
    # The images themselves, as loaded (the vLLM engine processes them again): the same objects, in order.
    assert [imgs[0] is ex.images[0] for imgs, ex in zip(batch["meta"]["images"], examples)] == [True] * 3
    tok = processor.tokenizer
    for row, question in enumerate(questions):
        text = tok.decode(ids[row][mask[row] == 1], skip_special_tokens=False)
        assert f"{question} Think first." in text
        assert text.endswith("<|im_start|>assistant\n")  # ready for generation


def test_render_prompt_keeps_braces(processor):
    template = "{question} Write halves as \\frac{1}{2}, and put the answer in <answer> {} </answer>."
    assert render_prompt(template, "What is DE?") == \
        "What is DE? Write halves as \\frac{1}{2}, and put the answer in <answer> {} </answer>."
    assert render_prompt("{question}", "a {question}-free {x}") == "a {question}-free {x}"
    batch = PromptCollator(processor, template)(_examples([""], ["What is DE?"]))
    text = processor.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=False)
    assert "What is DE? Write halves as \\frac{1}{2}, and put the answer in <answer> {} </answer>." in text


# ------------------------------------------------------------------------------------- validation split


def test_synthetic_validation_split_loads_in_the_test_schema(tmp_path):
    syn = SyntheticDataConfig(num_train=4, num_validation=5, num_test=6)
    task = task_config(name="geometry", source="synthetic_geometry", scorer="geometry", synthetic=syn)
    cache = str(tmp_path / "cache")
    validation = load_split(task, "validation", cache)
    test = load_split(task, "test", cache)
    assert (len(validation), len(test)) == (5, 6)
    assert {"image", "question", "ground_truth"} <= set(validation.column_names)
    examples = TaskSplit(task, "validation", validation)
    assert [examples[i].answer for i in range(5)] == [str(g) for g in validation["ground_truth"]]
    # Geometry's questions carry their numbers, and validation's number combinations are not the test's.
    assert not set(validation["question"]) & set(test["question"])
    with pytest.raises(DataError, match="num_validation=0"):
        load_split(task_config(name="geometry", source="synthetic_geometry", scorer="geometry",
                               synthetic=SyntheticDataConfig(num_train=4, num_validation=0, num_test=6)), "validation", cache)


def test_validation_split_of_a_hub_task_is_refused_by_name(tmp_path):
    with pytest.raises(DataError, match="task 'geoqa' .*has no validation split"):
        load_split(task_config(name="geoqa", test_jsonl="x.jsonl"), "validation", str(tmp_path))
    with pytest.raises(DataError, match="split 'dev' of task 't'"):
        load_split(task_config(), "dev", str(tmp_path))

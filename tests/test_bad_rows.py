"""data.on_bad_row: "error" (the default) stops at the first bad row and names it; "skip" leaves bad
rows out, counts them and lists them in the run's outputs; too many bad rows still stop the run."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import datasets
import pytest
from PIL import Image

from conftest import task_config
from othink_mr1.data.hub import load_test_jsonl, load_train_source
from othink_mr1.data.records import BadRows, DataError
from othink_mr1.data.tasks import TaskSplit, load_split
from othink_mr1.runner import run
from othink_mr1.utils.errors import ConfigError

FEATURES = datasets.Features(
    {"image": datasets.Image(), "problem": datasets.Value("string"), "solution": datasets.Value("string")})


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")


def _image_bytes(colour=(10, 20, 30), size=(16, 16), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _truncated_jpeg() -> bytes:
    """A JPEG cut short: its header is intact, so PIL's verify() passes it; decoding fails."""
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="JPEG")
    data = buf.getvalue()
    with Image.open(io.BytesIO(data[: len(data) // 2])) as im:
        im.verify()  # the header check alone would let it through
    return data[: len(data) // 2]


# Every kind of bad line a test JSONL can hold, with a word its reason must contain.
BAD_TEST_LINES = {
    "missing image": ({"image_path": "nowhere.png", "question": "How many?", "ground_truth": "3"}, "not found"),
    "garbage image": ({"image_path": "garbage.png", "question": "How many?", "ground_truth": "3"}, "unreadable"),
    "truncated jpeg": ({"image_path": "cut.jpg", "question": "How many?", "ground_truth": "3"}, "unreadable"),
    "sliver image": ({"image_path": "sliver.png", "question": "How many?", "ground_truth": "3"}, "aspect ratio"),
    "missing field": ({"image_path": "good.png", "question": "How many?"}, "missing field"),
    "empty question": ({"image_path": "good.png", "question": "  ", "ground_truth": "3"}, "'question' is empty"),
    "not json": ('{"image_path": "good.png", "question": ', "not valid JSON"),
    "not an object": ([1, 2], "expected a JSON object"),
}


def _bad_test_file(folder: Path, good: int = 20) -> tuple[Path, list[int]]:
    """`good` good lines with one line of every bad kind spread among them; returns the file and the
    (1-based) lines of the bad ones."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "good.png").write_bytes(_image_bytes())
    (folder / "garbage.png").write_bytes(b"\x89PNG not really")
    (folder / "cut.jpg").write_bytes(_truncated_jpeg())
    (folder / "sliver.png").write_bytes(_image_bytes(size=(402, 2)))
    lines, bad_lines = [], []
    bad = list(BAD_TEST_LINES.values())
    for i in range(good):
        lines.append(json.dumps({"image_path": "good.png", "question": f"Question {i}?", "ground_truth": str(i)}))
        if i % 2 == 1 and bad:
            record, _ = bad.pop(0)
            lines.append(record if isinstance(record, str) else json.dumps(record))
            bad_lines.append(len(lines))
    path = folder / "test.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, bad_lines


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


def _r1v_files(folder: Path) -> tuple[Path, Path]:
    """A train JSONL (12 good lines, 2 bad) and a test JSONL (20 good, 8 bad) in R1-V's schemas."""
    test, _ = _bad_test_file(folder)
    lines = [json.dumps({"image": "good.png", "problem": f"How many items are there in image {i}?",
                         "solution": f"<answer> {i % 5} </answer>"}) for i in range(12)]
    lines.insert(2, json.dumps({"image": "garbage.png", "problem": "How many?", "solution": "<answer> 1 </answer>"}))
    lines.insert(9, "not json at all")
    train = folder / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    return train, test


def _r1v_overrides(train: Path, test: Path, folder: Path) -> list[str]:
    return ["model=tiny", "method=sft", "method.max_steps=2", "method.batch_size=4", "task=clevr_count",
            f"task.train_source={train}", "task.train_size=null", f"task.test_jsonl={test}",
            f"task.image_root={folder}", "eval.tasks=[clevr_count]", "eval.batch_size=8",
            "model.max_new_tokens_cap=8", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "save_model=false", "eval.curve_points=null"]


def test_a_run_with_skip_trains_on_the_good_rows_and_lists_the_bad_ones(make_cfg, tmp_path, caplog):
    train, test = _r1v_files(tmp_path / "data")
    cfg = make_cfg(*_r1v_overrides(train, test, tmp_path / "data"), "data.on_bad_row=skip",
                   "data.max_bad_fraction=0.3", shrink=False)
    with caplog.at_level(logging.WARNING, logger="othink_mr1.runner"):
        results = run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    listed = [json.loads(line) for line in (run_dir / "bad_rows.jsonl").read_text().splitlines()]
    assert [(r["split"], r["line"]) for r in listed if r["split"] == "clevr_count train"] == [
        ("clevr_count train", 3), ("clevr_count train", 10)]
    assert sum(r["split"] == "clevr_count test" for r in listed) == len(BAD_TEST_LINES)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["data"] == {"on_bad_row": "skip", "bad_rows_file": "bad_rows.jsonl",
                             "skipped_rows": {"clevr_count train": 2, "clevr_count test": len(BAD_TEST_LINES)}}
    assert saved["after"]["clevr_count"]["n"] == 20 and saved["before"]["clevr_count"]["n"] == 20
    assert saved["train"]["steps"] == 2 and results["data"] == saved["data"]
    warnings = [r.getMessage() for r in caplog.records if "data.on_bad_row=skip" in r.getMessage()]
    assert len(warnings) == 2  # one per split
    assert "2 bad row(s) of the clevr_count train split left out (first: line 3: unreadable image" in warnings[0]


def test_a_run_with_the_default_stops_before_training_naming_the_row(make_cfg, tmp_path):
    train, test = _r1v_files(tmp_path / "data")
    cfg = make_cfg(*_r1v_overrides(train, test, tmp_path / "data"), shrink=False)
    with pytest.raises(DataError, match=rf"{train}, line 3: unreadable image"):
        run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "results.json").exists()
    assert not (run_dir / "bad_rows.jsonl").exists()


def test_on_bad_row_values_are_checked_at_start(make_cfg):
    with pytest.raises(ConfigError, match="data.on_bad_row='drop': expected one of"):
        run(make_cfg("model=tiny", "data.on_bad_row=drop"))
    with pytest.raises(ConfigError, match="data.max_bad_fraction=1.5"):
        run(make_cfg("model=tiny", "data.max_bad_fraction=1.5"))

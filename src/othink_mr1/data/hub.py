"""Loaders for the real R1-V data.

Train splits come from the hub (`leonardPKU/clevr_cogen_a_train`, `leonardPKU/GEOQA_R1V_Train_8K`:
image, problem, solution) or from a local copy in the same schema: a `save_to_disk` folder, parquet
file(s), or a JSONL whose `image` values are paths relative to the file.

Test splits are R1-V's JSONL files (`image_path`, `question`, `ground_truth`) plus the folder their
image paths are relative to: SuperCLEVR-200 (`./images/superCLEVR_new_025000.png`) and GeoQA-754
(`./Geo170K/images/test/0.png`).

A record with several images lists them: `images` (or a list in `image` / `image_path`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

from .records import (
    JSONL_IMAGE_FIELDS,
    BadRows,
    DataError,
    RowError,
    check_answer,
    check_text,
    image_field,
    missing_fields,
    resolve_image_paths,
    text_fields,
)

log = logging.getLogger(__name__)

# sha256 of the test files as published in R1-V (src/eval/prompts/), under both names they go by.
PUBLISHED_SHA256 = {
    "superclevr_test_200.jsonl": "4ca86120527cd76d6957a33a6b745980bf8d51c3307a4fdbab5e264b89f19b04",
    "superclevr_test200_counting_problems.jsonl": "4ca86120527cd76d6957a33a6b745980bf8d51c3307a4fdbab5e264b89f19b04",
    "geoqa_test_754.jsonl": "6d1f8ceb1ebcaa322bd926769039bf4eff2679044a5e104de40cc4ce08a77571",
    "geoqa_test_prompts.jsonl": "6d1f8ceb1ebcaa322bd926769039bf4eff2679044a5e104de40cc4ce08a77571",
}


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_published(path: str | Path) -> bool | None:
    """True/False when `path` is a known R1-V file with/without its published checksum, else None."""
    expected = PUBLISHED_SHA256.get(Path(path).name)
    if expected is None:
        return None
    ok = file_sha256(path) == expected
    if not ok:
        log.warning("%s differs from the file R1-V published (sha256 mismatch): scores will not be "
                    "comparable with the paper's", path)
    return ok


GroundTruthCheck = Callable[[Any], "str | None"]  # a scorer's check_ground_truth (rewards/base.py)


def read_jsonl(path: Path, role: str, image_root: Path, bad_rows: BadRows | None = None,
               check_ground_truth: GroundTruthCheck | None = None) -> list[dict]:
    """The records of a JSONL split in R1-V's schema, each line checked (valid JSON, an object, its
    fields present and non-empty, every image found and decodable, and its ground truth one the task's
    scorer can judge: `check_ground_truth`, None for no scorer); image paths come back resolved
    against `image_root`, under `image` (train) or `image_path` (test), or `images` for a train
    record with a list of images. Errors name the file, the 1-based line and, in a list, which
    image; `bad_rows` decides whether a bad line stops the load or is skipped."""
    bad_rows = bad_rows or BadRows()
    texts = text_fields(role)
    records: list[dict] = []

    def parse(line: str | None, number: int, unit: str, record: object = None) -> None:
        if line is not None:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RowError(str(path), number, f"not valid JSON ({exc.msg})", unit) from None
        if not isinstance(record, dict):
            raise RowError(str(path), number, f"expected a JSON object, got {type(record).__name__}", unit)
        missing = missing_fields(list(record), role)
        if missing:
            raise RowError(str(path), number, f"missing field(s) {missing}; the record has {sorted(record)}", unit)
        for field in texts:
            check_text(record[field], field, str(path), number, unit=unit)
        field = image_field(record, JSONL_IMAGE_FIELDS[role])
        if field is None:  # every image field present is null
            field = next(f for f in JSONL_IMAGE_FIELDS[role] if f in record)
            check_text(None, field, str(path), number, unit=unit)
        resolved = resolve_image_paths(record[field], field, image_root, str(path), number, unit)
        for key in JSONL_IMAGE_FIELDS[role]:
            record.pop(key, None)
        # Test records keep R1-V's `image_path` (one path or a list); a train record keeps `image`
        # for one image (the split's layout as before) and has `images` for a list.
        if role == "test":
            record["image_path"] = resolved
        else:
            record["images" if isinstance(resolved, list) else "image"] = resolved
        for field in texts:  # R1-V writes some ground truths as numbers: text, as the scorers read it
            record[field] = str(record[field])
        check_answer(record, role, check_ground_truth, str(path), number, unit)
        records.append(record)

    if path.suffix == ".json" and path.read_text(encoding="utf-8").lstrip().startswith("["):
        # A JSON array of records (what `datasets` also reads as "json"): rows counted from 0.
        try:
            array = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        for row, record in enumerate(array):
            bad_rows.keep(lambda: parse(None, row, "row", record))
        return records
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if line.strip():
                bad_rows.keep(lambda: parse(line, line_no, "line"))
    return records


def load_test_jsonl(path: str | Path, image_root: str | Path | None, bad_rows: BadRows | None = None,
                    check_ground_truth: GroundTruthCheck | None = None):
    """R1-V's test JSONL as a Dataset (image_path resolved against image_root), fully validated (ground
    truths by `check_ground_truth`, the task's scorer's)."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise DataError(f"test file not found: {path}")
    if not _has_rows(path):
        raise DataError(f"{path}: the test split is empty")
    records = read_jsonl(path, "test", Path(image_root) if image_root else path.parent, bad_rows, check_ground_truth)
    check_published(path)
    # A column holds one type: when any record has a list of images, every record's is a list.
    as_lists = any(isinstance(r["image_path"], list) for r in records)
    return datasets.Dataset.from_list(
        [{"image_path": _as_list(r["image_path"]) if as_lists else r["image_path"], "question": r["question"],
          "ground_truth": r["ground_truth"]} for r in records])


def _as_list(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


def _train_jsonl(path: Path, bad_rows: BadRows | None, check_ground_truth: GroundTruthCheck | None):
    """A train JSONL (image paths relative to the file), every line checked, as a Dataset."""
    import datasets

    records = read_jsonl(path, "train", path.parent, bad_rows, check_ground_truth)
    if any("images" in record for record in records):
        # A column holds one type: when any record has a list of images, every record's is a list.
        for record in records:
            if "image" in record:
                record["images"] = [record.pop("image")]
    # Optional fields (thinking, ...) may be absent from some lines: every column gets every row.
    columns = list(dict.fromkeys(key for record in records for key in record))
    ds = datasets.Dataset.from_dict({key: [record.get(key) for record in records] for key in columns})
    if not records:
        return ds
    if "images" in ds.column_names:
        return ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return ds.cast_column("image", datasets.Image(decode=False))


def _saved_split_is_empty(folder: Path) -> bool:
    """A `save_to_disk` folder whose state lists no data files (a split saved with no rows)."""
    state = folder / "state.json"
    return state.is_file() and not json.loads(state.read_text(encoding="utf-8")).get("_data_files")


def _has_rows(path: Path) -> bool:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows > 0
    with path.open(encoding="utf-8") as fh:
        return any(line.strip() for line in fh)


def load_train_source(source: str, split: str = "train", cache_dir: str | None = None,
                      bad_rows: BadRows | None = None, check_ground_truth: GroundTruthCheck | None = None):
    """A train split in R1-V's schema from a hub id or a local copy (folder, parquet, jsonl).

    `cache_dir` holds the Arrow cache of local parquet copies; hub ids use the HF cache. A JSONL file
    is read and checked line by line here (`bad_rows`, `check_ground_truth`); the other formats are
    checked row by row by `load_split`."""
    import datasets

    local = Path(source).expanduser()
    if local.exists():
        if local.is_dir() and any((local / n).exists() for n in ("dataset_info.json", "dataset_dict.json", "state.json")):
            # `datasets` cannot load a saved split with no rows (IndexError): say so instead.
            if _saved_split_is_empty(local / split if (local / "dataset_dict.json").exists() else local):
                raise DataError(f"{local}: the train split '{split}' is empty (no rows)")
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{local}: no split '{split}' (has {sorted(ds)}); set task.train_split")
                ds = ds[split]
            return ds
        files = sorted(local.glob("**/*.parquet")) if local.is_dir() else [local]
        if not files:
            raise DataError(f"{local}: no dataset files (expected a save_to_disk folder, parquet or jsonl)")
        suffix = files[0].suffix
        # An empty parquet/jsonl makes `datasets` raise ValueError/StopIteration: say so instead.
        if suffix in (".parquet", ".jsonl", ".json") and not any(_has_rows(f) for f in files):
            raise DataError(f"{local}: the train split is empty (no rows)")
        if suffix == ".parquet":
            return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train",
                                         cache_dir=cache_dir)
        if suffix in (".jsonl", ".json"):
            return _train_jsonl(files[0], bad_rows, check_ground_truth)
        raise DataError(f"{local}: unsupported train data format '{suffix}'")
    if source.startswith((".", "/", "~")):
        raise DataError(f"train data not found: {source}")
    try:
        # Hub data goes to the user's Hugging Face cache (HF_HOME), where earlier downloads already are.
        return datasets.load_dataset(source, split=split)
    except Exception as exc:  # offline, unknown id, missing split
        raise DataError(
            f"could not load train data '{source}' (split '{split}') from the hub: {exc}. "
            "Without network, point task.train_source at a local copy in the same schema "
            "(a save_to_disk folder, parquet or jsonl with image, problem, solution)."
        ) from None

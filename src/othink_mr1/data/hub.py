"""Loaders for the real R1-V data.

Train splits come from the hub (`leonardPKU/clevr_cogen_a_train`, `leonardPKU/GEOQA_R1V_Train_8K`:
image, problem, solution) or from a local copy in the same schema: a `save_to_disk` folder, parquet
file(s), or a JSONL whose `image` values are paths relative to the file.

Test splits are R1-V's JSONL files (`image_path`, `question`, `ground_truth`) plus the folder their
image paths are relative to: SuperCLEVR-200 (`./images/superCLEVR_new_025000.png`) and GeoQA-754
(`./Geo170K/images/test/0.png`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from .records import DataError, check_fields, check_image_file, check_text

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


def load_test_jsonl(path: str | Path, image_root: str | Path | None):
    """R1-V's test JSONL as a Dataset (image_path resolved against image_root), fully validated."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise DataError(f"test file not found: {path}")
    root = Path(image_root) if image_root else path.parent
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            check_fields(list(record), "test", str(path) + f", line {line_no}")
            for field in ("question", "ground_truth"):
                check_text(record[field], field, str(path), line_no, unit="line")
            image_path = record.get("image_path") or record.get("image")
            check_text(image_path, "image_path", str(path), line_no, unit="line")
            resolved = (root / str(image_path)).resolve()
            check_image_file(resolved, str(path), line_no, unit="line")
            rows.append({"image_path": str(resolved), "question": str(record["question"]),
                         "ground_truth": str(record["ground_truth"])})
    if not rows:
        raise DataError(f"{path}: the test split is empty")
    check_published(path)
    return datasets.Dataset.from_list(rows)


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


def load_train_source(source: str, split: str = "train", cache_dir: str | None = None):
    """A train split in R1-V's schema from a hub id or a local copy (folder, parquet, jsonl).

    `cache_dir` holds the Arrow cache of local parquet/jsonl copies; hub ids use the HF cache."""
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
            ds = datasets.load_dataset("json", data_files=[str(f) for f in files], split="train", cache_dir=cache_dir)
            if "image" in ds.column_names:  # paths in the file are relative to it
                base = files[0].parent
                ds = ds.map(lambda r: {"image": str((base / r["image"]).resolve()) if r["image"] else r["image"]})
                ds = ds.cast_column("image", datasets.Image(decode=False))
            return ds
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

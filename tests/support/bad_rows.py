"""Helpers shared by tests/ and tests/e2e/ (see each test file)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image


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


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")

"""The two record schemas (R1-V's), their validation, and the canonical example the collators use.

train records: ``image``, ``problem``, ``solution`` (``<answer> 3 </answer>``), optional ``thinking``
test records:  ``image`` or ``image_path``, ``question``, ``ground_truth``

Validation runs when a split is loaded, before any model is built, and every error names the
source (file or hub id), the row and the field.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

TRAIN_FIELDS = ("image", "problem", "solution")
TEST_FIELDS = ("question", "ground_truth")  # plus image or image_path

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class DataError(ValueError):
    """Bad input data: the message names the file or source, the row and the field."""


@dataclass
class Example:
    """What the collators consume, whatever the source schema was."""

    image: Image.Image
    question: str
    answer: str  # ground truth as text ("3", "140°")
    target: str  # SFT target: the solution, or thinking + solution
    index: int


def answer_from_solution(solution: str) -> str:
    """`<answer> 3 </answer>` -> "3"; a solution without tags is taken whole."""
    match = _ANSWER.search(solution)
    return (match.group(1) if match else solution).strip()


def sft_target(row: dict[str, Any], mode: str) -> str:
    """The assistant text SFT trains on (`method.target`)."""
    solution = str(row["solution"]).strip()
    thinking = row.get("thinking")
    if mode == "solution" or (mode == "auto" and not thinking):
        return solution
    if not thinking:
        raise DataError("method.target=thinking_solution but the record has no 'thinking' field")
    thinking = str(thinking).strip()
    if not thinking.startswith("<think>"):
        thinking = f"<think> {thinking} </think>"
    return f"{thinking} {solution}"


def check_fields(columns: list[str], role: str, where: str) -> None:
    required = TRAIN_FIELDS if role == "train" else TEST_FIELDS
    missing = [f for f in required if f not in columns]
    if role == "test" and "image" not in columns and "image_path" not in columns:
        missing.append("image or image_path")
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}; the records have {sorted(columns)}")


def check_text(value: Any, field: str, where: str, row: int, unit: str = "row") -> None:
    """`unit` is "line" (1-based, JSONL files) or "row" (0-based, datasets)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}, {unit} {row}: field '{field}' is empty")


def check_image_file(path: Path, where: str, row: int, unit: str = "row") -> None:
    """The image exists and decodes (header and data), else a DataError naming file and row."""
    if not path.is_file():
        raise DataError(f"{where}, {unit} {row}: image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as exc:  # PIL raises many types for a bad file
        raise DataError(f"{where}, {unit} {row}: unreadable image {path}: {exc}") from None


def check_image_value(value: Any, where: str, row: int) -> None:
    """An undecoded `datasets.Image` value ({'bytes', 'path'}) or a PIL image decodes."""
    if value is None:
        raise DataError(f"{where}, row {row}: field 'image' is empty")
    if isinstance(value, Image.Image):
        return
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
    if data is None and path:
        return check_image_file(Path(path), where, row)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception as exc:
        raise DataError(f"{where}, row {row}: unreadable image bytes: {exc}") from None


def load_image(value: Any) -> Image.Image:
    """A decoded RGB image from a PIL image, a path, or a {'bytes', 'path'} value."""
    if isinstance(value, dict):
        value = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
    image = value if isinstance(value, Image.Image) else Image.open(value)
    return image.convert("RGB") if image.mode != "RGB" else image

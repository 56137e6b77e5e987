"""The two record schemas (R1-V's), their validation, and the canonical example the collators use.

train records: ``image``, ``problem``, ``solution`` (``<answer> 3 </answer>``), optional ``thinking``
test records:  ``image`` or ``image_path``, ``question``, ``ground_truth``

A record may hold several images: ``images`` (a list), or a list in ``image`` / ``image_path``; the
prompt then shows them in that order. Validation runs when a split is loaded, before any model is
built, and every error names the source (file or hub id), the row, the field and, in a list, which
image (``images[1]``).
"""

from __future__ import annotations

import dataclasses
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image

# A task's splits. Validation records (synthetic tasks only) follow the test schema: see schema_role.
SPLITS = ("train", "validation", "test")
TRAIN_FIELDS = ("problem", "solution")  # plus an image field
TEST_FIELDS = ("question", "ground_truth")  # plus an image field
# The fields that may hold a record's image(s), in the order they are looked up: the first one
# present (not None) is the record's. A test JSONL names its images `image_path` (R1-V's schema); a
# dataset row holds them decoded in `image` (as it always did, before `image_path`) or `images`.
IMAGE_FIELDS = {"train": ("images", "image"), "test": ("images", "image", "image_path")}
JSONL_IMAGE_FIELDS = {"train": ("images", "image"), "test": ("image_path", "images", "image")}


def text_fields(role: str) -> tuple[str, str]:
    """The fields of a "train" or "test" record that must hold non-empty text."""
    return ("problem", "solution") if role == "train" else TEST_FIELDS


def row_label(record: dict[str, Any]) -> str:
    """The label of a row BadRows recorded: "line 83" (a JSONL line) or "row 7" (a dataset row)."""
    unit = "line" if "line" in record else "row"
    return f"{unit} {record[unit]}"

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


# Qwen2-VL's smart_resize raises on a wider aspect ratio (mid-training, in a collator): refuse it at load.
MAX_ASPECT_RATIO = 200
ON_BAD_ROW = ("error", "skip")


class DataError(ValueError):
    """Bad input data: the message names the file or source, the row and the field."""


class RowError(DataError):
    """One bad row: `where` (file or source), `row` in `unit` ("line": 1-based JSONL line, "row":
    0-based dataset row) and what is wrong with it."""

    def __init__(self, where: str, row: int, reason: str, unit: str = "row"):
        self.where, self.row, self.reason, self.unit = where, row, reason, unit
        super().__init__(f"{where}, {unit} {row}: {reason}")


class BadRows:
    """What `data.on_bad_row` does with a bad row, for every split a run loads.

    "error": the row's RowError propagates and stops the run before any training.
    "skip": the row is recorded (split, file, row, reason) and its split goes on without it; a split
    with more than `max_fraction` of its examined rows bad still stops the run, since that means a
    wrong path or schema rather than a few damaged rows.
    """

    def __init__(self, on_bad_row: str = "error", max_fraction: float = 0.1):
        if on_bad_row not in ON_BAD_ROW:
            raise DataError(f"data.on_bad_row='{on_bad_row}': expected one of {list(ON_BAD_ROW)}")
        self.skip = on_bad_row == "skip"
        self.max_fraction = max_fraction
        self.split = ""
        self.rows: list[dict[str, Any]] = []

    def keep(self, check: Any) -> bool:
        """Run `check()`; True when it passed, False when it raised a RowError that was skipped."""
        try:
            check()
        except RowError as exc:
            if not self.skip:
                raise
            self.rows.append({"split": self.split, "source": exc.where, exc.unit: exc.row, "reason": exc.reason})
            return False
        return True

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["split"]] = out.get(row["split"], 0) + 1
        return out

    def check_fraction(self, where: str, good: int) -> None:
        """Stop when this split has no good rows, or more than `max_fraction` bad ones."""
        bad = [r for r in self.rows if r["split"] == self.split]
        examined = good + len(bad)
        if not bad or (good and len(bad) <= self.max_fraction * examined):
            return
        first = "; ".join(f"{row_label(r)}: {r['reason']}" for r in bad[:3])
        if not good:
            raise DataError(f"{where}: no usable rows, all {examined} are bad (first: {first})")
        raise DataError(
            f"{where}: {len(bad)} of {examined} rows examined are bad, over data.max_bad_fraction="
            f"{self.max_fraction} (first: {first}); a wrong path or schema is likely. Raise "
            "data.max_bad_fraction to skip them anyway")


@dataclass
class Example:
    """What the collators consume, whatever the source schema was."""

    images: list[Image.Image]  # one or more, in prompt order
    question: str
    answer: str  # ground truth as text ("3", "140°")
    target: str  # SFT target: the solution, or thinking + solution
    index: int
    # The record's other fields: every column of its row but the image ones, as the row holds them
    # ({"problem": ..., "solution": ..., "family": "triangle_angles"}). GRPO passes each to the reward
    # functions by name (methods/grpo.py: build_rollout).
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)


def example_label(split: str, example: Example) -> str:
    """How errors name an example: "counting train item 7" (its split, when known, and index)."""
    return f"{split} item {example.index}".strip()


def images_text(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


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
    """The split's columns hold the schema's fields (a whole-file fault: never skipped)."""
    missing = missing_fields(columns, role)
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}; the records have {sorted(columns)}")


def missing_fields(columns: list[str], role: str) -> list[str]:
    required = TRAIN_FIELDS if role == "train" else TEST_FIELDS
    missing = [f for f in required if f not in columns]
    if not any(f in columns for f in IMAGE_FIELDS[role]):
        missing.append(" or ".join(IMAGE_FIELDS[role]))
    return missing


def image_field(record: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    """The field holding the record's image(s): the first of `fields` whose value is not None."""
    return next((f for f in fields if record.get(f) is not None), None)


def image_items(value: Any, field: str) -> list[tuple[str, Any]]:
    """(name, value) of every image an image field holds: the field itself for one image, `field[i]`
    for each entry of a list, so that an error says which image."""
    if isinstance(value, (list, tuple)):
        return [(f"{field}[{i}]", item) for i, item in enumerate(value)]
    return [(field, value)]


def _no_images(field: str) -> str:
    return f"field '{field}' is an empty list: a record needs at least one image"


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def resolve_image_paths(value: Any, field: str, root: Path, where: str, row: int, unit: str = "row") -> str | list[str]:
    """The image path(s) of a JSON record resolved against `root`, each found and decodable, in the
    record's shape (one path, or a list); else a RowError naming the row, the field and which image."""
    items = image_items(value, field)
    if not items:
        raise RowError(where, row, _no_images(field), unit)
    resolved = []
    for name, item in items:
        if _is_blank(item):
            raise RowError(where, row, f"field '{name}' is empty", unit)
        if not isinstance(item, str):
            raise RowError(where, row, f"field '{name}' is not a path: {item!r}", unit)
        path = (root / item).resolve()
        problem = image_file_problem(path)
        if problem:
            raise RowError(where, row, problem if name == field else f"{name}: {problem}", unit)
        resolved.append(str(path))
    return resolved if isinstance(value, (list, tuple)) else resolved[0]


#: The field holding what a record is scored against: a train record's answer is inside its solution.
ANSWER_FIELDS = {"train": "solution", "test": "ground_truth"}


def record_answer(record: dict[str, Any], role: str) -> str:
    """The ground truth a record is scored against, as text: a test record's `ground_truth`, a train
    record's `<answer>` span of its `solution` (the GRPO reward's `answer`). TaskSplit gives the model's
    loop this same value, so the load-time check reads exactly what is scored."""
    if role == "train":
        return answer_from_solution(str(record["solution"]))
    return str(record["ground_truth"]).strip()


def check_answer(record: dict[str, Any], role: str, check: Callable[[Any], str | None] | None, where: str,
                 row: int, unit: str = "row") -> None:
    """A RowError naming the field and the value when the task's scorer cannot judge answers against the
    record's ground truth (`check`: the scorer's `check_ground_truth`; None checks nothing)."""
    if check is None:
        return
    reason = check(record_answer(record, role))
    if reason:
        raise RowError(where, row, f"field '{ANSWER_FIELDS[role]}': {reason}", unit)


def check_text(value: Any, field: str, where: str, row: int, unit: str = "row") -> None:
    """`unit` is "line" (1-based, JSONL files) or "row" (0-based, datasets)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError(where, row, f"field '{field}' is empty", unit)


def image_problem(source: Any, label: str) -> str | None:
    """Why `source` (a path or a bytes buffer, `label` in messages) cannot be a model input, or None."""
    try:
        with Image.open(source) as im:
            # Decodes every pixel: a truncated file fails here, in seconds, and not in a loader
            # worker hours into training (verify() reads PNG chunks but passes a cut-off JPEG).
            im.load()
            width, height = im.size
    except Exception as exc:  # PIL raises many types for a bad file
        return f"unreadable image {label}: {exc}"
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return (f"image {label} is {width}x{height} pixels: an aspect ratio over {MAX_ASPECT_RATIO}, "
                "which Qwen2-VL's processor refuses")
    return None


def image_file_problem(path: Path) -> str | None:
    """Why the image file at `path` cannot be a model input (missing, undecodable), or None."""
    if not path.is_file():
        return f"image file not found: {path}"
    return image_problem(path, str(path))


def check_image_file(path: Path, where: str, row: int, unit: str = "row") -> None:
    """The image exists and decodes, else a RowError naming file and row."""
    problem = image_file_problem(path)
    if problem:
        raise RowError(where, row, problem, unit)


def check_image_value(value: Any, where: str, row: int, field: str = "image") -> None:
    """Every image of a dataset row's image field decodes: an undecoded `datasets.Image` value
    ({'bytes', 'path'}), a path or a PIL image, or a list of them (errors name which: `images[1]`)."""
    items = image_items(value, field)
    if not items:
        raise RowError(where, row, _no_images(field))
    for name, item in items:
        if isinstance(item, Image.Image):
            continue
        data, path = (item.get("bytes"), item.get("path")) if isinstance(item, dict) else (None, item)
        if data is None and not path:
            raise RowError(where, row, f"field '{name}' is empty")
        problem = image_file_problem(Path(path)) if data is None else image_problem(io.BytesIO(data), "bytes")
        if problem:
            raise RowError(where, row, problem if name == field else f"{name}: {problem}")


def load_images(value: Any) -> list[Image.Image]:
    """The decoded RGB images of an image field (one image, or a list of them)."""
    return [load_image(item) for _, item in image_items(value, "")]


def load_image(value: Any) -> Image.Image:
    """A decoded RGB image from a PIL image, a path, or a {'bytes', 'path'} value."""
    if isinstance(value, dict):
        value = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
    image = value if isinstance(value, Image.Image) else Image.open(value)
    return image.convert("RGB") if image.mode != "RGB" else image

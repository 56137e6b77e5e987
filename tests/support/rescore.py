"""Helpers shared by tests/ and tests/e2e/ (see each test file)."""

from __future__ import annotations

import json
from pathlib import Path

# Four GeoQA items in R1-V's eval-log shape. Re-scored under `normalized`: items 1, 2 and 4 correct,
# item 3 has no parsable answer; the saved flags claim items 1 and 3 correct: items 2, 3 and 4 disagree.
# Under `r1v` (math-verify over the whole output) only item 4 is correct: item 1's parse picks the 60
# of the reasoning, items 2 and 3 parse to nothing; so 2 verdicts differ between the protocols.
GEOQA_LOG = {
    "accuracy": 50.0,
    "results": [
        {
            "question": {"image_path": "./a.png", "question": "angle CED?", "ground_truth": "140°"},
            "ground_truth": "140°",
            "model_output": "<think>angle A = 80, angle B = 60</think><answer>140</answer>",
            "extracted_answer": "140",
            "is_correct": True,
        },
        {
            "question": {"image_path": "./b.png", "question": "length of AB?", "ground_truth": "4√{3}"},
            "ground_truth": "4√{3}",
            "model_output": "<think>by Pythagoras</think><answer>4\\sqrt{3} cm</answer>",
            "extracted_answer": "4",
            "is_correct": False,
        },
        {
            "question": {"image_path": "./c.png", "question": "ratio?", "ground_truth": "\\frac{5}{2}"},
            "ground_truth": "\\frac{5}{2}",
            "model_output": "<think>not sure</think><answer></answer>",
            "extracted_answer": None,
            "is_correct": True,
        },
        {
            "question": {"image_path": "./d.png", "question": "height?", "ground_truth": "12米"},
            "ground_truth": "12米",
            "model_output": "The height is 12 m",  # no tags: whole-output parsing, bad format
            "extracted_answer": "12",
            "is_correct": False,
        },
    ],
}


def _write_log(tmp_path: Path) -> Path:
    path = tmp_path / "res@checkpoint-30.json"
    path.write_text(json.dumps(GEOQA_LOG, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def _write_jsonl(tmp_path: Path, records: list, name: str = "counting.jsonl") -> Path:
    path = tmp_path / name
    lines = ["" if record is None else json.dumps(record, ensure_ascii=False) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

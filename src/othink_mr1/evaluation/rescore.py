"""Re-score saved completions without a model.

Usage::

    python -m othink_mr1.evaluation.rescore --task geoqa [--scorer r1v|normalized] results.json [--out items.jsonl]

``--task`` is a task name (scored with the scorer its ``conf/task/<name>.yaml`` names, read from the checkout
that OTHINK_ROOT or this package's location gives) or a scorer name (``counting``, ``geometry``).

FILE is either JSONL (one record per line, blank lines ignored) or a JSON object with a ``results``
list, the shape R1-V's evaluation scripts write::

    {"accuracy": 52.3, "results": [{"question": {...} | "...", "ground_truth": ..., "model_output": ...,
                                    "extracted_answer": ..., "is_correct": true}, ...]}

Each record needs ``model_output`` and ``ground_truth``; ``question`` (a string, or a dict holding a
``question`` key), ``completion_tokens`` and ``protocol`` are optional. ``--scorer`` names the scoring
protocol of the re-score (``r1v``, R1-V's evaluation and the default, or ``normalized``; see
``othink_mr1.rewards.base``). The report also counts the items whose verdict differs between the
protocols, and compares saved correctness (the file's ``accuracy``, per-item ``is_correct``/``correct``)
with the re-score, which is how scorer changes are audited against old runs; a ``protocol`` the records
carry (this project's completions.jsonl do) is printed beside it.

The input file is only read. Per-item results are written only with ``--out``, and only to a path
that does not exist yet (never the input, never an earlier audit).

Input problems exit with status 2 and one line naming the file and the record; no traceback. This
module must not import torch/transformers: it is meant to start in well under a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from othink_mr1.evaluation.metrics import ItemResult, score_item, summarize
from othink_mr1.rewards.base import DEFAULT_PROTOCOL, PROTOCOLS
from othink_mr1.rewards.scorers import SCORERS, get_scorer
from othink_mr1.utils.checkout import conf_dir

__all__ = ["RescoreError", "load_records", "main", "scorer_for"]

REQUIRED_KEYS = ("model_output", "ground_truth")
# Per-item correctness flags found in existing logs (R1-V writes "is_correct").
_SAVED_FLAG_KEYS = ("is_correct", "correct")


class RescoreError(ValueError):
    """An input problem, reported as one line (``FILE: where: what``) and exit status 2."""


def task_dir() -> Path:
    """conf/task/ of the checkout (utils.checkout.conf_dir)."""
    return conf_dir() / "task"


def task_names() -> list[str]:
    """The tasks conf/task/ defines, sorted."""
    return sorted(path.stem for path in task_dir().glob("*.yaml"))


def scorer_for(name: str) -> str:
    """The scorer ``--task`` means: a task's (its conf/task/<name>.yaml's ``scorer:``, a plain YAML read, no
    Hydra) or a scorer name itself. A RescoreError listing the valid task and scorer names otherwise."""
    tasks = task_names()
    if name in tasks:
        import yaml  # deferred: only a task name needs it

        path = task_dir() / f"{name}.yaml"
        try:
            scorer = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("scorer")
        except (OSError, yaml.YAMLError, AttributeError) as exc:
            raise RescoreError(f"{path}: cannot read the task's scorer ({exc})") from None
        if scorer not in SCORERS:
            raise RescoreError(f"{path}: scorer {scorer!r} is not a scorer; valid scorers: {', '.join(sorted(SCORERS))}")
        return scorer
    if name in SCORERS:
        return name
    raise RescoreError(f"unknown task or scorer {name!r}; valid tasks: {', '.join(tasks) or f'none in {task_dir()}'}; "
                       f"valid scorers: {', '.join(sorted(SCORERS))}")


@dataclass
class _LoadedFile:
    records: list[dict[str, Any]]
    locations: list[str]  # human-readable position of each record, e.g. "line 3"
    saved_accuracy: Any = None  # the log's own "accuracy", if it has one


def _parse_jsonl(path: Path, text: str) -> _LoadedFile:
    records: list[dict[str, Any]] = []
    locations: list[str] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RescoreError(f"{path}: line {line_no}: not valid JSON ({exc.msg})") from None
        records.append(record)
        locations.append(f"line {line_no}")
    return _LoadedFile(records, locations)


def _read(path: str | Path) -> _LoadedFile:
    """Read FILE in either accepted shape, without validating the records yet."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RescoreError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise RescoreError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise RescoreError(f"{path}: cannot read ({exc.strerror or exc})") from None

    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # not one JSON document: read it as JSONL (which reports the bad line)

    if isinstance(whole, dict) and "results" in whole:
        results = whole["results"]
        if not isinstance(results, list):
            raise RescoreError(f"{path}: 'results' is not a list")
        return _LoadedFile(
            records=results,
            locations=[f"record {i} of 'results'" for i in range(1, len(results) + 1)],
            saved_accuracy=whole.get("accuracy"),
        )
    if isinstance(whole, list):
        return _LoadedFile(records=whole, locations=[f"record {i}" for i in range(1, len(whole) + 1)])
    if isinstance(whole, dict) and sum(1 for line in text.splitlines() if line.strip()) > 1:
        # A pretty-printed object that is not an eval log: JSONL parsing would only report "line 1".
        raise RescoreError(f"{path}: JSON object has no 'results' list")
    return _parse_jsonl(path, text)


def _validate(path: str | Path, loaded: _LoadedFile) -> None:
    if not loaded.records:
        raise RescoreError(f"{path}: no records")
    for record, where in zip(loaded.records, loaded.locations, strict=True):
        if not isinstance(record, dict):
            raise RescoreError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
        for key in REQUIRED_KEYS:
            if key not in record:
                raise RescoreError(f"{path}: {where}: missing key '{key}'")
        if not isinstance(record["model_output"], str):
            raise RescoreError(f"{path}: {where}: 'model_output' is not a string")


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file or of an R1-V log's ``results`` list, checked for required keys.

    Raises :class:`RescoreError` (a ``ValueError``) naming the file and the 1-based line/record.
    """
    loaded = _read(path)
    _validate(path, loaded)
    return loaded.records


def _question_text(record: dict[str, Any]) -> str | None:
    # R1-V stores the whole prompt record under "question"; its text is that record's "question".
    question = record.get("question")
    if isinstance(question, dict):
        question = question.get("question")
    return None if question is None else str(question)


def _saved_flag(record: dict[str, Any]) -> bool | None:
    for key in _SAVED_FLAG_KEYS:
        value = record.get(key)
        if isinstance(value, (bool, int, float)):
            return bool(value)
    return None


def _saved_protocols(records: list[dict[str, Any]]) -> str | None:
    """The ``protocol`` the records carry, e.g. ``normalized`` or ``normalized (3 of 4 records)``."""
    found = [record["protocol"] for record in records if isinstance(record.get("protocol"), str)]
    if not found:
        return None
    names = ", ".join(sorted(set(found)))
    return names if len(found) == len(records) else f"{names} ({len(found)} of {len(records)} records)"


def _pct(fraction: float) -> str:
    return f"{100.0 * fraction:.2f}%"


def _build_parser() -> argparse.ArgumentParser:
    tasks = ", ".join(sorted(set(task_names()) | set(SCORERS)))
    parser = argparse.ArgumentParser(
        prog="python -m othink_mr1.evaluation.rescore",
        description="Re-score saved model completions (JSONL or an R1-V eval log) without a model.",
    )
    parser.add_argument("--task", required=True, help=f"task or scorer name ({tasks})")
    parser.add_argument("--scorer", choices=PROTOCOLS, default=DEFAULT_PROTOCOL, metavar="PROTOCOL",
                        help=f"scoring protocol: {', '.join(PROTOCOLS)} (default: {DEFAULT_PROTOCOL}, R1-V's evaluation)")
    parser.add_argument("file", type=Path, help="JSONL records or a JSON object with a 'results' list")
    parser.add_argument("--out", type=Path, default=None,
                        help="write per-item results as JSONL to this new file (an existing file is refused)")
    return parser


def _rescore(task: str, path: Path, out: Path | None, protocol: str = DEFAULT_PROTOCOL) -> None:
    scorer_name = scorer_for(task)
    try:
        scorer = get_scorer(scorer_name, protocol)
    except ValueError as exc:  # an unknown protocol
        raise RescoreError(str(exc)) from None
    others = {name: get_scorer(scorer_name, name) for name in PROTOCOLS if name != protocol}
    if out is not None and out.exists():
        # Never overwrite what the user has (it may be the input itself, or an earlier audit).
        raise RescoreError(f"{out}: already exists; choose another --out path")

    loaded = _read(path)
    _validate(path, loaded)

    items: list[ItemResult] = []
    disagreements = 0
    flagged = 0
    differing = dict.fromkeys(others, 0)  # other protocol -> items whose verdict differs from this one
    for record, where in zip(loaded.records, loaded.locations, strict=True):
        tokens = record.get("completion_tokens")
        try:
            item = score_item(
                scorer,
                record["model_output"],
                record["ground_truth"],
                question=_question_text(record),
                completion_tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
            )
            for name, other in others.items():
                differing[name] += other.score(record["model_output"], record["ground_truth"]).correct != item.correct
        except ValueError as exc:  # e.g. a counting ground truth that is not an integer
            raise RescoreError(f"{path}: {where}: {exc}") from None
        items.append(item)
        saved = _saved_flag(record)
        if saved is not None:
            flagged += 1
            disagreements += saved != item.correct

    summary = summarize(items)
    lines = [
        f"file: {path}",
        f"task: {task} (scorer: {scorer.name})",
        f"protocol: {protocol}",
    ]
    saved_protocol = _saved_protocols(loaded.records)
    if saved_protocol is not None:
        lines.append(f"saved protocol: {saved_protocol}")
    lines += [
        f"items: {summary['n']}",
        f"correct: {summary['correct']}",
        f"accuracy: {_pct(summary['accuracy'])}",
        f"format rate: {_pct(summary['format_rate'])}",
        f"parse failures: {round(summary['parse_failure_rate'] * summary['n'])} "
        f"({_pct(summary['parse_failure_rate'])})",
    ]
    if isinstance(loaded.saved_accuracy, (int, float)) and not isinstance(loaded.saved_accuracy, bool):
        # Printed as stored: R1-V writes a percentage, other tools a fraction; we do not guess which.
        lines.append(f"saved accuracy (as stored): {loaded.saved_accuracy}")
    for name, count in differing.items():
        lines.append(f"verdicts that differ between {protocol} and {name}: {count} of {summary['n']}")
    if flagged:
        lines.append(f"disagreements with saved per-item correctness: {disagreements} of {flagged}")

    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            # "x": created here or refused, even if the file appeared since the check above.
            with out.open("x", encoding="utf-8") as handle:
                for item in items:
                    handle.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
        except FileExistsError:
            raise RescoreError(f"{out}: already exists; choose another --out path") from None
        except OSError as exc:
            raise RescoreError(f"{out}: cannot write ({exc.strerror or exc})") from None
        lines.append(f"wrote: {out}")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input or usage)."""
    args = _build_parser().parse_args(argv)  # argparse itself exits 2 on usage errors
    try:
        _rescore(args.task, args.file, args.out, args.scorer)
    except RescoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

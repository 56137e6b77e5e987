"""results.json, a finished run's record: the one module that knows its format.

The runner builds a Results and writes it with `write`, last (the file's presence marks the run finished:
utils/run_dir.FINISHED_MARKER); the report (report/runs.py) and the sweeper's tuning phase
(hydra_plugins/othink_mr1_sweeper) read it with `read`. Nothing else parses the file. This module sits below
all three and imports none of them (nor torch).

Keys, in the order they are written (JSON, indent 2, UTF-8 text as is):

    run_name sweep cell mode task method kl model seed tag   what the run is (naming.run_identity)
    ckpt             mode=eval: the checkpoint or model folder scored (null: model.*)
    eval_tasks       the eval tasks, in order
    eval_split       the split they were scored on: test, or validation (tuning)
    prompts          eval task -> {prompt, eval_prompt}
    before, after    eval task -> summary (n, correct, accuracy, protocol, format_rate, ...); before: the
                     row zero (null when not measured or not a training run), after: the final scores
    curve            the training curve: optimizer step (as text) -> eval task -> metrics (evaluation/curve.py)
    curve_settings   how the curve was measured (steps, items per task, samples per item, seed, temperature)
    train            steps, samples, seconds, skipped_steps, resumed_from, the budget and the method's own
                     facts (null for an evaluation)
    data             on_bad_row, skipped_rows (split -> count), bad_rows_file
    seconds          the whole job's wall time
    hardware         accelerator, devices, gpu, peak_memory_gib
    processing       what preprocessed the images
    reply            how a reply ends (ends_with, how, stop_tokens)

Files written by earlier commits lack the newer keys: every key but run_name, mode, model and after (which
every version wrote) reads as null when absent, and the accessors give what such a run did: scored on the
test split (DEFAULT_SPLIT), under the normalising scorer where a summary names no protocol
(LEGACY_PROTOCOL). Keys this module does not know are kept (Results.extra) and written back after the
known ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .utils.errors import ConfigError
from .utils.run_dir import FINISHED_MARKER, write_json

FILE = FINISHED_MARKER  # "results.json", in the run directory
# The split a run was scored on when its file names none: runs from before the validation splits existed
# were all scored on test.
DEFAULT_SPLIT = "test"
# Summaries written before the evaluation recorded a protocol have no "protocol" key: they were all scored
# with the normalising scorer, so a missing key reads as "normalized" (never as the paper's r1v).
LEGACY_PROTOCOL = "normalized"
# The keys every version of the file has held; the rest may be missing from older runs.
REQUIRED = ("run_name", "mode", "model", "after")
# naming.run_identity's keys: what a run is, in results.json, error.json, the wandb config and the report.
IDENTITY = ("run_name", "sweep", "cell", "mode", "task", "method", "kl", "model", "seed", "tag")


class ResultsError(ConfigError):
    """A results.json that cannot be read (not JSON, not an object, a required key missing); the message
    names the file."""


def task_protocol(summary: dict[str, Any] | None) -> str:
    """The scoring protocol of one per-task summary (results.json["after"][task]); legacy: normalized."""
    return (summary or {}).get("protocol") or LEGACY_PROTOCOL


@dataclass(kw_only=True)
class Results:
    """One run's results.json; the fields in the file's key order."""

    # What the run is (naming.run_identity, in its order).
    run_name: str
    sweep: str | None = None
    cell: str | None = None
    mode: str  # train | eval
    task: str | None = None  # the trained task (None for an evaluation)
    method: str | None = None  # sft | grpo | grpo_d | grpo_kl-<schedule>
    kl: str | None = None
    model: str
    seed: int | None = None
    tag: str | None = None
    # What was scored, how, and the scores.
    ckpt: str | None = None
    eval_tasks: list[str] | None = None
    eval_split: str | None = None
    prompts: dict[str, dict[str, str]] | None = None
    before: dict[str, dict[str, Any]] | None = None
    after: dict[str, dict[str, Any]]
    curve: dict[str, dict[str, dict[str, Any]]] | None = None
    curve_settings: dict[str, Any] | None = None
    # How it ran.
    train: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    seconds: float | None = None
    hardware: dict[str, Any] | None = None
    processing: dict[str, Any] | None = None
    reply: dict[str, Any] | None = None
    # Keys of the file this module does not know, kept as read (written after the known ones).
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------------------ the file
    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object: every field in order (nulls included), then `extra`."""
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}, **self.extra}

    @classmethod
    def from_dict(cls, payload: dict[str, Any], source: str | Path = "results.json") -> Results:
        """A parsed results.json; ResultsError naming `source` when a required key is missing or a summary
        has no accuracy."""
        if not isinstance(payload, dict):
            raise ResultsError(f"{source}: not a results.json (a JSON object expected, got {type(payload).__name__})")
        missing = [k for k in REQUIRED if payload.get(k) is None]
        if missing:
            raise ResultsError(f"{source}: not a finished run's results.json: no {', '.join(missing)} "
                               f"(every results.json holds {', '.join(REQUIRED)})")
        if not isinstance(payload["after"], dict):
            raise ResultsError(f"{source}: 'after' is not an object of per-task summaries")
        for task, summary in payload["after"].items():
            if not isinstance(summary, dict) or "accuracy" not in summary:
                raise ResultsError(f"{source}: after.{task} has no accuracy")
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in payload.items() if k in known},
                   extra={k: v for k, v in payload.items() if k not in known})

    # --------------------------------------------------------------------------- accessors
    @property
    def identity(self) -> dict[str, Any]:
        """What the run is: naming.run_identity's keys and values."""
        return {k: getattr(self, k) for k in IDENTITY}

    @property
    def split(self) -> str:
        """The split the scores are on; files without eval_split: test."""
        return self.eval_split or DEFAULT_SPLIT

    @property
    def accuracy(self) -> dict[str, float]:
        """Eval task -> final accuracy in [0, 1]."""
        return {task: summary["accuracy"] for task, summary in self.after.items()}

    @property
    def protocols(self) -> dict[str, str]:
        """Eval task -> the protocol its final accuracy was scored under (legacy summaries: normalized)."""
        return {task: task_protocol(summary) for task, summary in self.after.items()}

    @property
    def train_seconds(self) -> float | None:
        """Seconds of training (None for an evaluation, or a file without them)."""
        return (self.train or {}).get("seconds")

    @property
    def devices(self) -> int | None:
        """Processes over all nodes (GPUs on a GPU run); None for files from before `hardware`."""
        return (self.hardware or {}).get("devices")


def path(run_dir: Path) -> Path:
    """Where a run directory keeps its results.json."""
    return Path(run_dir) / FILE


def write(run_dir: Path, results: Results) -> Path:
    """<run_dir>/results.json, written via a temporary file and a rename, so a crash never leaves a
    half-written (and falsely final) file; returns its path."""
    target = path(run_dir)
    write_json(target, results.to_dict())
    return target


def read(where: Path) -> Results:
    """A results.json (the file, or the run directory holding it). ResultsError naming the file when it is
    not JSON or lacks what every results.json holds; keys older files lack read as null."""
    where = Path(where)
    target = path(where) if where.is_dir() else where
    try:
        payload = json.loads(target.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"{target}: cannot read it ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:  # JSONDecodeError, and text that is not UTF-8
        raise ResultsError(f"{target}: not valid JSON ({exc})") from None
    return Results.from_dict(payload, target)

"""Run directories: never overwrite a finished run, keep earlier attempts, record provenance."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .errors import RunExistsError
from .machine import machine_info

# A run is finished once this file exists: it is written last.
FINISHED_MARKER = "results.json"
# A failed sweep cell's record (run.py); the report shows the cell as failed.
ERROR_RECORD = "error.json"
# Files a job may have opened before the runner got control (Hydra's job log, appended to).
PRESERVED_IN_PLACE = {"run.log"}
PACKAGES = ("torch", "transformers", "pytorch-lightning", "hydra-core", "omegaconf", "datasets", "tokenizers",
            "wandb", "math-verify", "pillow", "numpy", "othink-mr1")


def claim_run_dir(run_dir: Path, keep: bool = False) -> Path | None:
    """Make `run_dir` ready for a new attempt (or, with keep=True, for resuming the last one).

    A finished run raises RunExistsError before anything is touched. Files left by an unfinished
    attempt are moved into attempts/<timestamp>/ (returned), so nothing the user has is lost.
    """
    run_dir = Path(run_dir)
    marker = run_dir / FINISHED_MARKER
    if marker.exists():
        raise RunExistsError(
            f"{run_dir} already holds a finished run ({FINISHED_MARKER} written "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(marker.stat().st_mtime))}); refusing to overwrite it. "
            "Pick another run name with tag=<something> or seed=<n>, or move that folder away."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    leftovers = [p for p in run_dir.iterdir() if p.name not in PRESERVED_IN_PLACE and p.name != "attempts"]
    if keep:
        # Resuming keeps the attempt's files; only the error record of a failed attempt moves aside,
        # so the run does not read as failed while it goes on (and the record is not lost).
        leftovers = [p for p in leftovers if p.name == ERROR_RECORD]
    if not leftovers:
        return None
    target = run_dir / "attempts" / time.strftime("%Y%m%d-%H%M%S")
    suffix = 0
    while target.exists():
        suffix += 1
        target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
    target.mkdir(parents=True)
    for path in leftovers:
        path.rename(target / path.name)
    return target


def git_state(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_run_record(run_dir: Path, cfg: Any, root: Path, overrides: list[str] | None = None) -> None:
    """config.yaml (resolved), meta.json (git SHA, versions, command) and prompts.json."""
    run_dir = Path(run_dir)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    meta = {
        "run_name": cfg.run_name,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        "overrides": overrides or [],
        "git": git_state(root),
        "versions": package_versions(),
        "host": platform.node(),
        "machine": machine_info(),
    }
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=2))


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {'a.b.c': leaf}."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


# Settings a resumed attempt may change: where files go, how it reports, how many CPU threads it uses.
RESUMABLE_CHANGES = ("paths.", "logger.", "resume", "trainer.enable_progress_bar", "trainer.num_threads")


def config_differences(run_dir: Path, cfg: Any) -> list[str]:
    """Keys whose value differs from the run's saved config.yaml, except RESUMABLE_CHANGES."""
    import yaml

    saved = flatten(yaml.safe_load((Path(run_dir) / "config.yaml").read_text()))
    current = flatten(OmegaConf.to_container(cfg, resolve=True))
    keys = sorted(k for k in set(saved) | set(current)
                  if not k.startswith(RESUMABLE_CHANGES) and saved.get(k) != current.get(k))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys]


def record_resume(run_dir: Path, checkpoint: Path, root: Path, overrides: list[str] | None) -> int:
    """Append this resume to resumes.jsonl (config.yaml and meta.json stay as the run began);
    returns how many times the run has now been resumed."""
    log_file = Path(run_dir) / "resumes.jsonl"
    entry = {"resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": str(checkpoint), "argv": sys.argv,
             "overrides": overrides or [], "git": git_state(root)}
    with log_file.open("a") as fh:
        fh.write(json.dumps(entry) + "\n")
    return sum(1 for _ in log_file.open())



def record_failure(run_dir: Path, exc: BaseException, overrides: list[str] | None,
                   identity: dict[str, Any] | None = None) -> Path:
    """Write <run_dir>/error.json for a failed sweep cell (the report shows the cell as failed). A
    re-launch moves it to attempts/ with the rest of the unfinished attempt, so nothing is lost."""
    import traceback

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # `identity` (runner.run_identity) lets the report place the failed cell in its tables.
    record = {**(identity or {}), "status": "failed", "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "error": f"{type(exc).__name__}: {exc}",
              "overrides": overrides or [],
              "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}
    path = run_dir / ERROR_RECORD
    write_json(path, record)
    return path


def write_json(path: Path, payload: Any) -> None:
    """Write via a temporary file, so a crash never leaves a half-written (or falsely final) file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    tmp.replace(path)

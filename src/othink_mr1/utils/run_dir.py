"""Run directories: one run at a time in a folder (run.lock), never overwrite a finished run, keep earlier
attempts, record provenance, and say how a run that did not finish ended (error.json)."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .errors import RunExistsError, RunLockedError
from .machine import machine_info

log = logging.getLogger(__name__)

# A run is finished once this file exists: it is written last.
FINISHED_MARKER = "results.json"
# How a run that did not finish ended: {"status": "failed" | "terminated", ...}; the report shows it.
ERROR_RECORD = "error.json"
# Held (flock) by the process running in the folder, for the job's life; it names that process.
LOCK_FILE = "run.lock"
# Files a job may have opened before the runner got control (Hydra's job log, appended to), and the lock.
PRESERVED_IN_PLACE = {"run.log", LOCK_FILE}
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


class RunLock:
    """An exclusive lock on a run folder: an flock on <run_dir>/run.lock, whose text names the holder (host,
    pid, start, command) for the message a second run gets.

    flock rather than a lock file's mere existence: the kernel drops it when the holder dies however it
    dies (SIGKILL, OOM, a node reboot on a shared filesystem), so a dead run never blocks its folder, and
    the text it left says whose lock was taken over. Works across processes, joblib workers and SLURM tasks
    on one filesystem (NFS and Lustre mounts with locking on support flock too)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None
        self.previous: dict[str, Any] | None = None  # the holder a stale lock named, when one was taken over

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{self.path.parent} is in use by another run ({describe_holder(holder)}); nothing was changed. "
                    "Wait for it to end, or give this run another name (tag=<something> or seed=<n>).") from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise RunLockedError(f"{self.path}: this filesystem does not support file locks ({exc}); set "
                                         "paths.output_dir to a folder on one that does") from None
                raise
            # A holder that released between our open and our flock unlinked the file we opened: lock the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        previous = _read_holder(fd)
        if previous:
            self.previous = previous
            log.warning("%s: the run that held this folder is gone (%s); taking its lock over", self.path,
                        describe_holder(previous))
        holder = {"host": platform.node(), "pid": os.getpid(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        # Unlinked while still held: a run that opens the path next creates a fresh file, and one that opened
        # this file already sees the inode change after its flock (acquire's check) and retries.
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        text = os.pread(fd, 65536, 0).decode()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return {"unreadable": True}


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder or holder.get("unreadable"):
        return "holder unknown"
    command = " ".join(str(a) for a in holder.get("argv") or [])
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}"
            + (f": {command}" if command else ""))


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
                   identity: dict[str, Any] | None = None, **details: Any) -> Path:
    """Write <run_dir>/error.json for a run or sweep cell that did not finish: status "failed" (an exception)
    or, with `status="terminated"` in `details`, stopped by a signal (signal, step, checkpoint, how to
    resume). The report shows either. A re-launch moves it to attempts/ with the rest of the unfinished
    attempt, so nothing is lost."""
    import traceback

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # `identity` (naming.run_identity) lets the report place the run in its tables.
    record = {**(identity or {}), "status": "failed", "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "error": f"{type(exc).__name__}: {exc}", "overrides": overrides or [], **details}
    if record["status"] == "failed":
        record["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    path = run_dir / ERROR_RECORD
    write_json(path, record)
    return path


def write_json(path: Path, payload: Any) -> None:
    """Write via a temporary file, so a crash never leaves a half-written (or falsely final) file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    tmp.replace(path)

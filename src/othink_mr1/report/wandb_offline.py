"""Read wandb offline runs (`<run_dir>/wandb/offline-run-*/run-*.wandb`) without the network.

A .wandb file is wandb's transaction log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then
32 KiB blocks of records, each with a 7-byte header (CRC-32 of type + data, length, type) and a
protobuf `Record`; a record larger than what is left of a block is split into FIRST/MIDDLE/LAST parts.
We read the records the report needs: the run (name, group, job type, tags, initial config), config
updates, history rows, summary updates and the exit code.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """A .wandb file that is not wandb's format or is damaged beyond its last complete record."""


def iter_record_bytes(path: Path) -> Iterator[bytes]:
    """Each complete record's protobuf bytes, in order. A truncated tail (a run killed mid-write) ends
    the iteration quietly; a corrupt record in the middle raises WandbFileError naming the offset."""
    data = Path(path).read_bytes()
    if len(data) < HEADER.size:
        raise WandbFileError(f"{path}: too short for a wandb file ({len(data)} bytes)")
    ident, magic, version = HEADER.unpack_from(data, 0)
    if ident != IDENT or magic != MAGIC or version != VERSION:
        raise WandbFileError(f"{path}: not a wandb transaction log (header {data[:HEADER.size]!r})")
    pos, parts = HEADER.size, b""
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER.size:  # block trailer: zero padding
            pos += left
            continue
        if pos + RECORD_HEADER.size > len(data):
            return
        checksum, length, kind = RECORD_HEADER.unpack_from(data, pos)
        start = pos + RECORD_HEADER.size
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += left
            continue
        if start + length > len(data):
            return
        chunk = data[start:start + length]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != checksum:
            raise WandbFileError(f"{path}: checksum mismatch in the record at byte {pos}")
        pos = start + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = chunk
        elif kind == MIDDLE:
            parts += chunk
        elif kind == LAST:
            yield parts + chunk
            parts = b""
        else:
            raise WandbFileError(f"{path}: unknown record type {kind} at byte {pos}")


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _value(item: Any) -> Any:
    return json.loads(item.value_json) if item.value_json else None


@dataclass
class OfflineRun:
    """What one wandb run logged, merged over every .wandb file of that run id (resumed attempts)."""

    run_id: str
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    files: list[Path] = field(default_factory=list)


def read_offline_run(path: Path, into: OfflineRun | None = None) -> OfflineRun:
    """One .wandb file, optionally merged into the run an earlier attempt of it started."""
    from wandb.proto import wandb_internal_pb2 as pb

    run = into
    for raw in iter_record_bytes(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = run or OfflineRun(run_id=r.run_id)
            run.name, run.group, run.job_type = r.display_name or run.name, r.run_group or run.group, r.job_type or run.job_type
            run.tags = list(r.tags) or run.tags
            run.config.update({_key(i): _value(i) for i in r.config.update})
        elif run is None:
            continue
        elif kind == "config":
            run.config.update({_key(i): _value(i) for i in record.config.update})
        elif kind == "summary":
            run.summary.update({_key(i): _value(i) for i in record.summary.update})
        elif kind == "history":
            run.history.append({_key(i): _value(i) for i in record.history.item})
        elif kind == "exit":
            run.exit_code = int(record.exit.exit_code)
    if run is None:
        raise WandbFileError(f"{path}: no run record")
    run.config.pop("_wandb", None)
    run.files.append(Path(path))
    return run


def read_offline_runs(folder: Path) -> list[OfflineRun]:
    """Every wandb offline run under `folder` (any depth), attempts of one run id merged in time order."""
    runs: dict[str, OfflineRun] = {}
    # offline-run-<YYYYmmdd_HHMMSS>-<id>: sorting by the folder name orders a run's attempts in time.
    for path in sorted(Path(folder).rglob("run-*.wandb"), key=lambda p: p.parent.name):
        run_id = path.stem[len("run-"):]
        runs[run_id] = read_offline_run(path, runs.get(run_id))
    return list(runs.values())

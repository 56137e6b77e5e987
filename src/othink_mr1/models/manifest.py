"""manifest.json of a built model folder (tiny_base): what it was built from, where, and each file's sha256.

The one owner of that file: jobs.tiny_base writes it after a build, the factory checks a folder against it
before loading, and tests/models/test_shipped_tiny_base.py checks the folder the project ships. Files not
listed (README.md, the folder's model card) are not checked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..utils.errors import ModelError
from ..utils.run_dir import flatten

MANIFEST = "manifest.json"
FORMAT = 1
UNHASHED = (MANIFEST, "README.md")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """{name: {sha256, bytes}} of every file in `folder` but UNHASHED."""
    return {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name not in UNHASHED}


def write_manifest(folder: Path, build_config: dict[str, Any], built_at: dict[str, Any]) -> dict[str, Any]:
    """Write `folder`/manifest.json: the build's config, where and when it was built, each file's hash."""
    manifest = {"format": FORMAT, "build_config": build_config, "built_at": built_at, "files": file_table(folder)}
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ModelError(f"{folder}: no {MANIFEST}; a tiny_base folder is written by `python -m othink_mr1.jobs.tiny_base`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise ModelError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT} with a 'files' table")
    return manifest


def file_problems(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Each listed file that is missing or whose sha256 differs from the manifest's."""
    problems = []
    for name, entry in manifest["files"].items():
        path = Path(folder) / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256(path) != entry["sha256"]:
            problems.append(f"{name} has sha256 {sha256(path)[:12]}..., the manifest says {entry['sha256'][:12]}...")
    return problems


def config_differences(built: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """'key: built with A, this config has B' for each leaf where the two build configs differ."""
    a, b = flatten(built), flatten(wanted)
    return [f"{key}: built with {a.get(key)!r}, this config has {b.get(key)!r}"
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def check_folder(folder: Path, wanted: dict[str, Any], rebuild_hint: str) -> dict[str, Any]:
    """The folder's manifest, after checking its files' hashes and that it was built from `wanted`;
    a ModelError naming the folder, the files or the differing keys otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"tiny_base folder {folder} does not exist; {rebuild_hint}")
    manifest = read_manifest(folder)
    problems = file_problems(folder, manifest)
    if problems:
        raise ModelError(f"{folder} does not match its {MANIFEST}: " + "; ".join(problems)
                         + f" (restore the folder from git, or {rebuild_hint})")
    differences = config_differences(manifest.get("build_config", {}), wanted)
    if differences:
        raise ModelError(f"{folder} was built from another config (model.*): " + "; ".join(differences)
                         + f"; {rebuild_hint}")
    return manifest

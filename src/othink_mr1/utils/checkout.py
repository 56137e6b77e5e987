"""Where the checkout's files are, for code that reads them outside a Hydra app: conf/ (the rescore CLI's task
names, the tiny_base build's acceptance tasks) and the tiny_base folder the project ships. Pure Python: the
rescore CLI imports it and must start fast."""

from __future__ import annotations

import os
from pathlib import Path


def checkout_root() -> Path:
    """OTHINK_ROOT (run.py and the tests set it), else the checkout holding this package. Read at each call,
    so a changed OTHINK_ROOT is seen."""
    return Path(os.environ.get("OTHINK_ROOT") or Path(__file__).resolve().parents[3])


def conf_dir() -> Path:
    return checkout_root() / "conf"


def shipped_tiny_base() -> Path:
    """The tiny_base folder committed with the project (its manifest.json says what built it, and where)."""
    return checkout_root() / "models" / "tiny_base"

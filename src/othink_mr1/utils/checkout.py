"""Where the checkout's conf/ is, for code that reads it outside a Hydra app (the rescore CLI's task names,
the tiny_base build's acceptance tasks). Pure Python: the rescore CLI imports it and must start fast."""

from __future__ import annotations

import os
from pathlib import Path


def conf_dir() -> Path:
    """conf/ of the checkout: OTHINK_ROOT's (run.py and the tests set it), else that of the checkout holding
    this package. Read at each call, so a changed OTHINK_ROOT is seen."""
    return Path(os.environ.get("OTHINK_ROOT") or Path(__file__).resolve().parents[3]) / "conf"

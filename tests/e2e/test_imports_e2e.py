"""The report's modules import no torch, checked in a fresh interpreter (the room layering itself:
tests/test_imports.py)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "src" / "othink_mr1"


NAME = PACKAGE.name


def test_report_modules_import_no_torch():
    """report/ reads run folders and writes tables on machines without the ML stack: importing any of its
    modules must not load torch (the CLI's run is checked in test_report_gains)."""
    modules = [f"{NAME}.report.{p.stem}" for p in sorted((PACKAGE / "report").glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'torch' not in sys.modules, name\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

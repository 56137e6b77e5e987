"""The rescore CLI as a subprocess: its entry point, no heavy frameworks imported, errors without a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.rescore import _read_jsonl, _write_jsonl, _write_log


def test_subprocess_entry_point(tmp_path: Path) -> None:
    log = _write_log(tmp_path)
    out = tmp_path / "items.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "othink_mr1.evaluation.rescore", "--task", "geoqa", str(log), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "accuracy: 25.00%" in proc.stdout  # r1v, the default protocol
    assert "correct: 1" in proc.stdout
    assert "verdicts that differ between r1v and normalized: 2 of 4" in proc.stdout
    assert len(_read_jsonl(out)) == 4


def test_cli_imports_no_heavy_frameworks() -> None:
    # The CLI must start fast: importing it (and scoring with it) must not pull in the ML stack.
    code = (
        "import sys\n"
        "from othink_mr1.evaluation import rescore\n"
        "from othink_mr1.rewards.scorers import get_scorer\n"
        "assert rescore.scorer_for('geoqa') == 'geometry'\n"
        "get_scorer('geometry').score('<answer>1</answer>', '1')\n"
        "heavy = [m for m in ('torch', 'transformers', 'lightning', 'datasets', 'hydra') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_error_subprocess_has_no_traceback(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path, [{"model_output": "x"}])
    proc = subprocess.run(
        [sys.executable, "-m", "othink_mr1.evaluation.rescore", "--task", "geoqa", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {path}: line 1: missing key 'ground_truth'"
    assert proc.stdout == ""

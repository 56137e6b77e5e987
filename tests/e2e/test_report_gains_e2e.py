"""The report CLI never imports torch (a fresh interpreter)."""

from __future__ import annotations

from support.report_gains import write_grid


def test_the_report_cli_never_imports_torch(tmp_path):
    """A lightweight tool: reading run directories and writing every table loads no torch."""
    import subprocess
    import sys

    grid = write_grid(tmp_path / "grid")
    code = ("import sys; from othink_mr1.report.__main__ import main; "
            f"rc = main([{str(grid)!r}, '--paper', '--no-figures', '--out', {str(tmp_path / 'out')!r}]); "
            "print('torch loaded' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("no torch")

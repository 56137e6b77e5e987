"""Method descriptors and run names load no torch and nothing above utils, checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

from othink_mr1.methods.registry import method_names


def test_descriptors_and_run_names_load_no_torch_and_nothing_above_utils():
    """The registry finds descriptors by name, and run naming (which the torch-free report reads) asks
    them for tags: what they import at module level must stay below methods/ and torch-free."""
    code = ("import sys; from othink_mr1.methods.registry import find_method, method_names, method_tag; "
            "[(find_method(n), method_tag(n, 'grpo_d')) for n in method_names()]; "
            "import json; print(json.dumps(sorted(m for m in sys.modules if m.startswith('othink_mr1.') or m == 'torch')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout)
    assert "torch" not in loaded
    low_rooms = ("othink_mr1.config", "othink_mr1.rewards", "othink_mr1.utils", "othink_mr1.data")
    descriptors = {"othink_mr1.methods", "othink_mr1.methods.method", "othink_mr1.methods.registry"} | {
        f"othink_mr1.methods.{n}_method" for n in method_names()}
    above = [m for m in loaded if not m.startswith(low_rooms) and m not in descriptors]
    assert not above, above

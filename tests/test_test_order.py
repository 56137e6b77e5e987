"""The order make test's workers take files in (tests/conftest.py, HEAVIEST_FIRST) names real files, and the
unit that builds the session's smoke grid once holds every file that uses it: a renamed or new user would
otherwise build the grid on both workers, or drop out of the heaviest-first order, with nothing failing."""

from __future__ import annotations

import re

from conftest import HEAVIEST_FIRST, ROOT, SMOKE_GRID_FILES, SMOKE_GRID_UNIT, _weight


def test_the_heaviest_files_and_the_smoke_grid_unit_name_real_files():
    for path in (*SMOKE_GRID_FILES, *HEAVIEST_FIRST[1:]):
        assert (ROOT / path).is_file(), path
    assert HEAVIEST_FIRST[0] == SMOKE_GRID_UNIT
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                   if re.search(r"\bsmoke_grid\b", p.read_text()))
    assert users == sorted(SMOKE_GRID_FILES)


def test_a_worker_takes_the_listed_files_in_order_then_other_e2e_files_then_the_fast_ones():
    queue = ["tests/test_config.py", "tests/e2e/test_cli_e2e.py", "tests/e2e/test_models_e2e.py", SMOKE_GRID_UNIT,
             "tests/models/test_prefix_sharing.py", "tests/e2e/test_presets_e2e.py"]
    assert sorted(queue, key=_weight) == [SMOKE_GRID_UNIT, "tests/e2e/test_models_e2e.py",
                                          "tests/e2e/test_presets_e2e.py", "tests/e2e/test_cli_e2e.py",
                                          "tests/test_config.py", "tests/models/test_prefix_sharing.py"]

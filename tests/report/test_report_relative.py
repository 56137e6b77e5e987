"""The relative-improvement code, fed the paper's numbers, gives the percentages the paper states."""

from __future__ import annotations

import math

import pytest

from othink_mr1.report.paper import CROSS_TASK_2B, STATED_RELATIVE, TABLE1
from othink_mr1.report.relative import format_relative, relative_change


def _accuracy(method: str, where: object) -> float:
    if isinstance(where, tuple):  # (train task, eval task): the cross-task values
        return CROSS_TASK_2B[where][method]
    return TABLE1["qwen2_vl_2b_instruct"][method][where]


@pytest.mark.parametrize(("comparison", "where"), list(STATED_RELATIVE))
def test_paper_relative_improvements_are_reproduced(comparison, where):
    method, baseline = comparison.split(" vs ")
    change = relative_change(_accuracy(method, where), _accuracy(baseline, where))
    assert round(100 * change, 2) == pytest.approx(STATED_RELATIVE[(comparison, where)], abs=1e-9)


def test_the_four_headline_numbers_print_as_the_paper_prints_them():
    t = TABLE1["qwen2_vl_2b_instruct"]
    printed = [format_relative(relative_change(t["grpo_d"][task], t[base][task]))
               for base in ("grpo", "sft") for task in ("counting", "geometry")]
    assert printed == ["+18.60%", "+13.59%", "+11.68%", "+5.72%"]


def test_an_undefined_baseline_is_not_a_number():
    assert math.isnan(relative_change(3.0, 0.0))
    assert math.isnan(relative_change(3.0, None))
    assert format_relative(relative_change(3.0, 0.0)) == "n/a"
    assert format_relative(relative_change(1.0, 4.0)) == "-75.00%"

"""Each scorer says which ground truths it can judge answers against (`check_ground_truth`), by the rule it
scores with: counting an integer, geometry a value math-verify reads. The splits call it when they load
(tests/data/test_ground_truth_rows.py); here the rule itself, and that R1-V's published test files pass it."""

from __future__ import annotations

import json

import math_verify
import pytest
from conftest import R1V_EVAL

from othink_mr1.rewards.base import PROTOCOLS
from othink_mr1.rewards.scorers import SCORERS, get_scorer


def test_every_scorer_under_every_protocol_states_its_ground_truth_rule():
    for name, by_protocol in SCORERS.items():
        for protocol in by_protocol:
            scorer = get_scorer(name, protocol)
            assert callable(scorer.check_ground_truth), (name, protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("value", [3, "3", " 7 ", "0", "12"])
def test_counting_takes_an_integer(protocol, value):
    assert get_scorer("counting", protocol).check_ground_truth(value) is None


@pytest.mark.parametrize("value", ["many", "3.0", "three", "", True, None, [3]])
def test_counting_refuses_anything_else_naming_the_value(value):
    reason = get_scorer("counting").check_ground_truth(value)
    assert reason == f"counting ground truth must be an integer, got {value!r}"


def test_counting_checks_by_the_rule_it_scores_with():
    """What the check passes, score judges; what it refuses, score would raise on mid-run."""
    scorer = get_scorer("counting")
    assert scorer.check_ground_truth(" 7 ") is None and scorer.score("<answer> 7 </answer>", " 7 ").correct
    assert scorer.check_ground_truth("many") is not None
    with pytest.raises(ValueError, match="must be an integer, got 'many'"):
        scorer.score("<answer> 7 </answer>", "many")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("value", ["140°", "\\frac{7}{2}", "6cm", "4√{3}", "√{3}", "2π", 65, "12厘米"])
def test_geometry_takes_what_math_verify_reads(protocol, value):
    assert get_scorer("geometry", protocol).check_ground_truth(value) is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("value", ["many", "none", "", "   ", "?", None, ["140°"], True])
def test_geometry_refuses_a_gold_no_answer_could_match(protocol, value):
    reason = get_scorer("geometry", protocol).check_ground_truth(value)
    assert reason is not None and repr(value) in reason


def test_r1v_published_test_files_pass_their_scorers_rule():
    """SuperCLEVR-200 (counting) and GeoQA-754 (geometry) as R1-V published them: every ground truth is one
    its scorer judges. 17 GeoQA golds give nothing under R1-V's own parse (`√{3}`: R1-V scored those items
    wrong whatever the answer, and the r1v protocol does too); the geometry rule takes them by the normalized
    reading, else the paper's test set would be refused."""
    counting = [json.loads(line)["ground_truth"] for line in (R1V_EVAL / "superclevr_test_200.jsonl").open()]
    geoqa = [json.loads(line)["ground_truth"] for line in (R1V_EVAL / "geoqa_test_754.jsonl").open()]
    assert len(counting) == 200 and len(geoqa) == 754
    assert [g for g in counting if get_scorer("counting").check_ground_truth(str(g))] == []
    for protocol in PROTOCOLS:
        assert [g for g in geoqa if get_scorer("geometry", protocol).check_ground_truth(g)] == []
    unread_by_r1v = [g for g in geoqa if not math_verify.parse(g)]
    assert len(unread_by_r1v) == 17 and "√{3}" in unread_by_r1v

"""Behaviour of the rule-based scorers (R1-V counting rule, math-verify GeoQA equivalence) under both
scoring protocols. The geometry cases here are the `normalized` protocol's; `r1v` (R1-V's whole-output
call) is checked against math-verify directly in tests/test_protocols.py."""

from __future__ import annotations

import json
import math
import re
import threading

import pytest
from conftest import ROOT

from othink_mr1.rewards.base import DEFAULT_PROTOCOL, PROTOCOLS, Score
from othink_mr1.rewards.counting import CountingScorer
from othink_mr1.rewards.format import FORMAT_PATTERN, answer_span, format_ok
from othink_mr1.rewards.geometry import NormalizedGeometryScorer, R1VGeometryScorer, normalize_geometry_text
from othink_mr1.rewards.scorers import SCORERS, get_scorer

FIXTURES = ROOT / "data" / "r1v_eval"


def _ground_truths(name: str) -> list:
    with (FIXTURES / name).open(encoding="utf-8") as handle:
        return [json.loads(line)["ground_truth"] for line in handle if line.strip()]


def _completion(answer: object) -> str:
    return f"<think> Let me look at the figure carefully. </think><answer> {answer} </answer>"


@pytest.fixture(scope="module")
def geometry() -> NormalizedGeometryScorer:
    return NormalizedGeometryScorer()


@pytest.fixture(scope="module")
def counting() -> CountingScorer:
    return CountingScorer()


# --------------------------------------------------------------------------------------------------
# format_ok / answer_span
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>a</think><answer>b</answer>", True),
        ("<think>\nmulti\nline\n</think>\n\n<answer>\n3\n</answer>", True),
        ("  <think>a</think> <answer>b</answer>\n", True),  # surrounding whitespace tolerated
        ("<answer>b</answer>", False),  # no thinking
        ("<think>a</think>", False),  # no answer
        ("<think>a</think><answer>b</answer> trailing text", False),
        ("preamble <think>a</think><answer>b</answer>", False),
        ("<answer>b</answer><think>a</think>", False),  # wrong order
        ("<think>a</think><answer>b", False),  # unclosed answer
        ("", False),
    ],
)
def test_format_ok(completion: str, expected: bool) -> None:
    assert format_ok(completion) is expected


def test_format_pattern_is_dotall() -> None:
    assert FORMAT_PATTERN.flags & re.DOTALL
    assert FORMAT_PATTERN.fullmatch("<think>\n</think><answer>\n</answer>")


def test_answer_span() -> None:
    assert answer_span("<think>x</think><answer>  42 \n</answer>") == "42"
    assert answer_span("<answer>first</answer> <answer>second</answer>") == "first"
    assert answer_span("<answer>\nline1\nline2\n</answer>") == "line1\nline2"
    assert answer_span("<answer></answer>") == ""
    assert answer_span("no tags at all") is None
    assert answer_span("<answer>unclosed") is None


# --------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------


def test_counting_correct_and_wrong(counting: CountingScorer) -> None:
    assert counting.score("<think>I see 7 objects</think><answer>7</answer>", 7) == Score(True, "7", True)
    assert counting.score("<think>I see 7 objects</think><answer>6</answer>", 7) == Score(False, "6", True)
    assert counting.reward("<think>.</think><answer>7</answer>", 7) == 1.0
    assert counting.reward("<think>.</think><answer>6</answer>", 7) == 0.0


def test_counting_whitespace_and_string_ground_truth(counting: CountingScorer) -> None:
    completion = "<think>...</think><answer>\n  7 \n</answer>"
    assert counting.score(completion, 7).correct
    assert counting.score(completion, "7").correct
    assert counting.score(completion, " 7 ").correct


def test_counting_judged_by_answer_not_thinking(counting: CountingScorer) -> None:
    completion = "<think>There are 3 cubes and 4 spheres, so 7 in total.</think><answer>7</answer>"
    assert counting.score(completion, 7).correct
    assert not counting.score(completion, 3).correct
    assert not counting.score(completion, 4).correct


def test_counting_parse_failures(counting: CountingScorer) -> None:
    # No tags: R1-V's rule only looks inside <answer>, even if a number is present.
    assert counting.score("There are 7 objects.", 7) == Score(False, None, False)
    # Anything but a bare integer in the tags does not match the R1-V regex.
    for answer in ("seven", "7 objects", "7.0", "-7", ""):
        result = counting.score(f"<think>.</think><answer>{answer}</answer>", 7)
        assert result == Score(False, None, False), answer


def test_counting_uses_first_match(counting: CountingScorer) -> None:
    completion = "<answer>5</answer> <answer>7</answer>"
    assert counting.score(completion, 5).correct
    assert not counting.score(completion, 7).correct


@pytest.mark.parametrize("bad", ["seven", "7.5", "", None, 7.0, True])
def test_counting_rejects_non_integer_ground_truth(counting: CountingScorer, bad: object) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        counting.score("<answer>7</answer>", bad)


# --------------------------------------------------------------------------------------------------
# Geometry: hand-written cases
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "ground_truth"),
    [
        ("140°", "140°"),
        ("140", "140°"),
        ("140^\\circ", "140°"),
        ("140^{\\circ}", "140°"),
        ("$140^\\circ$", "140°"),
        ("140 degrees", "140°"),
        ("3", "3cm"),
        ("3 cm", "3cm"),
        ("3\\text{cm}", "3cm"),
        ("12", "12米"),
        ("12 m", "12米"),
        ("8", "8厘米"),
        ("2.5", "\\frac{5}{2}"),
        ("\\frac{10}{4}", "\\frac{5}{2}"),
        ("\\dfrac{5}{2}", "\\frac{5}{2}"),
        ("2.4", "\\frac{12}{5}"),
        ("4\\sqrt{3}", "4√{3}"),
        ("4√3", "4√{3}"),
        ("$4\\sqrt{3}$", "4√{3}"),
        ("\\sqrt{48}", "4√{3}"),
        ("4*sqrt(3)", "4√{3}"),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{√{3}}{2}"),
        ("\\frac{\\sqrt{2}}{2}", "\\frac{√{2}}{2}"),
        ("1+\\sqrt{3}", "(√{3}+1)小时"),
        ("2\\pi", "2π"),
        ("2π", "2π"),
        ("240\\pi cm^2", "240πcm^{2}"),
        ("16\\pi", "16π平方米"),
        ("5", "5cm^2^"),
        ("0.5", "\\frac{1}{2}cm²"),
        ("6\\sqrt{3}", "6√{3}海里"),
        ("3.6", "3.6秒"),
        ("6", "6.00米"),
        ("\\boxed{65}", "65°"),
        ("The answer is 4\\sqrt{3}.", "4√{3}"),
        ("The angle CED is 140°.", "140°"),
        ("x = 2.5", "\\frac{5}{2}"),
        ("AB = 4\\sqrt{3}", "4√{3}"),
        ("the length of AB = 4\\sqrt{3} cm", "4√{3}"),
        ("\\angle CED = 140^\\circ", "140°"),
        ("答案：4√3", "4√{3}"),
    ],
)
def test_geometry_equivalent_notations(geometry: NormalizedGeometryScorer, answer: str, ground_truth: str) -> None:
    result = geometry.score(f"<think>Work it out.</think><answer>{answer}</answer>", ground_truth)
    assert result.correct, (answer, ground_truth, result)
    assert result.parsed
    assert result.extracted == answer.strip()


@pytest.mark.parametrize(
    ("answer", "ground_truth"),
    [
        ("40°", "140°"),
        ("4", "4√{3}"),  # math-verify alone (no $ delimiters) would read 4\sqrt{3} as 4
        ("4√{2}", "4√{3}"),
        ("\\sqrt{3}", "4√{3}"),
        ("2", "\\frac{5}{2}"),
        ("5", "\\frac{5}{2}"),
        ("2", "2π"),
        ("6.28", "2π"),
        ("3", "30cm"),
        ("1", "(√{3}+1)小时"),
        ("The answer is 4.", "4√{3}"),
        ("AB = 4\\sqrt{2}", "4√{3}"),
    ],
)
def test_geometry_wrong_answers(geometry: NormalizedGeometryScorer, answer: str, ground_truth: str) -> None:
    result = geometry.score(f"<think>Work it out.</think><answer>{answer}</answer>", ground_truth)
    assert not result.correct, (answer, ground_truth, result)
    assert result.parsed


def test_geometry_judged_by_answer_span_not_thinking(geometry: NormalizedGeometryScorer) -> None:
    completion = "<think> angle A = 80, angle B = 60, so angle C = 40 </think><answer> 40° </answer>"
    assert geometry.score(completion, "40°").correct
    for distractor in ("80°", "60°"):
        assert not geometry.score(completion, distractor).correct
    # Even a ground truth that appears in the thinking is not credited when the answer is wrong.
    wrong = "<think> angle A = 80, so the answer should be 140 </think><answer> 40° </answer>"
    assert not geometry.score(wrong, "140°").correct


def test_geometry_string_fallback(geometry: NormalizedGeometryScorer) -> None:
    # R1-V credits an answer span equal to the ground truth as a string, whitespace aside.
    result = geometry.score("<think>.</think><answer>  4 √{3} cm </answer>", "4√{3}cm")
    assert result == Score(True, "4 √{3} cm", True)


def test_geometry_without_tags_uses_whole_output(geometry: NormalizedGeometryScorer) -> None:
    result = geometry.score("The side length is $4\\sqrt{3}$.", "4√{3}")
    assert result.correct and result.parsed
    assert result.extracted is not None and "sqrt" in result.extracted
    assert not geometry.score("The side length is $4\\sqrt{2}$.", "4√{3}").correct


def test_geometry_parse_failures(geometry: NormalizedGeometryScorer) -> None:
    assert geometry.score("<think>hmm</think><answer></answer>", "40°") == Score(False, None, False)
    assert geometry.score("I do not know.", "40°") == Score(False, None, False)
    assert geometry.score("", "40°") == Score(False, None, False)
    unparsable = geometry.score("<think>hmm</think><answer>不知道</answer>", "40°")
    assert unparsable == Score(False, "不知道", False)


@pytest.mark.parametrize(
    "garbage",
    [
        "<answer>\\frac{</answer>",
        "<answer>$$$</answer>",
        "<answer>\\sqrt{\\sqrt{\\sqrt{</answer>",
        "<answer>}}}{{{\\\\</answer>",
        "<answer>" + "9" * 5000 + "</answer>",
        "<answer>1/0</answer>",
        "<answer>\\begin{matrix} 1 & 2 \\end{matrix}</answer>",
        "<think>" + "x^" * 300 + "</think>",
        "\x00\x01\udcff <answer>√√√</answer>",
        "$" * 100,
    ],
)
def test_geometry_never_raises(geometry: NormalizedGeometryScorer, garbage: str) -> None:
    result = geometry.score(garbage, "40°")
    assert isinstance(result, Score)
    assert not result.correct


def test_geometry_works_outside_main_thread(geometry: NormalizedGeometryScorer) -> None:
    # math-verify's SIGALRM timeouts raise outside the main thread; the scorer must disable them.
    results: list[Score] = []
    worker = threading.Thread(
        target=lambda: results.append(geometry.score("<think>.</think><answer>4\\sqrt{3}</answer>", "4√{3}"))
    )
    worker.start()
    worker.join(timeout=60)
    assert results == [Score(True, "4\\sqrt{3}", True)]


def test_normalize_geometry_text() -> None:
    assert normalize_geometry_text("4√{3}cm") == "4\\sqrt{3}"
    assert normalize_geometry_text("\\frac{√{3}}{2}") == "\\frac{\\sqrt{3}}{2}"
    assert normalize_geometry_text("140°") == "140"
    assert normalize_geometry_text("40^{\\circ}") == "40"
    assert normalize_geometry_text("2π") == "2\\pi"
    assert normalize_geometry_text("(√{3}+1)小时") == "(\\sqrt{3}+1)"
    assert normalize_geometry_text("240πcm^{2}") == "240\\pi"
    assert normalize_geometry_text("5cm^2^") == "5"
    # Words containing unit letters are left alone.
    assert normalize_geometry_text("5 more") == "5 more"


# --------------------------------------------------------------------------------------------------
# Every fixture ground truth: credited when echoed verbatim, rejected for a different value
# --------------------------------------------------------------------------------------------------


def _oracle_value(ground_truth: str) -> float:
    """Numeric value of a GeoQA ground truth, computed independently of math-verify.

    Only needs to cover the notations present in the fixture (fractions, √{}, π, units).
    """
    text = re.sub(r"平方米|厘米|米|海里|小时|秒|°|\^\{2\}|\^2\^|²|cm|mm|m", "", ground_truth)
    text = re.sub(r"√\{([^{}]*)\}", r"sqrt(\1)", text)
    text = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", text)
    text = re.sub(r"(?<=[\d)])(?=sqrt|\(|π)", "*", text)  # implicit multiplication
    text = text.replace("π", "pi")
    return float(eval(text, {"__builtins__": {}}, {"sqrt": math.sqrt, "pi": math.pi}))


def test_oracle_sanity() -> None:
    assert _oracle_value("\\frac{3}{2}√{3}") == pytest.approx(1.5 * math.sqrt(3))
    assert _oracle_value("(√{3}+1)小时") == pytest.approx(math.sqrt(3) + 1)
    assert _oracle_value("240πcm^{2}") == pytest.approx(240 * math.pi)
    assert _oracle_value("\\frac{2√{5}}{5}") == pytest.approx(2 * math.sqrt(5) / 5)


def test_every_geoqa_ground_truth(geometry: NormalizedGeometryScorer) -> None:
    truths = _ground_truths("geoqa_test_754.jsonl")
    assert len(truths) == 754
    values = [_oracle_value(gt) for gt in truths]
    rejected_checked = 0
    for i, (gt, value) in enumerate(zip(truths, values, strict=True)):
        result = geometry.score(_completion(gt), gt)
        assert result.correct and result.parsed, (i, gt, result)
        # The verbatim echo is credited by R1-V's string fallback alone; a boxed echo and a decimal
        # (6 places) must also be credited, which exercises normalisation + math-verify itself.
        for variant in (f"\\boxed{{{gt}}}", f"{value:.6f}"):
            result = geometry.score(_completion(variant), gt)
            assert result.correct and result.parsed, (i, gt, variant, result)

        # The next item (cyclically) whose answer differs in value must be judged wrong.
        for j in range(1, len(truths)):
            other = truths[(i + j) % len(truths)]
            if not math.isclose(values[(i + j) % len(truths)], value, rel_tol=1e-6, abs_tol=1e-9):
                break
        else:
            continue
        wrong = geometry.score(_completion(other), gt)
        assert not wrong.correct and wrong.parsed, (i, gt, other, wrong)
        rejected_checked += 1
    assert rejected_checked == len(truths)  # with 200+ distinct values every item has a partner


def test_every_counting_ground_truth(counting: CountingScorer) -> None:
    truths = _ground_truths("superclevr_test_200.jsonl")
    assert len(truths) == 200
    assert all(isinstance(gt, int) and 3 <= gt <= 10 for gt in truths)
    rejected_checked = 0
    for i, gt in enumerate(truths):
        assert counting.score(_completion(gt), gt) == Score(True, str(gt), True)
        following = truths[i + 1 :] + truths[:i]  # cyclically, the items after this one
        other = next((candidate for candidate in following if candidate != gt), None)
        if other is not None:
            assert counting.score(_completion(other), gt) == Score(False, str(other), True)
            rejected_checked += 1
    assert rejected_checked == len(truths)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def test_registry() -> None:
    assert PROTOCOLS == ("r1v", "normalized") and DEFAULT_PROTOCOL == "r1v"
    assert set(SCORERS) == {"counting", "geometry"}
    assert all(set(by_protocol) == set(PROTOCOLS) for by_protocol in SCORERS.values())
    for protocol in PROTOCOLS:
        for scorer_name in SCORERS:
            scorer = get_scorer(scorer_name, protocol)
            assert (scorer.name, scorer.protocol) == (scorer_name, protocol)
    assert isinstance(get_scorer("geometry"), R1VGeometryScorer)  # the default protocol: R1-V's
    assert isinstance(get_scorer("geometry", "r1v"), R1VGeometryScorer)
    assert isinstance(get_scorer("geometry", "normalized"), NormalizedGeometryScorer)
    assert isinstance(get_scorer("counting", "normalized"), CountingScorer)


def test_every_task_config_names_a_registered_scorer() -> None:
    """A task names its scorer in conf/task/<name>.yaml only: each file's `scorer:` builds under both protocols,
    and the registry knows no task names (get_scorer("geoqa") is an error)."""
    import yaml

    tasks = {path.stem: yaml.safe_load(path.read_text(encoding="utf-8"))
             for path in sorted((ROOT / "conf" / "task").glob("*.yaml"))}
    assert {"counting", "geometry", "counting_multi", "clevr_count", "geoqa"} <= set(tasks)
    for name, task in tasks.items():
        for protocol in PROTOCOLS:
            assert get_scorer(task["scorer"], protocol).name == task["scorer"], name
    assert tasks["geoqa"]["scorer"] == "geometry" and tasks["clevr_count"]["scorer"] == "counting"
    with pytest.raises(ValueError, match="unknown scorer 'geoqa'"):
        get_scorer("geoqa")


def test_counting_is_the_same_rule_under_both_protocols() -> None:
    outputs = ["<think>7</think><answer> 7 </answer>", "<answer>6</answer>", "7", "<answer>007</answer>", ""]
    for output in outputs:
        assert get_scorer("counting", "r1v").score(output, 7) == get_scorer("counting", "normalized").score(output, 7)


def test_get_scorer_unknown_protocol_lists_valid_protocols() -> None:
    with pytest.raises(ValueError) as excinfo:
        get_scorer("geometry", "exact")
    message = str(excinfo.value)
    assert "'exact'" in message and "r1v" in message and "normalized" in message
    with pytest.raises(ValueError, match="r1v, normalized"):
        CountingScorer("exact")


def test_get_scorer_unknown_lists_valid_names() -> None:
    with pytest.raises(ValueError) as excinfo:
        get_scorer("mathvista")
    message = str(excinfo.value)
    assert "mathvista" in message
    assert "valid scorers: counting, geometry" in message
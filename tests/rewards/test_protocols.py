"""The two scoring protocols: `r1v` is R1-V's call exactly, `normalized` differs where documented, and the
protocol reaches the config check, the evaluation records and the summaries.

The differential test scores a generated corpus of realistic GeoQA outputs (tests/fixtures/geoqa_outputs)
with the r1v scorer and with math-verify called directly, and requires the same verdict on every item."""

from __future__ import annotations

import importlib.util
import json
import threading

import math_verify
import pytest
from conftest import ROOT

from othink_mr1.rewards.base import PROTOCOLS, Score
from othink_mr1.rewards.geometry import MAX_R1V_CHARS
from othink_mr1.rewards.grpo_rewards import REWARDS
from othink_mr1.rewards.scorers import get_scorer

FIXTURE = ROOT / "tests" / "fixtures" / "geoqa_outputs" / "generate.py"


def _generator():
    spec = importlib.util.spec_from_file_location("geoqa_outputs_generate", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return _generator().build_corpus()  # 3 outputs for each of the 754 items, deterministic


def _r1v_direct(ground_truth: str, output: str) -> bool:
    """R1-V's GeoQA evaluation, written out here independently of the project's scorer."""
    return bool(math_verify.verify(math_verify.parse(ground_truth), math_verify.parse(output)))


# ----------------------------------------------------------------------------------- the differential


@pytest.mark.slow  # math-verify on every output of the corpus (3 per GeoQA item)
def test_r1v_scorer_is_math_verify_on_the_whole_output_for_every_corpus_item(corpus):
    assert len(corpus) >= 2000
    assert all(set(record) >= {"question", "ground_truth", "model_output"} for record in corpus)
    # The length guard of the r1v scorer is never reached by realistic outputs (so it changes no verdict).
    assert max(len(record["model_output"]) for record in corpus) < MAX_R1V_CHARS / 10
    scorer = get_scorer("geometry", "r1v")
    verdicts, mismatches = [], []
    for i, record in enumerate(corpus):
        expected = _r1v_direct(record["ground_truth"], record["model_output"])
        got = scorer.score(record["model_output"], record["ground_truth"])
        verdicts.append(got.correct)
        if got.correct != expected:
            mismatches.append((i, record["ground_truth"], record["model_output"], got, expected))
    assert not mismatches, f"{len(mismatches)} verdicts differ from math-verify, e.g. {mismatches[:3]}"
    # A healthy mix of right and wrong verdicts, in almost every output style.
    assert 0.3 < sum(verdicts) / len(verdicts) < 0.7
    styles = {record["style"] for record, ok in zip(corpus, verdicts) if ok} & {
        record["style"] for record, ok in zip(corpus, verdicts) if not ok}
    assert len(styles) >= 10, styles


def test_accuracy_r1v_reward_is_the_r1v_scorers_verdict(corpus):
    sample = corpus[::10]
    outputs = [record["model_output"] for record in sample]
    columns = {"answer": [record["ground_truth"] for record in sample], "scorer": ["geometry"] * len(sample)}
    expected = [float(_r1v_direct(record["ground_truth"], record["model_output"])) for record in sample]
    for protocol in PROTOCOLS:  # R1-V's reward whatever the run's protocol
        assert REWARDS["accuracy_r1v"](outputs, **columns, protocol=[protocol] * len(sample)) == expected
    # The accuracy reward never pays more than the evaluation, under either protocol.
    for protocol in PROTOCOLS:
        scorer = get_scorer("geometry", protocol)
        paid = REWARDS["accuracy"](outputs, **columns, protocol=[protocol] * len(sample))
        assert all(p <= scorer.score(o, gt).correct for p, o, gt in zip(paid, outputs, columns["answer"]))


@pytest.mark.parametrize("notation, minimum", [
    ("°", 500), ("^\\circ", 100), ("^{\\circ}", 100), (" degrees", 100), ("cm", 50), ("√{", 30), ("√", 50),
    ("\\sqrt{", 20), ("sqrt(", 10), ("\\frac{", 50), ("\\dfrac{", 5), ("π", 10), ("pi", 10), ("米", 10),
    ("厘米", 5), ("平方", 2), ("^{2}", 2), ("$", 100), ("\\(", 50), ("\\boxed{", 150), ("(A)", 5), ("(B)", 5),
    ("根据题意", 100), ("<answer>", 1500),
])
def test_corpus_covers_the_notations(corpus, notation, minimum):
    assert sum(notation in record["model_output"] for record in corpus) >= minimum, notation


def test_corpus_has_every_shape(corpus):
    outputs = [record["model_output"] for record in corpus]
    assert sum("<answer>" not in o for o in outputs) >= 300  # no tags at all, or the thinking only
    assert sum("</answer>" in o and not o.rstrip().endswith("</answer>") for o in outputs) >= 50  # after the tags
    assert sum(record["style"] == "truncated" for record in corpus) >= 100
    assert sum(not record["intended"] for record in corpus) >= 600  # wrong answers
    assert {record["ground_truth"] for record in corpus} == {
        json.loads(line)["ground_truth"] for line in (ROOT / "data" / "r1v_eval" /
                                                      "geoqa_test_754.jsonl").read_text(encoding="utf-8").splitlines()}


def test_corpus_is_deterministic():
    generator = _generator()
    assert generator.build_corpus(per_item=1, seed=3) == generator.build_corpus(per_item=1, seed=3)
    assert generator.build_corpus(per_item=1, seed=3) != generator.build_corpus(per_item=1, seed=4)


@pytest.mark.slow  # both protocols over the whole corpus
def test_protocols_disagree_on_the_corpus_in_both_directions(corpus):
    r1v, normalized = get_scorer("geometry", "r1v"), get_scorer("geometry", "normalized")
    only_r1v = only_normalized = 0
    for record in corpus[::2]:
        a = r1v.score(record["model_output"], record["ground_truth"]).correct
        b = normalized.score(record["model_output"], record["ground_truth"]).correct
        only_r1v += a and not b
        only_normalized += b and not a
    assert only_r1v > 20 and only_normalized > 20, (only_r1v, only_normalized)


# --------------------------------------------------------- hand cases where the protocols are documented to differ

# (ground truth, output, r1v verdict, normalized verdict, why)
DIFFERING = [
    ("4πcm", "<think> The radius is 2, so the circumference is 2 * pi * 2. </think> <answer> 4 * pi </answer>",
     True, False, "math-verify reads 4 for both; normalized does not rewrite '4 * pi'"),
    ("9πcm^{2}", "<think> The area is pi r^2 with r = 3. </think> <answer> 9pi </answer>",
     True, False, "gold parses to 9 and so does the whole output; normalized does not read '9pi'"),
    ("4√{3}", "<think> AB = 4 </think> <answer> 4 </answer>",
     True, False, "math-verify reads the unicode root '4√{3}' as 4"),
    ("65°", "<think> angle 1 = 50, angle BEF = 130, so angle 2 = 65. </think> <answer> (C) 65° </answer>",
     True, False, "an option letter before the value: normalized treats the span as prose"),
    ("65°", "<think> angle 1 = 50 so angle 2 = 65. </think> <answer> C </answer>",
     True, False, "r1v reads the value in the reasoning; the answer is only a letter"),
    ("70°", "<think> x </think> <answer> a guess </answer> 70°",
     True, False, "r1v reads an answer written after the tags"),
    ("9πcm^{2}", "<answer>9π</answer>",
     False, True, "math-verify reads nothing in '>9π<'; normalized reads the span"),
    ("\\frac{√{3}}{2}", "<think> sin 60 </think> <answer> sqrt(3)/2 </answer>",
     False, True, "gold '\\frac{√{3}}{2}' parses to nothing; r1v picks 60 from the reasoning"),
    ("\\frac{√{3}}{2}", "<think> sin 60 </think> <answer> $\\frac{\\sqrt{3}}{2}$ </answer>",
     False, True, "gold parses to nothing, so no answer can be right under r1v"),
    ("4√{3}", "<think> x </think> <answer> $4\\sqrt{3}$ </answer>",
     False, True, "gold parses to 4, the answer to 4*sqrt(3)"),
    ("140°", "<think> angle A = 80.0, angle B = 60.0, DE ∥ BC </think> <answer>140°</answer>",
     False, True, "math-verify reads nothing in '>140°<' and picks 60.0 from the reasoning"),
    ("3cm", "<think> DE = 3 </think> <answer> 3 </answer> AB = 6",
     False, True, "r1v picks the 6 written after the tags"),
    ("2√{5}", "<think> By Pythagoras: sqrt(4+16) </think> <answer> \\sqrt{20} </answer>",
     False, True, "gold parses to 2, the answer to 2*sqrt(5)"),
]


@pytest.mark.parametrize("ground_truth, output, r1v, normalized, why", DIFFERING)
def test_documented_differences_between_the_protocols(ground_truth, output, r1v, normalized, why):
    assert get_scorer("geometry", "r1v").score(output, ground_truth).correct is r1v, why
    assert _r1v_direct(ground_truth, output) is r1v, why
    assert get_scorer("geometry", "normalized").score(output, ground_truth).correct is normalized, why


def test_both_directions_are_among_the_hand_cases():
    assert {(r1v, normalized) for _, _, r1v, normalized, _ in DIFFERING} == {(True, False), (False, True)}


# ------------------------------------------------------------------------------- the r1v scorer's edges


@pytest.mark.parametrize("garbage", [
    "<answer>\\frac{</answer>", "<answer>$$$</answer>", "}}}{{{\\\\", "9" * 5000, "1/0",
    "\\begin{matrix} 1 & 2 \\end{matrix}", "x^" * 300, "\x00\x01\udcff √√√", "$" * 100, "",
])
def test_r1v_never_raises(garbage):
    result = get_scorer("geometry", "r1v").score(garbage, "40°")
    assert isinstance(result, Score) and not result.correct
    assert result.correct <= result.parsed


def test_r1v_outside_the_main_thread():
    # math-verify's SIGALRM timeouts raise outside the main thread; the scorer runs without them there.
    output = "<think> angle C = 40° </think> <answer> 50° </answer>"
    results: list[Score] = []
    worker = threading.Thread(target=lambda: results.append(get_scorer("geometry", "r1v").score(output, "50°")))
    worker.start()
    worker.join(timeout=60)
    assert results == [Score(True, "50", True)]


def test_r1v_counting_is_the_counting_regex():
    assert get_scorer("counting", "r1v").score("<think>3 or 4</think> <answer> 4 </answer>", 4) == Score(True, "4", True)
    assert not get_scorer("counting", "r1v").score("There are 4 objects.", 4).correct


# ------------------------------------------------------------------------- config, records, summaries


def test_unknown_protocol_fails_at_composition_listing_the_valid_names(make_cfg):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as excinfo:
        make_cfg("eval.protocol=exact")
    message = str(excinfo.value.__cause__)
    assert "Invalid value 'exact', expected one of [r1v, normalized]" in message and "full_key: eval.protocol" in message
    for protocol in PROTOCOLS:
        assert make_cfg(f"eval.protocol={protocol}").eval.protocol == protocol


def test_eval_protocol_defaults_to_r1v(make_cfg):
    assert make_cfg().eval.protocol == "r1v"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_completions_and_summaries_carry_the_protocol(tmp_path, protocol):
    from othink_mr1.evaluation.harness import EvalAccumulator, EvalSpec, write_stage

    spec = EvalSpec(scorers={"geoqa": "geometry", "counting": "counting"}, max_new_tokens={"geoqa": 8, "counting": 8},
                    protocol=protocol)
    acc = EvalAccumulator(spec)
    # Right under normalized only: r1v reads the 80 of the reasoning.
    acc.add("geoqa", {"questions": ["q"], "answers": ["140°"], "indices": [0]},
            ["<think> angle A = 80.0 </think> <answer>140°</answer>"], [12])
    acc.add("counting", {"questions": ["q"], "answers": [3], "indices": [0]}, ["<answer> 3 </answer>"], [4])
    summaries = acc.summaries()
    assert {task: s["protocol"] for task, s in summaries.items()} == {"geoqa": protocol, "counting": protocol}
    assert summaries["geoqa"]["correct"] == (protocol == "normalized")
    write_stage(tmp_path / "final", summaries, acc)
    saved = json.loads((tmp_path / "final" / "results.json").read_text())
    assert all(s["protocol"] == protocol for s in saved["results"].values())
    for task in ("geoqa", "counting"):
        records = [json.loads(line) for line in (tmp_path / "final" / task / "completions.jsonl").read_text().splitlines()]
        assert [r["protocol"] for r in records] == [protocol]


def test_eval_spec_refuses_an_unknown_protocol():
    from othink_mr1.evaluation.harness import EvalSpec

    with pytest.raises(ValueError, match="r1v, normalized"):
        EvalSpec(scorers={}, max_new_tokens={}, protocol="exact")

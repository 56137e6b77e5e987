"""Scorers and rewards on what a policy can emit, under both scoring protocols: they never raise, stay
linear where regexes would backtrack, and give no accuracy reward to the usual hacks. (Timing is
measured by bench scripts, not asserted here.)"""

from __future__ import annotations

import random
import re

import pytest

from othink_mr1.rewards.base import PROTOCOLS
from othink_mr1.rewards.format import FORMAT_PATTERN, answer_span, format_ok
from othink_mr1.rewards.geometry import MAX_R1V_CHARS
from othink_mr1.rewards.grpo_rewards import REWARDS, compute_rewards
from othink_mr1.rewards.scorers import get_scorer

TOKENS = ["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "a", "3", "70°", "<", ">", "/"]
REGEX_SPAN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

HOSTILE = {
    "empty": "",
    "whitespace": " \n\t " * 1000,
    "100k characters": "a" * 100_000,
    "unclosed answers": "<answer>" * 12_500,
    "unclosed thinks": "<think>" * 14_000 + "</think>",
    "nested tags": "<think><think><answer><answer>3</answer></answer></think></think>",
    "repeated blocks": "<think>a</think><answer>" * 5_000,
    "many numbers": "<think>x</think><answer>" + " ".join(str(i) for i in range(20_000)) + "</answer>",
    "huge number": "<think>x</think><answer>" + "9" * 50_000 + "</answer>",
    "non-ASCII digit": "<think>x</think><answer>٣</answer>",
    "latex fragments": "<answer>" + "\\frac{\\sqrt{" * 2_000 + "</answer>",
    "latex without tags": "\\frac{1}{2}" * 10_000,
    "control characters": "<think>\x00\x1b[31m</think><answer>\x00</answer>",
}


def test_linear_format_and_span_agree_with_the_regexes_on_random_tag_soup():
    rng = random.Random(0)
    for _ in range(3_000):
        text = "".join(rng.choice(TOKENS) for _ in range(rng.randint(0, 14)))
        assert format_ok(text) == (FORMAT_PATTERN.fullmatch(text.strip()) is not None), text
        match = REGEX_SPAN.search(text)
        assert answer_span(text) == (None if match is None else match.group(1).strip()), text


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("scorer", ["counting", "geometry"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_scorers_never_raise_and_reward_nothing_on_hostile_output(name, scorer, protocol):
    text = HOSTILE[name]
    truth = "3" if scorer == "counting" else "70°"
    score = get_scorer(scorer, protocol).score(text, truth)
    assert isinstance(score.correct, bool)
    if name != "nested tags":  # the only one holding a lone correct answer in tags
        assert not score.correct, (name, score)
    total, parts = compute_rewards({"accuracy": 1.0, "format": 1.0}, [text], answer=[truth], question=["q"],
                                   scorer=[scorer], protocol=[protocol])
    # <think>..</think><answer>..</answer>, whatever is inside: the format reward is earned, accuracy is not.
    well_formed = name in ("control characters", "huge number", "many numbers", "non-ASCII digit")
    assert parts["format"] == [1.0 if well_formed else 0.0]
    assert total == [parts["accuracy"][0] + parts["format"][0]]


@pytest.mark.parametrize("hack, text", [
    ("empty answer", "<think>it is 3</think> <answer></answer>"),
    ("format without content", "<think></think><answer> </answer>"),
    ("many candidates", "<think>x</think> <answer>1 2 3 4 5</answer>"),
    ("candidates separated by commas", "<think>x</think> <answer>2, 3, 4</answer>"),
    ("answer outside the tags", "<think>x</think> <answer>four</answer> 3"),
    ("non-ASCII digit", "<think>x</think> <answer>٣</answer>"),
])
def test_counting_reward_hacks_earn_no_accuracy(hack, text):
    assert get_scorer("counting").reward(text, 3) == 0.0, hack


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_geometry_rejects_an_answer_listing_many_candidates(protocol):
    listing = "<think>x</think> <answer>" + ", ".join(f"{a}°" for a in range(10, 180, 5)) + "</answer>"
    assert get_scorer("geometry", protocol).reward(listing, "70°") == 0.0
    # (Spaced: math-verify reads nothing in ">70°<", so r1v judges "<answer>70°</answer>" wrong, as R1-V did.)
    assert get_scorer("geometry", protocol).reward("<think>x</think> <answer> 70° </answer>", "70°") == 1.0


# (hack, output, evaluation verdict under r1v, under normalized)
OUTSIDE_THE_TAGS = [
    ("untagged answer", "<think>the angle is 70°</think> so the answer is 70°", True, True),
    ("no tags at all", "The angle is 70°", True, True),
    ("answer outside the tags", "<think>x</think> <answer>a guess</answer> 70°", True, False),
    ("answer in the thinking", "<think>so the angle is 70°</think> <answer>I am not sure</answer>", True, False),
    ("empty answer", "<think> 70° </think> <answer> </answer>", True, False),
    ("empty answer, unspaced", "<think>70°</think> <answer></answer>", False, False),  # math-verify reads no ">70°<"
    ("format without content", "<think></think><answer> </answer>", False, False),
]


@pytest.mark.parametrize("hack, text, r1v, normalized", OUTSIDE_THE_TAGS)
def test_geometry_reward_never_pays_an_answer_outside_the_tags(hack, text, r1v, normalized):
    # Each protocol's evaluation reads what it reads (r1v: the whole output, as R1-V's evaluation does, so
    # scores compare with the paper's); the accuracy reward pays neither an answer outside the tags.
    # accuracy_r1v reproduces R1-V's training reward: R1-V's verdict, whatever the run's protocol.
    for protocol, evaluation in (("r1v", r1v), ("normalized", normalized)):
        scorer = get_scorer("geometry", protocol)
        assert scorer.reward(text, "70°") == 0.0, (hack, protocol)
        assert scorer.score(text, "70°").correct is evaluation, (hack, protocol)
        columns = {"answer": ["70°"], "scorer": ["geometry"], "protocol": [protocol]}
        assert REWARDS["accuracy"]([text], **columns) == [0.0]
        assert REWARDS["accuracy_r1v"]([text], **columns) == [float(r1v)]


def test_accuracy_reward_pays_the_verdict_of_the_runs_protocol():
    # "4 * pi" is right for 4πcm under r1v and wrong under normalized (see test_protocols.py): inside the
    # tags, the accuracy reward follows the run's protocol; without a protocol column it is r1v's.
    text = "<think> The radius is 2, so the circumference is 2 * pi * 2. </think> <answer> 4 * pi </answer>"
    columns = {"answer": ["4πcm"], "scorer": ["geometry"]}
    assert REWARDS["accuracy"]([text], **columns, protocol=["r1v"]) == [1.0]
    assert REWARDS["accuracy"]([text], **columns, protocol=["normalized"]) == [0.0]
    assert REWARDS["accuracy"]([text], **columns) == [1.0]


def test_r1v_reads_no_output_over_its_length_guard():
    tail = " so the angle is 70°"
    assert get_scorer("geometry", "r1v").score("a" * (MAX_R1V_CHARS - len(tail)) + tail, "70°").correct
    assert not get_scorer("geometry", "r1v").score("a" * MAX_R1V_CHARS + tail, "70°").parsed


def test_counting_compares_huge_numbers_without_converting_them():
    assert get_scorer("counting").reward("<answer>" + "0" * 10_000 + "7</answer>", 7) == 1.0
    assert get_scorer("counting").reward("<answer>" + "7" * 10_000 + "</answer>", 7) == 0.0


# --------------------------------------------------------------------- property-based (hypothesis)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<answer> ", " </answer>", " ", "\n", "3", "7", "70", "°",
          "cm", "\\frac{", "}", "{", "\\sqrt", "٣", "9" * 40, "a", "<", "/", ">", "\x00", ",", "-", ".", "$"]
COMPLETIONS = st.one_of(st.text(max_size=200), st.lists(st.sampled_from(PIECES), max_size=40).map("".join))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(text=COMPLETIONS, scorer=st.sampled_from(["counting", "geometry"]), protocol=st.sampled_from(PROTOCOLS))
def test_generated_completions_never_break_a_scorer(text, scorer, protocol):
    truth = "3" if scorer == "counting" else "70°"
    score = get_scorer(scorer, protocol).score(text, truth)
    assert isinstance(score.correct, bool) and isinstance(score.parsed, bool)
    assert score.correct <= score.parsed  # nothing is correct that was not parsed
    assert format_ok(text) == (FORMAT_PATTERN.fullmatch(text.strip()) is not None)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(text=COMPLETIONS)
def test_no_counting_reward_without_the_count_alone_in_answer_tags(text):
    # Whatever else the output holds, the reward needs an <answer> block holding exactly the count
    # (ASCII digits, optional zeros and whitespace): never an answer outside the tags or among others.
    rewarded = get_scorer("counting").reward(text, 3) == 1.0
    assert rewarded <= (re.search(r"<answer>\s*0*3\s*</answer>", text) is not None)
    if "<answer>" not in text:
        assert not rewarded


@settings(max_examples=300, deadline=None, derandomize=True)
@given(text=COMPLETIONS, protocol=st.sampled_from(PROTOCOLS))
def test_no_geometry_reward_without_an_answer_span(text, protocol):
    scorer = get_scorer("geometry", protocol)
    rewarded = scorer.reward(text, "70°") == 1.0
    assert rewarded <= (answer_span(text) is not None)
    assert rewarded <= scorer.score(text, "70°").correct  # never more than the evaluation, either protocol


@settings(max_examples=200, deadline=None, derandomize=True)
@given(numbers=st.lists(st.integers(0, 20), min_size=2, max_size=12), separator=st.sampled_from([" ", ", ", "\n", " or "]))
def test_listing_several_counts_never_earns_the_reward(numbers, separator):
    text = "<think>x</think> <answer>" + separator.join(map(str, numbers)) + "</answer>"
    assert get_scorer("counting").reward(text, 3) == 0.0

"""GeoQA scoring under the two protocols: R1-V's (``r1v``) and the notation-normalising one (``normalized``).

``r1v`` (:class:`R1VGeometryScorer`, :func:`r1v_verdict`; the default and the paper's protocol)
    R1-V's evaluation exactly: ``math_verify.verify(math_verify.parse(ground_truth),
    math_verify.parse(whole_output))`` with math-verify's own defaults: no notation rewriting, no
    ``<answer>`` span logic, an empty parse of the output is wrong. This reproduces R1-V's logged
    verdicts item for item, so accuracies compare with the paper's. The one guard
    (:data:`MAX_R1V_CHARS`) only touches outputs far longer than any 1024-token completion.
``normalized`` (:class:`NormalizedGeometryScorer`)
    The project's earlier geometry scorer: it judges the ``<answer>`` span when there is one and rewrites
    GeoQA and model notations (``√{3}``, ``°``, ``cm``, ``米``, ``sqrt(3)``, ...; :func:`normalize_geometry_text`,
    :func:`to_math_verify_input`) before math-verify reads them. It exists because R1-V's rule grades what
    math-verify's extraction happens to pick from the whole output: it does not read an answer glued to its
    tags (``<answer>140°</answer>``), and then takes a number from the reasoning (``<think> angle A = 80
    </think> <answer>140°</answer>`` is wrong under ``r1v``, right with spaces inside the tags), and
    ``math_verify.parse("4√{3}")`` reads 4. It disagrees with ``r1v`` in both directions (on two published
    Qwen2-VL-7B GeoQA-754 logs: 23 and 21 of 754 items), so its numbers must never be reported as the paper's.

math-verify is imported only when a geometry answer is scored (sympy/antlr cost), and wrapped so that it
never raises on model text: errors and timeouts (:func:`_timeout`) count as "not parsed".
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any, ClassVar

from .base import Score
from .format import answer_span

__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_FALLBACK_CHARS",
    "MAX_R1V_CHARS",
    "NormalizedGeometryScorer",
    "R1VGeometryScorer",
    "normalize_geometry_text",
    "r1v_verdict",
    "to_math_verify_input",
]

# ---------------------------------------------------------------------------------------------------
# GeoQA notation normalisation (the normalized protocol)
# ---------------------------------------------------------------------------------------------------
#
# math-verify (0.9) only reads LaTeX inside math delimiters: parse("4\\sqrt{3}") gives 4 while
# parse("$4\\sqrt{3}$") gives 4*sqrt(3). It also does not know GeoQA's unicode root sign ("4√{3}"
# parses to 4, "\\frac{√{3}}{2}" to nothing) or its Chinese units ("$12厘米$"). The functions below
# rewrite both the ground truth and the model's answer into plain LaTeX math before parsing. Every
# rule was checked against the 754 GeoQA test ground truths (see tests/rewards/test_scorers.py).

# Characters that have a direct LaTeX equivalent. "π" gets a trailing space so that "πr" does not
# become the unknown command "\pir"; the space is harmless inside math.
_UNICODE_MATH = {
    "π": r"\pi ",
    "×": r"\times ",
    "·": r"\cdot ",
    "÷": r"\div ",
    "−": "-",  # U+2212 minus sign
    "–": "-",  # en dash, often produced for a minus
    "（": "(",
    "）": ")",
    "，": ",",
    "＝": "=",
}

# √{...} -> \sqrt{...}; √(x) -> \sqrt{x}; √3, √3.5, √x -> \sqrt{3} ...
_ROOT_BRACED = re.compile(r"√\s*\{")
_ROOT_PAREN = re.compile(r"√\s*\(([^()]*)\)")
_ROOT_BARE = re.compile(r"√\s*(\d+(?:\.\d+)?|[A-Za-z])")
# Plain-text "sqrt(3)" / "sqrt 3" (not the LaTeX command): models write it in prose.
_ROOT_WORD = re.compile(r"(?<![\\A-Za-z])sqrt\s*(?:\(([^()]*)\)|(\d+(?:\.\d+)?))")

# Degree signs in all spellings seen in GeoQA ground truths and model outputs. Removing them is
# safe because GeoQA angles are always in degrees; "140°" and "140" must compare equal.
_DEGREE = re.compile(
    r"\^\s*\{\s*\\circ\s*\}"  # ^{\circ}
    r"|\^\s*\\circ"  # ^\circ
    r"|\\circ"  # \circ
    r"|\\degree"
    r"|°|º|度"
    r"|(?<=\d)\s*degrees?\b"
)

# Chinese unit words (longest first so 平方厘米 wins over 厘米 and 米). They only ever follow the value.
_CJK_UNITS = re.compile(
    r"平方厘米|平方分米|平方千米|平方米|立方厘米|立方米|厘米|毫米|分米|千米|公里|米|海里|小时|分钟|秒|平方"
)

# Latin length/area units after a value. The value end is captured (a digit, a closing brace or
# parenthesis, or \pi) because Python's look-behind must be fixed width; the unit must not be
# followed by a letter so that "m" inside words or commands is never touched. Area/volume exponents
# ("cm²", "cm^2", "cm^{2}", GeoQA's odd "cm^2^") go with the unit.
_UNIT_WORD = (
    r"(?:square\s+)?"
    r"(?:km|cm|mm|dm|m|(?:centi|milli|kilo)?met(?:er|re)s?|nautical\s+miles?|miles?|hours?|seconds?|units?)"
)
_LATIN_UNIT = re.compile(
    r"(?P<pre>[\d}\)]|\\pi)\s*(?:\\[,;:! ]|~)?\s*"
    # "\text{cm}" with its own braces, or a bare "cm"; never eat a brace that closes e.g. \boxed{...}
    rf"(?:\\(?:text|mathrm|rm|mbox|textrm)\s*\{{\s*{_UNIT_WORD}\s*\}}|{_UNIT_WORD})"
    r"(?:\s*(?:\^\s*(?:\{\s*[23]\s*\}|[23])\s*\^?|[²³]))?"
    r"(?![A-Za-z])"
)

_CJK_CHAR = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]+")
_TRAILING_PUNCT = re.compile(r"[\s.。,，;；:：]+$")
# A word with a lowercase letter that is not a LaTeX command: the sign that a span is prose.
# All-caps runs are point/segment names ("AB", "CED") and belong to the formula.
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])(?=[A-Za-z]*[a-z])[A-Za-z]{2,}")
_HAS_DELIMITERS = re.compile(r"\$|\\\(|\\\[|\\boxed|\\fbox")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
# A token that can be part of a formula: digits, operators, brackets, LaTeX commands, single letters.
_MATH_TOKEN = re.compile(r"(?:\\[A-Za-z]+|[0-9.+\-*/^_=(){}\[\]<>|!']|(?<![A-Za-z])[A-Za-z](?![A-Za-z]))+")


def normalize_geometry_text(text: str) -> str:
    """Rewrite GeoQA notation into LaTeX that math-verify reads (without adding ``$`` delimiters).

    ``"4√{3}cm"`` -> ``"4\\sqrt{3}"``, ``"140°"`` -> ``"140"``, ``"\\frac{4}{3}米"`` ->
    ``"\\frac{4}{3}"``, ``"2π"`` -> ``"2\\pi"``, ``"(√{3}+1)小时"`` -> ``"(\\sqrt{3}+1)"``.
    Applied identically to ground truths and model answers so both sides are read the same way.
    """
    for char, latex in _UNICODE_MATH.items():
        text = text.replace(char, latex)
    text = _ROOT_BRACED.sub(r"\\sqrt{", text)
    text = _ROOT_PAREN.sub(r"\\sqrt{\1}", text)
    text = _ROOT_BARE.sub(r"\\sqrt{\1}", text)
    text = _ROOT_WORD.sub(lambda m: "\\sqrt{" + (m.group(1) or m.group(2)) + "}", text)
    text = _DEGREE.sub("", text)
    text = _CJK_UNITS.sub("", text)
    text = _LATIN_UNIT.sub(r"\g<pre>", text)
    # "\pi " was given a trailing space above; drop spaces that now precede a closing token.
    text = re.sub(r"\s+([})\]])", r"\1", text)
    return _TRAILING_PUNCT.sub("", text.strip())


def _is_prose(text: str) -> bool:
    return bool(_PROSE_WORD.search(_LATEX_COMMAND.sub(" ", text))) or bool(_CJK_CHAR.search(text))


def _wrap_math_runs(text: str) -> str:
    """Put ``$...$`` around the LaTeX formulas inside prose so math-verify reads them as math.

    Wrapping a whole sentence would make math-verify multiply the letters of every word; leaving it
    bare would make it read ``4\\sqrt{3}`` as 4. Only runs containing a LaTeX command need help:
    math-verify already finds bare numbers in prose by itself.
    """
    text = _CJK_CHAR.sub(lambda m: f" {m.group(0)} ", text)  # CJK glued to formulas: split them off

    def wrap(match: re.Match[str]) -> str:
        run = match.group(0)
        # Keep sentence punctuation outside, and drop a dangling "=" / ":" left by "... is = 4\sqrt{3}".
        core = run.rstrip(".,;:")
        lead = len(core) - len(core.lstrip("=: "))
        if "\\" not in core:
            return run
        return f"{run[:lead]}${core[lead:]}${run[len(core) :]}"

    # Runs of math tokens separated by single spaces (e.g. "2\sqrt{2} - 2").
    return re.sub(rf"{_MATH_TOKEN.pattern}(?:[ \t]+{_MATH_TOKEN.pattern})*", wrap, text)


def to_math_verify_input(text: str) -> str:
    """Normalise ``text`` and add math delimiters where math-verify needs them.

    * already delimited (``$``, ``\\(``, ``\\[``, ``\\boxed``): left to math-verify's own extraction;
    * a bare formula (``4\\sqrt{3}``, ``x = 2.5``): wrapped whole in ``$...$``;
    * prose (``The answer is 4\\sqrt{3}``): only the formulas inside are wrapped.
    """
    norm = normalize_geometry_text(text)
    if not norm or _HAS_DELIMITERS.search(norm):
        return norm
    if _is_prose(norm):
        return _wrap_math_runs(norm)
    return f"${norm}$"


# ---------------------------------------------------------------------------------------------------
# math-verify wrapper, and the two scorers
# ---------------------------------------------------------------------------------------------------

# Seconds allowed per math-verify parse / comparison (main thread only, see _timeout).
_TIMEOUT_S = 5


def _timeout() -> int | None:
    """math-verify's timeouts use SIGALRM, which only works in the main thread (elsewhere it raises).

    In worker threads (e.g. a dataloader or a reward-thread pool) we therefore run without a timeout.
    """
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _mv_parse(text: str, timeout: int | None) -> list[Any]:
    """math_verify.parse that never raises: any error or timeout counts as "nothing parsed"."""
    import math_verify  # deferred: sympy/antlr import cost is only paid by geometry scoring

    if not text:
        return []
    try:
        return list(math_verify.parse(text, parsing_timeout=timeout, raise_on_error=False))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - includes TimeoutException and sympy/antlr internals
        return []


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None) -> tuple[Any, ...]:
    # Ground truths repeat across the G completions of a GRPO group and across epochs: cache them.
    return tuple(_mv_parse(to_math_verify_input(gold), timeout))


def _mv_verify(gold: list[Any], target: list[Any], timeout: int | None) -> bool:
    import math_verify

    if not gold or not target:
        return False
    try:
        return bool(math_verify.verify(gold, target, timeout_seconds=timeout, raise_on_error=False))
    except Exception:  # noqa: BLE001 - never let a pathological expression kill training/eval
        return False


# Longest <answer> span the geometry scorer reads (GeoQA answers are a few characters: "70°",
# "\\frac{7}{2}cm"), and how much of an untagged output's end R1-V's whole-output fallback parses
# (a closing "so the angle is 70°" fits; math-verify takes ~250 ms on 300 characters of nested LaTeX,
# bench/results/hostile_scoring.json).
MAX_ANSWER_CHARS = 200
MAX_FALLBACK_CHARS = 300


@functools.lru_cache(maxsize=65536)
def _judge_span(span: str, gold_text: str, timeout: int | None) -> tuple[bool, bool]:
    """(correct, parsed) for an <answer> span. Cached: a policy repeats the same few answers across a
    group and across steps, and math-verify costs milliseconds per call."""
    if span and _strip_spaces(span) == _strip_spaces(gold_text):
        return True, True
    candidate = _mv_parse(to_math_verify_input(span), timeout)
    if not candidate:
        return False, False
    return _mv_verify(list(_parse_gold(gold_text, timeout)), candidate, timeout), True


def _readable(parsed: list[Any]) -> str:
    """math-verify returns [sympy_expr, matched_string]; the string is what a human wants to see."""
    if len(parsed) >= 2 and isinstance(parsed[-1], str):
        return parsed[-1]
    return str(parsed[0])


def _strip_spaces(text: str) -> str:
    return re.sub(r"\s+", "", text)


class _GeometryScorer:
    """What both geometry scorers share: which ground truths they can judge answers against."""

    def check_ground_truth(self, ground_truth: Any) -> str | None:
        """A value math-verify reads: under R1-V's gold parse (``parse(ground_truth)``), or else under the
        normalized reading (:func:`to_math_verify_input`). One rule for both protocols, because it is the
        record that is valid or not: R1-V's own GeoQA-754 holds 17 golds its parse reads nothing from
        (``√{3}``, ``\\frac{√{3}}{2}``), which R1-V scored wrong whatever the answer and the ``r1v``
        protocol scores so too; refusing them would refuse the paper's test set. A gold neither reads
        (``many``, an empty answer) could never be scored right under either: that is reported."""
        if ground_truth is None or isinstance(ground_truth, (bool, list, tuple, dict)):
            return f"geometry ground truth must be text or a number, got {ground_truth!r}"
        text = str(ground_truth)
        if not text.strip():
            return f"geometry ground truth is empty, got {ground_truth!r}"
        timeout = _timeout()
        if _r1v_gold(text, timeout):
            return None
        # The normalized reading may give a bare string back ("?" -> ['?']): only a value counts.
        if any(not isinstance(part, str) for part in _parse_gold(text.strip(), timeout)):
            return None
        return (f"math-verify reads no value from geometry ground truth {ground_truth!r} (neither R1-V's parse "
                "nor the normalized reading): no answer could be scored right against it")


class NormalizedGeometryScorer(_GeometryScorer):
    """GeoQA scoring under the ``normalized`` protocol: the answer span, in normalised notation.

    What it changes versus ``r1v`` (:class:`R1VGeometryScorer`, ``verify(parse(gold),
    parse(whole_output))``), and why:

    1. If the completion has an ``<answer>`` span, only that span is judged (``r1v`` parses the whole
       output, so math-verify may latch onto a number from the reasoning or after the tags: ``<think>
       angle A = 80 </think> <answer>140°</answer>`` is wrong under ``r1v``, right here). A span longer than
       :data:`MAX_ANSWER_CHARS` (a list of candidates, runaway output) is wrong.
    2. Ground truth and answer are rewritten first (:func:`normalize_geometry_text`,
       :func:`to_math_verify_input`): ``√{3}``, ``°``, ``cm``, ``米``, ``π``, ``sqrt(3)``, ``140 degrees``
       become LaTeX math that math-verify reads (``parse("4√{3}")`` alone gives 4, so ``r1v`` credits
       ``4`` for ``4√{3}``). Notations it does not rewrite (``4 * pi``, ``9pi``, some ``sqrt(3)/2``)
       it rejects where ``r1v`` may accept: the protocols differ in both directions.
    3. A span equal to the ground truth as strings, whitespace aside, is correct.
    4. Only without an ``<answer>`` span is the output read whole, and then only its last
       :data:`MAX_FALLBACK_CHARS` characters.

    It exists to judge what the answer says rather than what math-verify's extraction picks, and to
    audit ``r1v`` numbers; accuracies compared with the paper's must use ``r1v``. It never raises on
    model text: math-verify errors and timeouts are treated as "not parsed".
    """

    name: ClassVar[str] = "geometry"
    protocol: ClassVar[str] = "normalized"

    def score(self, completion: str, ground_truth: Any) -> Score:
        gold_text = str(ground_truth).strip()
        timeout = _timeout()
        span = answer_span(completion)
        if span is not None and len(span) > MAX_ANSWER_CHARS:
            # No GeoQA answer is this long: a list of candidates (reward hacking) or runaway output, and
            # math-verify would spend seconds on it or pick one of the candidates.
            return Score(correct=False, extracted=span[:64], parsed=False)
        if span is not None:
            correct, parsed = _judge_span(span, gold_text, timeout)
            return Score(correct=correct, extracted=span if parsed else (span or None), parsed=parsed)

        # No answer tags: fall back to the whole output, as R1-V's evaluation does.
        gold = list(_parse_gold(gold_text, timeout))
        candidate = _mv_parse(to_math_verify_input(completion[-MAX_FALLBACK_CHARS:]), timeout)
        if not candidate:
            return Score(correct=False, extracted=None, parsed=False)
        return Score(correct=_mv_verify(gold, candidate, timeout), extracted=_readable(candidate), parsed=True)

    def reward(self, completion: str, ground_truth: Any) -> float:
        """1.0 only for a correct answer inside the tags: the whole-output fallback is evaluation only."""
        if answer_span(completion) is None:
            return 0.0
        return 1.0 if self.score(completion, ground_truth).correct else 0.0


# Longest output the r1v scorer hands to math-verify. A guard, not part of R1-V's rule: math-verify's
# extraction grows quadratically on some inputs (space-separated numbers: 1.2 s at 29,000 characters,
# 5.2 s at 61,000, and without a timeout off the main thread), while a 1024-token completion is ~4,000
# to 6,000 characters (4-6 characters a token); 20,000 would need 20 a token. So no realistic output
# reaches it, and its verdict is never changed; a longer one is wrong and unparsed, unread.
MAX_R1V_CHARS = 20_000


@functools.lru_cache(maxsize=4096)
def _r1v_gold(gold: str, timeout: int | None) -> tuple[Any, ...]:
    # Ground truths repeat across a GRPO group and across epochs: parse each once.
    return tuple(_mv_parse(gold, timeout))


def r1v_verdict(completion: str, ground_truth: Any) -> Score:
    """R1-V's GeoQA rule: ``verify(parse(ground_truth), parse(completion))``, math-verify's defaults.

    No rewriting and no answer-span logic: ``completion`` is parsed whole, as given. An empty parse is
    wrong. math-verify errors and timeouts (5 s, in the main thread only: its SIGALRM does not work
    elsewhere) count as "nothing parsed" / "not equal", as math-verify itself returns them with
    ``raise_on_error=False``. The one guard: a completion over :data:`MAX_R1V_CHARS` is wrong unread.
    """
    if len(completion) > MAX_R1V_CHARS:
        return Score(correct=False, extracted=None, parsed=False)
    timeout = _timeout()
    candidate = _mv_parse(completion, timeout)
    if not candidate:
        return Score(correct=False, extracted=None, parsed=False)
    gold = list(_r1v_gold(str(ground_truth), timeout))
    return Score(correct=_mv_verify(gold, candidate, timeout), extracted=_readable(candidate)[:200], parsed=True)


class R1VGeometryScorer(_GeometryScorer):
    """GeoQA scoring under the ``r1v`` protocol: R1-V's evaluation exactly (:func:`r1v_verdict`).

    ``score`` parses the whole output, reasoning included, with math-verify's defaults and nothing
    rewritten, which reproduces R1-V's logged verdicts item for item. ``reward`` additionally requires
    that the ``<answer>`` span alone gets the same verdict, so a correct value that math-verify picks up
    outside the tags (in the reasoning, after ``</answer>``, or with no tags at all) earns nothing;
    it never pays more than ``score``.
    """

    name: ClassVar[str] = "geometry"
    protocol: ClassVar[str] = "r1v"

    def score(self, completion: str, ground_truth: Any) -> Score:
        return r1v_verdict(completion, ground_truth)

    def reward(self, completion: str, ground_truth: Any) -> float:
        """1.0 when R1-V's verdict on the whole output and on the ``<answer>`` span alone are both right."""
        span = answer_span(completion)
        if span is None or not r1v_verdict(span, ground_truth).correct:
            return 0.0
        return 1.0 if r1v_verdict(completion, ground_truth).correct else 0.0

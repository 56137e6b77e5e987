"""R1-V's format rule (the format reward, and the format rate every evaluation reports) and the
``<answer>`` span the scorers read.

Both run in linear time on whatever a policy emits: a lazy regex backtracks over every ``</think>`` of a
100,000-character output, so the checks are string searches that decide the same language.
"""

from __future__ import annotations

import re

__all__ = ["FORMAT_PATTERN", "answer_span", "format_ok"]

#: R1-V's format rule: a thinking block followed by an answer block and nothing else.
FORMAT_PATTERN: re.Pattern[str] = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def format_ok(completion: str) -> bool:
    """True when the whole completion is ``<think>...</think> <answer>...</answer>``.

    Surrounding whitespace is tolerated (decoders often emit a trailing newline), anything else
    before ``<think>`` or after ``</answer>`` is not. The same language as FORMAT_PATTERN's fullmatch,
    decided by string search in linear time: the regex backtracks over every ``</think>`` of a
    policy's 100,000-character output.
    """
    text = completion.strip()
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return False
    last_answer_open = len(text) - len("</answer>") - len("<answer>")
    position = text.find("</think>", len("<think>"))
    while position != -1:
        after = position + len("</think>")
        while after < len(text) and text[after].isspace():
            after += 1
        if after <= last_answer_open and text.startswith("<answer>", after):
            return True
        position = text.find("</think>", position + 1)
    return False


def answer_span(completion: str) -> str | None:
    """Stripped contents of the first ``<answer>...</answer>`` block, or None if there is none.
    (Two finds, linear time: a lazy regex rescans to the end after every unclosed ``<answer>``.)"""
    start = completion.find("<answer>")
    if start == -1:
        return None
    end = completion.find("</answer>", start + len("<answer>"))
    return None if end == -1 else completion[start + len("<answer>"):end].strip()

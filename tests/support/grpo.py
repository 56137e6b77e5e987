"""Helpers shared by tests/ and tests/e2e/ (see each test file)."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config

from othink_mr1.rewards import grpo_rewards

# The random tiny model never answers correctly, so accuracy and format rewards are all zero and carry
# no signal; a reward that varies between completions exercises the training machinery.
# The paper's rewards stay (weight 0: still computed and logged).
VARYING = ["method.rewards.accuracy=0.0", "method.rewards.format=0.0", "+method.rewards.length_mod=1.0"]


@pytest.fixture(autouse=True)
def varying_reward(monkeypatch):
    monkeypatch.setitem(grpo_rewards.REWARDS, "length_mod", lambda completions, **_: [float(len(c) % 5) for c in completions])


def grpo_cfg(tmp_path, *overrides: str):
    return compose_config(["model=tiny", *VARYING, *overrides], output_dir=tmp_path / "outputs")


class Scripted(torch.nn.Module):
    """An output head that makes row r emit scripts[r][t] at step t (its last token once the script ends)."""

    def __init__(self, vocab: int, scripts: list[list[int]]):
        super().__init__()
        self.vocab, self.scripts, self.calls = vocab, scripts, 0

    def forward(self, hidden):
        logits = torch.full((*hidden.shape[:-1], self.vocab), -1e4)
        for row, script in enumerate(self.scripts):
            logits[row, ..., script[min(self.calls, len(script) - 1)]] = 1e4
        self.calls += 1
        return logits


def special_ids(tok):
    return tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")

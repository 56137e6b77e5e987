"""GRPO training on the tiny model: parameters move, accumulation is exact, the reference model is only
loaded when beta can be positive, and a resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CACHE
from support.numerics import assert_close_normwise
from support.grpo import VARYING, Scripted, grpo_cfg, special_ids, varying_reward  # noqa: F401 - varying_reward: an autouse fixture

from othink_mr1.data.collate import PromptCollator
from othink_mr1.data.tasks import TaskSplit, load_split
from othink_mr1.methods.grpo import GRPOModule
from othink_mr1.methods.kl_schedules import ConstantKL
from othink_mr1.models.rollouts import completion_mask
from othink_mr1.runner import build_module


def rollouts_for(module, processor, task, cache, prompts=4):
    """Completions for 4 prompts sampled once, then cut into micro-batches of 1 and of 4 prompts."""
    split = TaskSplit(task, "train", load_split(task, "train", str(cache)))
    examples = [split[i] for i in range(prompts)]
    collate = PromptCollator(processor, task.prompt)
    whole = collate(examples)
    torch.manual_seed(0)
    completions = module.sample(whole)
    G = module.method.num_generations
    singles = [module.build_rollout(collate([ex]), completions[i * G:(i + 1) * G]) for i, ex in enumerate(examples)]
    return [module.build_rollout(whole, completions)], singles


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
def test_accumulation_4x1_equals_1x4(tmp_path, tiny, aggregation, threads):
    """The same gradient up to the order of float sums (support/numerics.py), at each thread count."""
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    cfg = grpo_cfg(tmp_path, f"method.loss_aggregation={aggregation}")
    module = GRPOModule(model, processor, cfg.method, total_steps=10, kl=ConstantKL(0.1),
                        reference=copy.deepcopy(tiny[0]).eval(), scorer="counting", max_new_tokens=12)
    one_by_four, four_by_one = rollouts_for(module, processor, cfg.task, CACHE)
    grads = []
    for rollouts in (one_by_four, four_by_one):
        model.zero_grad()
        module.accumulate_gradients(rollouts, beta=0.1, backward=lambda loss: loss.backward())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    whole = one_by_four[0]  # a weight gradient sums over each of its rows' prompt + completion positions
    length = (whole.inputs["input_ids"].shape[1] if whole.inputs is not None
              else whole.prompts["input_ids"].shape[1] + whole.completion_ids.shape[1])
    tokens = whole.completion_ids.shape[0] * length
    for name in grads[0]:
        assert_close_normwise(grads[1][name], grads[0][name], terms=tokens, name=name)


def test_reference_model_only_when_beta_can_be_positive(tmp_path, tiny):
    model, processor = tiny
    for kl, expected in (("none", False), ("constant", True), ("grpo_d", True), ("adaptive", True)):
        cfg = grpo_cfg(tmp_path, f"kl={kl}")
        module = build_module(cfg, model, processor, budget=type("B", (), {"total_steps": 2})(),
                              data_position=None, eval_kwargs={})
        assert (module.reference is not None) == expected, kl
        if module.reference is not None:
            assert all(not p.requires_grad for p in module.reference.parameters())
            assert not module.reference.training
            # Outside the optimizer and the checkpoint: not a submodule.
            assert not any(k.startswith("_reference") for k in module.state_dict())
    cfg = grpo_cfg(tmp_path, "kl=constant", "kl.beta=0.0")
    assert build_module(cfg, model, processor, type("B", (), {"total_steps": 2})(), None, {}).reference is None


def test_completion_mask_stops_after_the_first_stop_token():
    ids = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert completion_mask(ids, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    # Two stop ids, the second also the pad token (<|endoftext|>): the first one ends the row, the pads
    # after it are masked, a row that never stopped keeps its whole length.
    ids = torch.tensor([[5, 1, 1, 1], [5, 6, 2, 1], [5, 6, 7, 8], [1, 1, 1, 1]])
    mask = completion_mask(ids, [2, 1])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert mask.sum(dim=1).tolist() == [2, 3, 4, 1]


@pytest.mark.parametrize("share", [True, False], ids=["shared-prefix", "plain-generate"])
def test_sampling_stops_at_every_eos_id_of_the_generation_config(tmp_path, tiny, share, monkeypatch):
    """Qwen2-VL's hub generation config ends a turn at <|im_end|> or <|endoftext|>: sampling stops at
    either, and the completion mask (so the loss and the length) ends there."""
    from othink_mr1.models import decoding

    monkeypatch.setattr(decoding, "MIN_BUCKET", 1024)  # the scripted head addresses rows by position: no compaction
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    tok = processor.tokenizer
    im_end, endoftext = special_ids(tok)
    assert tok.pad_token_id == endoftext  # the pad token is a stop id too
    model.generation_config.eos_token_id = [im_end, endoftext]
    cfg = grpo_cfg(tmp_path, "kl=constant", "kl.beta=0.0", f"method.share_prompt_prefix={str(share).lower()}")
    module = build_module(cfg, model, processor, type("B", (), {"total_steps": 2})(), None, {})
    split = TaskSplit(cfg.task, "train", load_split(cfg.task, "train", str(CACHE)))
    batch = PromptCollator(processor, cfg.task.prompt)([split[i] for i in range(2)])
    assert module.shares_prompts(batch) == share
    a, b = tok.convert_tokens_to_ids(["a", "b"])
    G = cfg.method.num_generations
    scripts = [[a, endoftext, b], [a, b, im_end, b], [a, b]] + [[b, b, b, im_end]] * (2 * G - 3)
    model.lm_head = Scripted(len(tok), scripts)
    ids = module.sample(batch)
    assert ids[0].tolist()[:2] == [a, endoftext] and set(ids[0].tolist()[2:]) == {endoftext}  # pads after the end
    assert ids[1].tolist()[:3] == [a, b, im_end]
    rollout = module.build_rollout(batch, ids)
    lengths = rollout.completion_mask.sum(dim=1).tolist()
    assert lengths[:3] == [2, 3, 12] and set(lengths[3:]) == {4}  # 12: the budget, never stopped
    assert tok.batch_decode(ids[:2], skip_special_tokens=True) == ["a", "ab"]


@pytest.mark.parametrize("share", [True, False], ids=["shared-prefix", "plain-generate"])
def test_an_extra_stop_id_that_never_occurs_changes_no_sampled_token(tmp_path, tiny, share):
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    tok = processor.tokenizer
    im_end, endoftext = special_ids(tok)
    cfg = grpo_cfg(tmp_path, "kl=constant", "kl.beta=0.0", f"method.share_prompt_prefix={str(share).lower()}")
    module = build_module(cfg, model, processor, type("B", (), {"total_steps": 2})(), None, {})
    split = TaskSplit(cfg.task, "train", load_split(cfg.task, "train", str(CACHE)))
    batch = PromptCollator(processor, cfg.task.prompt)([split[i] for i in range(3)])
    samples = []
    for stops in (im_end, [im_end, endoftext]):  # the tokenizer's end of turn only (as before), then both
        model.generation_config.eos_token_id = stops
        torch.manual_seed(11)
        samples.append(module.sample(batch))
    assert not (samples[0] == endoftext).any()
    assert torch.equal(samples[0], samples[1])



"""GRPO training on the tiny model: parameters move, accumulation is exact, the reference model is only
loaded when beta can be positive, and a resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CACHE, compose_config

from othink_mr1.data.collate import PromptCollator
from othink_mr1.data.tasks import TaskSplit, load_split
from othink_mr1.methods.grpo import GRPOModule
from othink_mr1.models.rollouts import completion_mask
from othink_mr1.methods.kl_schedules import ConstantKL
from othink_mr1.models.factory import load_local
from othink_mr1.rewards import grpo_rewards
from othink_mr1.runner import build_module, run
from othink_mr1.utils.errors import ConfigError

# The random tiny model never answers correctly, so accuracy and format rewards are all zero and carry
# no signal; a reward that varies between completions exercises the training machinery.
# The paper's rewards stay (weight 0: still computed and logged).
VARYING = ["method.rewards.accuracy=0.0", "method.rewards.format=0.0", "+method.rewards.length_mod=1.0"]


@pytest.fixture(autouse=True)
def varying_reward(monkeypatch):
    monkeypatch.setitem(grpo_rewards.REWARDS, "length_mod", lambda completions, **_: [float(len(c) % 5) for c in completions])


def grpo_cfg(tmp_path, *overrides: str):
    return compose_config(["model=tiny", *VARYING, *overrides], output_dir=tmp_path / "outputs")


def test_geometry_is_checked_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"method.prompts_per_step=4 must equal method.batch_size=3 x "
                                          r"method.accumulate_grad_batches=1 x 1 process\(es\) = 3"):
        run(grpo_cfg(tmp_path, "method.batch_size=3"))
    with pytest.raises(ConfigError, match="method.num_generations=1: GRPO needs at least 2"):
        run(grpo_cfg(tmp_path, "method.num_generations=1"))
    with pytest.raises(ConfigError, match=r"method.rewards: unknown reward\(s\) \['speed'\]"):
        run(grpo_cfg(tmp_path, "+method.rewards.speed=1.0"))
    with pytest.raises(ConfigError, match="kl=constant applies to GRPO only"):
        run(compose_config(["model=tiny", "method=sft", "kl=constant"], output_dir=tmp_path))


def test_a_few_grpo_steps_change_every_trainable_parameter(tmp_path, tiny):
    cfg = grpo_cfg(tmp_path, "method.max_steps=3", "method.lr=1e-3", "kl=constant", "save_model=true",
                   "eval.row_zero=false")
    start = {n: p.detach().clone() for n, p in tiny[0].named_parameters()}
    results = run(cfg)
    # Loaded as the runner loads a model, so the names are the in-memory ones (the saved file's keys
    # follow the checkpoint layout: compared by key, no name would match).
    trained = dict(load_local(Path(cfg.paths.run_dir) / "model")[0].named_parameters())
    assert trained.keys() == start.keys()
    unchanged = [n for n, p in start.items() if torch.equal(trained[n], p)]
    assert not unchanged, f"not updated by GRPO: {unchanged}"
    assert results["train"]["steps"] == 3 and results["train"]["samples"] == 12
    assert results["method"] == "grpo" and results["run_name"] == "counting_grpo_tiny_seed42"
    # How rollouts were decoded: the fixed-shape loop, eager under auto on a CPU.
    assert results["train"]["decode"] == {"compile": "auto", "compiled": False, "fallback": None, "loop": "static"}


def test_step_metrics_are_logged(tmp_path):
    import csv

    cfg = grpo_cfg(tmp_path, "method.max_steps=2", "eval.row_zero=false")
    run(cfg)
    rows = [r for r in csv.DictReader((Path(cfg.paths.run_dir) / "csv" / "metrics.csv").open()) if r["train/loss"]]
    assert len(rows) == 2
    for key in ("train/loss", "train/kl", "train/beta", "train/reward", "train/reward_std", "train/frac_reward_zero_std",
                "train/clip_ratio", "train/completion_len", "train/reward/length_mod", "progress/samples", "train/lr"):
        assert rows[0][key] != "", key
    # grpo_d over 2 steps: beta_mid at step 0, then rising after the turn at w = 0.6.
    assert [float(r["train/beta"]) for r in rows] == pytest.approx([0.07, 0.04 + 0.06 * 0.4 / 1.4])
    assert float(rows[0]["train/kl"]) == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 0
    assert float(rows[0]["train/clip_ratio"]) == 0.0  # mu = 1: the clip is inert


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
def test_accumulation_4x1_equals_1x4(tmp_path, tiny, aggregation):
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
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-7), name


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


@pytest.mark.slow  # three short runs
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    # With a training curve at steps 0, 2 and 4: the stop comes after step 2, whose point the checkpoint holds.
    common = ["method.max_steps=4", "method.lr=1e-3", "kl=adaptive", "trainer.checkpoint_every_n_steps=1",
              "save_model=true", "eval.row_zero=false", "eval.curve_points=3", "eval.curve_items=4",
              "eval.curve_samples=2"]
    uninterrupted = compose_config(["model=tiny", *VARYING, *common], output_dir=tmp_path / "a")
    run(uninterrupted)

    interrupted = compose_config(["model=tiny", *VARYING, *common], output_dir=tmp_path / "b")
    original = GRPOModule.training_step

    def crash_at_step_2(self, batch, batch_idx):
        if self.global_step == 2:
            raise KeyboardInterrupt("simulated preemption")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(GRPOModule, "training_step", crash_at_step_2)
    with pytest.raises(BaseException):
        run(interrupted)
    run_dir = Path(interrupted.paths.run_dir)
    assert not (run_dir / "results.json").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2 and saved["kl_schedule"]["beta"] != 0.04

    monkeypatch.setattr(GRPOModule, "training_step", original)
    resumed = compose_config(["model=tiny", *VARYING, *common, "resume=true"], output_dir=tmp_path / "b")
    assert sorted(saved["callbacks"]["TrainingCurve"]["points"]) == ["0", "2"]
    results = run(resumed)
    assert results["train"]["steps"] == 4 and results["train"]["resumed_from"].endswith("last.ckpt")
    whole = json.loads((Path(uninterrupted.paths.run_dir) / "results.json").read_text())
    assert list(results["curve"]) == ["0", "2", "4"] and results["curve"] == whole["curve"]
    a = load_file(str(Path(uninterrupted.paths.run_dir) / "model" / "model.safetensors"))
    b = load_file(str(run_dir / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # Nothing of the first attempt was lost: its metrics stay, the resumed attempt logs beside them.
    assert (run_dir / "csv" / "metrics.csv").exists() and (run_dir / "csv" / "resume_1" / "metrics.csv").exists()
    assert len((run_dir / "resumes.jsonl").read_text().splitlines()) == 1


def test_resume_refuses_a_changed_config_or_a_missing_checkpoint(tmp_path):
    cfg = grpo_cfg(tmp_path, "method.max_steps=2", "eval.row_zero=false")
    with pytest.raises(ConfigError, match="resume=True: no checkpoint at"):
        run(grpo_cfg(tmp_path, "method.max_steps=2", "eval.row_zero=false", "resume=true"))
    run_dir = Path(cfg.paths.run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run_dir / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="the config differs from the one this run started with"):
        run(grpo_cfg(tmp_path, "method.max_steps=2", "eval.row_zero=false", "resume=true"))

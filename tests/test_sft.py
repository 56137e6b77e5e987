"""SFT: a few steps on the tiny model move every trainable parameter; the lr schedules are right."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from othink_mr1.config import SFTConfig, SyntheticDataConfig, TaskConfig
from othink_mr1.data.collate import SFTCollator
from othink_mr1.data.tasks import TaskSplit, load_split
from othink_mr1.methods.lr_schedules import build_scheduler, lr_multiplier
from othink_mr1.methods.sft import SFTModule


def counting_train(cache_dir, n=16):
    task = OmegaConf.structured(TaskConfig(name="counting", source="synthetic_counting", scorer="counting",
                                           prompt="{question} Answer in <answer> </answer> tags.",
                                           synthetic=SyntheticDataConfig(num_train=n, num_test=4)))
    return task, TaskSplit(task, "train", load_split(task, "train", str(cache_dir)))


def fit(model, processor, loader, steps, **method):
    settings = dict(lr=1e-3, warmup_ratio=0.0, lr_schedule="constant", batch_size=loader.batch_size, epochs=1,
                    accumulate_grad_batches=1, target="auto", loss_on="assistant") | method
    cfg = OmegaConf.structured(SFTConfig(name="sft", **settings))
    module = SFTModule(model, processor, cfg, total_steps=steps)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=cfg.max_grad_norm)
    trainer.fit(module, train_dataloaders=loader)
    return module


def test_a_few_sft_steps_change_every_trainable_parameter(tiny, tmp_path):
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    task, split = counting_train(tmp_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loader = DataLoader(split, batch_size=4, collate_fn=SFTCollator(processor, task.prompt))
    module = fit(model, processor, loader, steps=3)
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged, f"parameters not updated by SFT: {unchanged}"
    assert module.samples_seen == 12
    assert module.global_step == 3


def test_sft_loss_goes_down_on_a_fixed_batch(tiny, tmp_path):
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    task, split = counting_train(tmp_path, n=4)
    batch = SFTCollator(processor, task.prompt)([split[i] for i in range(4)])
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        start = model(**inputs).loss.item()
    fit(model, processor, DataLoader(split, batch_size=4, collate_fn=SFTCollator(processor, task.prompt)), steps=20)
    with torch.no_grad():
        end = model.eval()(**inputs).loss.item()
    assert end < 0.5 * start


def test_frozen_parameters_stay_frozen_and_out_of_the_optimizer(tiny, tmp_path):
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    task, split = counting_train(tmp_path, n=8)
    module = fit(model, processor, DataLoader(split, batch_size=4, collate_fn=SFTCollator(processor, task.prompt)), steps=2)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    optimized = {id(p) for group in module.optimizers().optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimized for p in model.model.visual.parameters())


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_lr_schedule_warms_up_then_decays(kind):
    total, warmup = 100, 10
    values = [lr_multiplier(s, total, warmup, kind) for s in range(total + 1)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values[:10], values[1:10]))  # rising during warmup
    if kind == "constant":
        assert values[50] == values[100] == 1.0
    elif kind == "linear":
        assert values[55] == pytest.approx(0.5) and values[100] == pytest.approx(0.0)
    else:
        assert values[55] == pytest.approx(0.5) and values[100] == pytest.approx(0.0)
        assert values[30] == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 90)))


def test_schedule_rejects_an_unknown_kind_and_drives_the_optimizer():
    with pytest.raises(ValueError, match="method.lr_schedule='step'"):
        lr_multiplier(0, 10, 0, "step")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total_steps=10, warmup_ratio=0.2, kind="linear")
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(1 / 8)

"""SFT fits: every trainable parameter moves, frozen parameters stay out of the optimizer, the loss goes down on
a fixed batch (the collator and labels: tests/methods/test_sft.py)."""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from othink_mr1.config import SFTConfig, SyntheticDataConfig, TaskConfig
from othink_mr1.data.collate import SFTCollator
from othink_mr1.data.tasks import TaskSplit, load_split
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

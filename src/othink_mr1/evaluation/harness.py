"""The evaluation harness every method shares: batched greedy generation, scoring, outputs.

Used by in-training validation, by the row-zero and final evaluations of a run, by
`python run.py mode=eval`, and by the tiny_base build. Writes, per evaluation stage:

    <run_dir>/eval/<stage>/results.json                   metrics of every eval split
    <run_dir>/eval/<stage>/<task>/completions.jsonl        one scored completion per item
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.batch_layout import model_inputs
from ..models.rollouts import completion_mask, stop_token_ids, suppressed_token_ids
from ..rewards.base import DEFAULT_PROTOCOL, check_protocol
from ..rewards.scorers import get_scorer
from .metrics import ItemResult, score_item, summarize


@dataclass
class EvalSpec:
    """What to generate and how to score, per eval split name."""

    scorers: dict[str, str]  # task name -> scorer name
    max_new_tokens: dict[str, int]  # task name -> generation budget
    # Scoring protocol of every task (rewards.base.PROTOCOLS; eval.protocol in a run's config).
    protocol: str = DEFAULT_PROTOCOL

    def __post_init__(self) -> None:
        check_protocol(self.protocol)


def effective_max_new_tokens(task_max: int, model_cap: int | None) -> int:
    return min(task_max, model_cap) if model_cap else task_max


@torch.no_grad()
def generate(model: Any, processor: Any, batch: dict[str, Any], max_new_tokens: int,
             sampling: dict[str, Any] | None = None) -> tuple[list[str], list[int]]:
    """Completions for a left-padded prompt batch, and each one's length in tokens (up to and including the
    first stop token, `stop_token_ids`; the full budget when it never stopped). Greedy unless `sampling`
    passes generate() options (do_sample, temperature, num_return_sequences: rows then come prompt by prompt)."""
    tokenizer = processor.tokenizer
    inputs = model_inputs(batch)
    stop_ids = stop_token_ids(model, tokenizer)
    # do_sample=False wins over a hub config's sampling defaults (Qwen2-VL: do_sample, top_k 1, temperature 0.01).
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, **{"do_sample": False, **(sampling or {})},
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids,
                         suppress_tokens=suppressed_token_ids(processor))
    completion_ids = out[:, inputs["input_ids"].shape[1]:]
    lengths = completion_mask(completion_ids, stop_ids).sum(dim=1).tolist()
    # Only the tokens up to the end: an ended row's pads are never decoded.
    texts = [tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(completion_ids, lengths)]
    return texts, lengths


@dataclass
class EvalAccumulator:
    """Collects scored items per eval split during one evaluation pass."""

    spec: EvalSpec
    items: dict[str, dict[int, ItemResult]] = field(default_factory=dict)

    def add(self, task: str, meta: dict[str, list], outputs: list[str], lengths: list[int]) -> None:
        scorer = get_scorer(self.spec.scorers[task], self.spec.protocol)
        bucket = self.items.setdefault(task, {})
        for question, answer, index, text, n in zip(meta["questions"], meta["answers"], meta["indices"], outputs, lengths):
            # Keyed by item index, so gathering the ranks' shards can check that none overlap.
            bucket[index] = score_item(scorer, text, answer, question=question, completion_tokens=n)

    def ordered(self, task: str) -> list[ItemResult]:
        bucket = self.items.get(task, {})
        return [bucket[i] for i in sorted(bucket)]

    def summaries(self) -> dict[str, dict[str, Any]]:
        return {task: summarize(self.ordered(task)) for task in self.items}


def gather_items(items: dict[str, dict[int, ItemResult]]) -> dict[str, dict[int, ItemResult]]:
    """All ranks' items on every rank (a no-op in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, items)
    merged: dict[str, dict[int, ItemResult]] = {}
    for rank, part in enumerate(gathered):
        for task, bucket in part.items():
            target = merged.setdefault(task, {})
            twice = sorted(set(bucket) & set(target))
            if twice:
                raise RuntimeError(f"evaluation: {task} items {twice[:5]} were scored on rank {rank} and on another "
                                   "rank; every test item must be scored once (ShardSampler)")
            target.update(bucket)
    return merged


def write_stage(stage_dir: Path, summaries: dict[str, dict], acc: EvalAccumulator, extra: dict | None = None,
                write_completions: bool = True) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    if write_completions:
        for task in summaries:
            task_dir = stage_dir / task
            task_dir.mkdir(parents=True, exist_ok=True)
            with (task_dir / "completions.jsonl").open("w", encoding="utf-8") as fh:
                for item in acc.ordered(task):
                    fh.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
    payload = {"results": summaries, **(extra or {})}
    (stage_dir / "results.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False))


def format_table(rows: dict[str, dict[str, dict[str, Any]]], tasks: list[str], metric: str = "accuracy") -> str:
    """A plain-text table: one row per stage (e.g. before/after), one column per eval task (%)."""
    width = max([len(r) for r in rows] + [5])
    head = f"{'':<{width}}  " + "  ".join(f"{t:>12}" for t in tasks)
    lines = [head, "-" * len(head)]
    for label, summary in rows.items():
        cells = []
        for t in tasks:
            value = summary.get(t, {}).get(metric)
            cells.append(f"{100 * value:>11.2f}%" if value is not None else f"{'-':>12}")
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)

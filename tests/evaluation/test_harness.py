"""The evaluation harness pieces: generation lengths, per-index dedupe, stage files, the table."""

from __future__ import annotations

import copy
import json

import torch
from PIL import Image

from othink_mr1.data.collate import PromptCollator
from othink_mr1.data.records import Example
from othink_mr1.evaluation.harness import EvalAccumulator, EvalSpec, format_table, generate, write_stage
from othink_mr1.models.rollouts import stop_token_ids


def test_generate_is_greedy_and_counts_tokens_up_to_the_end_of_turn(tiny):
    model, processor = tiny
    examples = [Example(images=[Image.new("RGB", (112, 112), c)], question=q, answer="3", target="", index=i)
                for i, (c, q) in enumerate([("red", "How many?"), ("blue", "How many items are there in the image?")])]
    batch = PromptCollator(processor, "{question}")(examples)
    texts, lengths = generate(model.eval(), processor, batch, max_new_tokens=6)
    again, _ = generate(model, processor, batch, max_new_tokens=6)
    assert texts == again and len(texts) == 2
    # Recompute each length from a fresh generate: up to and including <|im_end|>, else the budget.
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    eos = processor.tokenizer.eos_token_id
    expected = [row.tolist().index(eos) + 1 if eos in row.tolist() else 6 for row in out]
    assert lengths == expected


def test_generation_stops_at_every_eos_id_of_the_generation_config(tiny):
    """Qwen2-VL's hub generation config lists two end ids (<|im_end|>, <|endoftext|>): a completion
    ending on either stops there, in length and text, although the tokenizer's eos is <|im_end|>."""
    from support.grpo import Scripted, special_ids

    model, processor = copy.deepcopy(tiny[0]).eval(), tiny[1]
    tok = processor.tokenizer
    im_end, endoftext = special_ids(tok)
    assert stop_token_ids(model, tok) == [im_end]
    model.generation_config.eos_token_id = [im_end, endoftext]
    assert stop_token_ids(model, tok) == [im_end, endoftext]
    model.generation_config.eos_token_id = endoftext  # an int, and the tokenizer's eos still counts
    assert stop_token_ids(model, tok) == [endoftext, im_end]
    model.generation_config.eos_token_id = [im_end, endoftext]
    examples = [Example(images=[Image.new("RGB", (112, 112), c)], question=q, answer="3", target="", index=i)
                for i, (c, q) in enumerate([("red", "How many?"), ("blue", "How many items are there in the image?"),
                                            ("green", "Count them.")])]
    batch = PromptCollator(processor, "{question}")(examples)
    a, b = tok.convert_tokens_to_ids(["a", "b"])
    model.lm_head = Scripted(len(tok), [[a, b, endoftext, a], [a, im_end, b], [b]])
    texts, lengths = generate(model, processor, batch, max_new_tokens=6)
    assert lengths == [3, 2, 6] and texts == ["ab", "a", "bbbbbb"]


def test_accumulator_keys_items_by_index_and_writes_a_stage(tmp_path):
    acc = EvalAccumulator(EvalSpec(scorers={"counting": "counting"}, max_new_tokens={"counting": 8}))
    meta = {"questions": ["q0", "q1"], "answers": ["3", "4"], "indices": [1, 0]}
    acc.add("counting", meta, ["<answer> 3 </answer>", "<answer> 5 </answer>"], [5, 5])
    # A distributed sampler pads shards by repeating items: the repeat must not count twice.
    acc.add("counting", {"questions": ["q0"], "answers": ["3"], "indices": [1]}, ["<answer> 3 </answer>"], [5])
    summary = acc.summaries()["counting"]
    assert (summary["n"], summary["correct"], summary["accuracy"]) == (2, 1, 0.5)
    assert [item.question for item in acc.ordered("counting")] == ["q1", "q0"]
    write_stage(tmp_path / "final", acc.summaries(), acc, extra={"stage": "final"})
    saved = json.loads((tmp_path / "final" / "results.json").read_text())
    assert saved["stage"] == "final" and saved["results"]["counting"]["accuracy"] == 0.5
    lines = (tmp_path / "final" / "counting" / "completions.jsonl").read_text().splitlines()
    assert [json.loads(line)["correct"] for line in lines] == [False, True]


def test_format_table_shows_percentages_and_gaps():
    table = format_table({"before": {"counting": {"accuracy": 0.275}}, "after": {"counting": {"accuracy": 0.565},
                                                                               "geometry": {"accuracy": 0.0}}},
                         ["counting", "geometry"])
    lines = table.splitlines()
    assert lines[0].split() == ["counting", "geometry"]
    assert lines[2].split() == ["before", "27.50%", "-"]
    assert lines[3].split() == ["after", "56.50%", "0.00%"]

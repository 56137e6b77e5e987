"""A GRPO reward reads any record column by name: the example carries its row's columns (images aside),
the prompt collator passes them per prompt, and build_rollout hands each to the rewards as a keyword
list, one value per completion. A new reward needs only its entry in REWARDS."""

from __future__ import annotations

import pytest
import torch
from conftest import CACHE, compose_config

from othink_mr1.data.collate import PromptCollator
from othink_mr1.data.tasks import TaskSplit, load_split
from othink_mr1.methods.grpo import GRPOModule, reward_columns
from othink_mr1.methods.kl_schedules import ConstantKL
from othink_mr1.rewards import grpo_rewards

G = 3


def test_a_registered_reward_gets_a_record_column_per_completion(tiny, tmp_path, monkeypatch):
    """Geometry records carry `family`, which no built-in reward reads: a throwaway reward registered in
    REWARDS alone receives it, each prompt's value repeated for its G completions, next to the built-in
    columns (unchanged)."""
    seen: dict[str, list] = {}

    def family_reward(completions, *, family, answer, question, scorer, protocol, **_):
        seen.update(family=family, answer=answer, question=question, scorer=scorer, protocol=protocol,
                    problem=_["problem"], solution=_["solution"])
        return [float(len(f)) for f in family]

    monkeypatch.setitem(grpo_rewards.REWARDS, "family_len", family_reward)
    cfg = compose_config(["model=tiny", "task=geometry", f"method.num_generations={G}", "+method.rewards.family_len=1.0"],
                         output_dir=tmp_path)
    ds = load_split(cfg.task, "train", str(CACHE))
    split = TaskSplit(cfg.task, "train", ds)
    # Three prompts of different families, so a value landing on another prompt's completions shows.
    chosen, families = [], []
    for index in range(len(split)):
        if ds[index]["family"] not in families:
            chosen.append(index)
            families.append(ds[index]["family"])
        if len(chosen) == 3:
            break
    assert len(chosen) == 3
    examples = [split[i] for i in chosen]
    # The example carries every column of its row but the image, as the row holds it.
    assert examples[0].fields == {k: v for k, v in ds[chosen[0]].items() if k != "image"}
    assert set(examples[0].fields) == {"problem", "solution", "family"}
    batch = PromptCollator(tiny[1], cfg.task.prompt)(examples)
    assert [f["family"] for f in batch["meta"]["fields"]] == families

    module = GRPOModule(tiny[0], tiny[1], cfg.method, total_steps=4, kl=ConstantKL(0.0), scorer=cfg.task.scorer,
                        max_new_tokens=8)
    completions = torch.randint(20, 200, (3 * G, 8), generator=torch.Generator().manual_seed(0))
    rollout = module.build_rollout(batch, completions)

    def per_completion(values):
        return [v for v in values for _ in range(G)]

    assert seen["family"] == per_completion(families)
    assert seen["problem"] == per_completion([ds[i]["problem"] for i in chosen])
    assert seen["solution"] == per_completion([ds[i]["solution"] for i in chosen])
    # The built-in columns are what they always were.
    assert seen["answer"] == per_completion([ex.answer for ex in examples])
    assert seen["question"] == per_completion([ex.question for ex in examples])
    assert seen["scorer"] == ["geometry"] * (3 * G) and seen["protocol"] == ["r1v"] * (3 * G)
    assert rollout.reward_parts["family_len"].tolist() == per_completion([float(len(f)) for f in families])


def test_reward_columns_repeat_each_field_and_let_the_built_in_names_win():
    fields = [{"difficulty": 2, "answer": "raw", "completions": "x"}, {"difficulty": 5, "source": "hub"}]
    columns = reward_columns(fields, 2, answer=["3", "4"], scorer=["counting", "counting"])
    assert columns == {"difficulty": [2, 2, 5, 5], "answer": ["3", "3", "4", "4"], "source": [None, None, "hub", "hub"],
                       "scorer": ["counting"] * 4}
    # No record fields (an Example built by hand): the built-in columns alone.
    assert reward_columns([], 3, answer=["1"]) == {"answer": ["1", "1", "1"]}


@pytest.mark.parametrize("role", ["train", "test"])
def test_examples_leave_the_image_columns_out_of_their_fields(role):
    cfg = compose_config(["task=counting_multi"])
    ds = load_split(cfg.task, role, str(CACHE))
    example = TaskSplit(cfg.task, role, ds)[0]
    assert "images" not in example.fields and len(example.images) >= 1
    assert example.fields == {k: v for k, v in ds[0].items() if k != "images"}

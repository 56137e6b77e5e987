"""Every family through run.py: GRPO, SFT, evaluation, LoRA and freezing on tiny random-weight models of
Qwen2.5-VL, Qwen3-VL, Idefics3 (SmolVLM's layout), LLaVA-1.5, LLaVA-OneVision and Gemma 3, built offline
as hub folders (models/tiny_families.py) and loaded with model=pretrained model.path=FOLDER."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config, family_folder
from support.grpo import VARYING, varying_reward  # noqa: F401 - the fixture is used by name

from othink_mr1.models.adapters import model_roles
from othink_mr1.models.factory import load_local
from othink_mr1.models.prefix_sharing import supports_prefix_sharing
from othink_mr1.models.tiny_families import FAMILIES
from othink_mr1.runner import run

# Heavy: every family end to end through run.py (about a minute); `make test-fast` skips it.
pytestmark = pytest.mark.slow

QWEN = ("qwen2_5_vl", "qwen3_vl")  # the shared-prefix path; every other family takes the plain forward
EVAL = ["eval.tasks=[counting]"]


def family_cfg(tmp_path: Path, family: str, *overrides: str):
    return compose_config(["model=pretrained", f"model.path={family_folder(family)}", *EVAL, *overrides],
                          output_dir=tmp_path)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """A saved folder's weights by parameter name (as the loaded model names them)."""
    model, _ = load_local(folder)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def roles_of(folder: Path) -> dict[str, set[str]]:
    model, _ = load_local(folder)
    return {role: set(names) for role, names in model_roles(model).items()}


def check_eval_outputs(run_dir: Path, stage: str = "final") -> dict:
    results = json.loads((run_dir / "eval" / stage / "results.json").read_text())
    counting = results["results"]["counting"]
    assert counting["n"] == 8 and 0.0 <= counting["accuracy"] <= 1.0
    lines = (run_dir / "eval" / stage / "counting" / "completions.jsonl").read_text().splitlines()
    assert len(lines) == 8
    return counting


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_grpo_with_the_vision_tower_frozen_trains_the_rest_and_its_export_evaluates(family, tmp_path):
    """GRPO (rewards that differ within groups, so a real gradient flows) with freeze.vision_tower:
    the vision tower's weights are bit-identical after training, every other weight moved; the export
    loads back (model.path=<run>/model) and mode=eval scores it."""
    cfg = family_cfg(tmp_path, family, *VARYING, "model.freeze.vision_tower=true", "method.lr=1e-3",
                     "eval.row_zero=false", "save_model=true")
    result = run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    assert result["train"]["steps"] == 2 and result["train"]["skipped_steps"] == 0
    check_eval_outputs(run_dir)
    before, after = weights(family_folder(family)), weights(run_dir / "model")
    roles = roles_of(family_folder(family))
    assert before.keys() == after.keys()
    frozen = [n for n in before if n in roles["vision_tower"]]
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    assert frozen and not set(frozen) & set(moved)
    trainable = [n for n in before if n not in roles["vision_tower"]]
    assert set(moved) == set(trainable), f"did not move: {sorted(set(trainable) - set(moved))[:5]}"

    cfg = compose_config(["mode=eval", "model=pretrained", f"model.path={run_dir / 'model'}", *EVAL],
                         output_dir=tmp_path / "eval")
    run(cfg)
    check_eval_outputs(Path(cfg.paths.run_dir), stage="eval")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sft_with_lora_on_the_language_model_and_vision_tower_changes_exactly_those_layers(family, tmp_path):
    """SFT with LoRA (language model and vision tower): the merged export differs from the base in
    exactly the adapted linear layers; everything else, the merger included, is unchanged."""
    cfg = family_cfg(tmp_path, family, "method=sft", "model.lora.enabled=true", "model.lora.rank=4",
                     "model.lora.alpha=8", "model.lora.dropout=0.0", "model.lora.vision_tower=true",
                     "method.lr=1e-2", "eval.row_zero=false", "save_model=true")
    run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    check_eval_outputs(run_dir)
    before, after = weights(family_folder(family)), weights(run_dir / "model")
    roles = roles_of(family_folder(family))
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(n.endswith(".weight") for n in moved)
    assert moved & roles["language_model"] and not moved & roles["merger"]
    # LLaVA reads its vision features from the second-to-last layer: the last layer gets no gradient.
    assert moved & roles["vision_tower"]


def test_the_shared_prefix_path_is_the_qwen_families_and_the_plain_path_every_other():
    for family in FAMILIES:
        model, _ = load_local(family_folder(family))
        assert supports_prefix_sharing(model) == (family in QWEN), family


def test_suppressed_tokens_are_each_familys_own_image_markup():
    """Sampling and evaluation never emit the processor's image/video markup, whatever the family."""
    from othink_mr1.evaluation.harness import suppressed_token_ids

    expected = {"qwen2_5_vl": {"<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"},
                "qwen3_vl": {"<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"},
                "idefics3": {"<image>", "<fake_token_around_image>", "<global-img>", "<row_1_col_1>"},
                "llava": {"<image>"},
                "llava_onevision": {"<image>", "<video>"},
                "gemma3": {"<start_of_image>", "<end_of_image>", "<image_soft_token>"}}
    for family, tokens in expected.items():
        _, processor = load_local(family_folder(family))
        tok = processor.tokenizer
        suppressed = set(tok.convert_ids_to_tokens(suppressed_token_ids(processor)))
        assert tokens <= suppressed, (family, tokens - suppressed)
        # Never the end of a turn, nor plain text.
        assert tok.eos_token not in suppressed and not {"<answer>", "3"} & suppressed


MULTI = ["task=counting_multi", "task.synthetic.num_train=32", "task.synthetic.num_test=8",
         "tasks.counting_multi.synthetic.num_test=8", "eval.tasks=[counting_multi]"]


@pytest.mark.parametrize("model", ["tiny", "tiny_plain", "idefics3", "gemma3"])
def test_multi_image_grpo_sft_and_eval_run_on_batches_mixing_one_and_two_images(model, tmp_path):
    """counting_multi (items of one and two scenes alternate, so every batch mixes them) through GRPO,
    SFT and mode=eval: on the embedded Qwen2-VL with the shared-prefix path and with the plain forward,
    and on two families that take the plain path."""
    models = {"tiny": ["model=tiny"], "tiny_plain": ["model=tiny", "method.share_prompt_prefix=false"],
              "idefics3": ["model=pretrained", f"model.path={family_folder('idefics3')}"],
              "gemma3": ["model=pretrained", f"model.path={family_folder('gemma3')}"]}[model]
    grpo = compose_config([*models, *MULTI, *VARYING, "eval.row_zero=false"], output_dir=tmp_path / "grpo")
    result = run(grpo)
    assert result["train"]["steps"] == 2 and result["train"]["skipped_steps"] == 0
    assert result["train"]["decode"]["loop"] == ("static" if model == "tiny" else "generate")
    assert result["after"]["counting_multi"]["n"] == 8
    if model == "tiny_plain":
        return
    sft = compose_config([*models, *MULTI, "method=sft", "eval.row_zero=false"], output_dir=tmp_path / "sft")
    assert run(sft)["after"]["counting_multi"]["n"] == 8
    evaluate = compose_config(["mode=eval", *models, *MULTI], output_dir=tmp_path / "eval")
    run(evaluate)
    completions = (Path(evaluate.paths.run_dir) / "eval" / "eval" / "counting_multi" / "completions.jsonl")
    assert len(completions.read_text().splitlines()) == 8

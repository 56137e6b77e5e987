"""Preflight: disagreements between processor, model, data and devices fail before step 1, naming
what disagrees. Also the trainer configs (strategies) and the evaluation shards."""

from __future__ import annotations

import copy

import pytest
from conftest import compose_config
from support.prefix_sharing import prompt_batch

from othink_mr1.budget import budget_line, train_budget
from othink_mr1.data import sampling
from othink_mr1.data.collate import PromptCollator, SFTCollator
from othink_mr1.data.records import DataError
from othink_mr1.data.tasks import TaskSplit
from othink_mr1.preflight import PreflightError, check_processors
from othink_mr1.utils.distributed import build_strategy
from othink_mr1.utils.errors import ConfigError


def test_a_reply_end_that_does_not_stop_generation_fails_sft_only(tmp_path):
    """Idefics3's template ends a reply with <end_of_utterance>: a model whose generation config and
    tokenizer stop on something else would never stop after SFT. Evaluation and GRPO never train a
    reply's end, so nothing is checked for them."""
    from conftest import family_folder

    from othink_mr1.data.collate import SFTCollator
    from othink_mr1.models.factory import load_local
    from othink_mr1.preflight import check_reply_end

    model, processor = load_local(family_folder("idefics3"))
    check_reply_end(model, SFTCollator(processor, "{question}"))
    processor.tokenizer.eos_token = "<|endoftext|>"
    model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with pytest.raises(PreflightError, match=r"SFT ends a reply with <end_of_utterance> \(id \d+; template\), which is "
                                             r"not a stop token of the model"):
        check_reply_end(model, SFTCollator(processor, "{question}"))
    cfg = compose_config(["model=pretrained", f"model.path={family_folder('idefics3')}"])
    check_processors(cfg.model, model, processor, {})  # no reply end asked for


def test_a_processor_whose_max_pixels_disagrees_with_evaluation_fails(tiny):
    model, processor = tiny
    cfg = compose_config(["model=tiny"])
    check_processors(cfg.model, model, processor, {"counting": processor, "geometry": processor})
    other = copy.deepcopy(processor)
    other.image_processor.size = {**dict(processor.image_processor.size), "longest_edge": 2 * cfg.model.max_pixels}
    with pytest.raises(PreflightError, match=rf"evaluation on 'geometry' would use max_pixels={2 * cfg.model.max_pixels} "
                                             rf"\(training: {cfg.model.max_pixels}\)"):
        check_processors(cfg.model, model, processor, {"counting": processor, "geometry": other})
    templated = copy.deepcopy(processor)
    templated.chat_template = processor.chat_template.replace("assistant", "helper")
    with pytest.raises(PreflightError, match="evaluation on 'counting' would use chat_template="):
        check_processors(cfg.model, model, processor, {"counting": templated})
    with pytest.raises(PreflightError, match=rf"model.max_pixels=1000 but the processor uses max_pixels={cfg.model.max_pixels}"):
        check_processors(compose_config(["model=tiny", "model.max_pixels=1000"]).model, model, processor, {})
    merged = copy.deepcopy(processor)
    merged.image_processor.merge_size = 4
    with pytest.raises(PreflightError, match="the processor's merge_size=4 but the model's vision config has 2"):
        check_processors(cfg.model, model, merged, {})


def test_a_sample_whose_image_tokens_do_not_match_fails_naming_it(tiny):
    processor = tiny[1]
    batch = prompt_batch(processor, "counting", n=2)
    assert batch["input_ids"].shape[0] == 2  # well-formed prompts pass
    task = compose_config(["task=counting"]).task
    from conftest import CACHE

    from othink_mr1.data.tasks import load_split

    split = TaskSplit(task, "train", load_split(task, "train", str(CACHE)))
    good, bad = split[0], copy.copy(split[1])
    bad.question = bad.question + " <|image_pad|>"  # the text itself holds an image token
    with pytest.raises(DataError, match=r"counting train item 1: the prompt holds 2 image slots \(<\|image_pad\|>\) "
                                        r"for its 1 image"):
        PromptCollator(processor, task.prompt, split="counting train")([good, bad])
    with pytest.raises(DataError, match="item 1: the prompt holds 2 image slots"):
        SFTCollator(processor, task.prompt)([good, bad])
    # After expansion: tokens vs the grid's features (a processor expanding with another merge size).
    from othink_mr1.data.collate import check_image_tokens

    batch = PromptCollator(processor, task.prompt)([good])
    short = dict(batch, input_ids=batch["input_ids"].clone())
    short["input_ids"][0, (short["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).nonzero()[0]] = 5
    with pytest.raises(DataError, match=r"geometry test item 0: the prompt holds 15 image tokens but its 1x8x8 patch grid "
                                        r"gives 16 image features \(merge 2x2\)"):
        check_image_tokens(processor, short, [good], "geometry test")


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_every_trainer_config_composes(name):
    cfg = compose_config(["model=tiny", f"trainer={name}"], shrink=False)
    assert cfg.trainer.strategy in ("auto", "ddp", "fsdp", "deepspeed_stage_2", "deepspeed_stage_3")
    assert cfg.trainer.precision == ("32-true" if name == "cpu" else "bf16-mixed")


def test_strategies_are_lightnings(tiny):
    from pytorch_lightning.strategies import FSDPStrategy

    fsdp = build_strategy(compose_config(["model=tiny", "trainer=fsdp"]).trainer, tiny[0])
    assert isinstance(fsdp, FSDPStrategy)
    # One FSDP unit per decoder layer and ViT block: the model's own _no_split_modules.
    assert {c.__name__ for c in fsdp.kwargs["auto_wrap_policy"]._module_classes} == {
        "Qwen2VLDecoderLayer", "Qwen2VLVisionBlock"}
    assert fsdp.sharding_strategy.name == "FULL_SHARD"
    assert build_strategy(compose_config(["model=tiny", "trainer=ddp"]).trainer, tiny[0]) == "ddp"
    with pytest.raises(ConfigError, match="trainer.strategy=deepspeed_stage_3 needs the deepspeed package"):
        build_strategy(compose_config(["model=tiny", "trainer=deepspeed_zero3"]).trainer, tiny[0])
    with pytest.raises(ConfigError, match=r"trainer.fsdp_wrap=\['Nope'\]: no module"):
        build_strategy(compose_config(["model=tiny", "trainer=fsdp", "trainer.fsdp_wrap=[Nope]"]).trainer, tiny[0])


def test_the_budget_line_counts_the_devices():
    cfg = compose_config(["model=tiny", "trainer=ddp", "trainer.devices=2", "method.batch_size=2"])
    budget = train_budget(cfg.method, cfg.trainer, 32)
    line = budget_line(cfg.method, cfg.kl.name, 32, budget)
    assert "2 prompts/micro-batch x 1 accumulation x 2 process(es) = 4 prompts per optimizer step" in line
    assert "x G=4 = 16 completions" in line


def test_evaluation_shards_cover_every_item_once_without_padding(monkeypatch):
    shards = []
    for rank in range(3):
        monkeypatch.setattr(sampling, "_rank_and_world", lambda rank=rank: (rank, 3))
        sampler = sampling.ShardSampler(10)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]

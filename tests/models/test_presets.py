"""Every preset under conf/model/ on its checkpoint's own small files (tests/fixtures/published, shrunk by
tests/fixtures/shrink; models/tiny_published.py builds them): `run.py model=<preset> model.path=<build>`
trains GRPO and SFT and evaluates with the preset's settings as they are; SFT's labels are the reply plus
the end the family uses; SFT and evaluation ask with the same prompt tokens; bad published files fail
at load, naming the file and the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import PRESETS, PUBLISHED, ROOT, compose_config, preset_folder
from PIL import Image
from support.presets import FACTS, preset_cfg

from othink_mr1.data.collate import PromptCollator, ReplyEnd, SFTCollator, image_token_id, reply_end
from othink_mr1.data.records import Example
from othink_mr1.models.factory import load_model
from othink_mr1.models.rollouts import stop_token_ids
from othink_mr1.utils.errors import ModelError

TEMPLATE = "{question} Output the answer in <answer> </answer> tags."


def test_every_preset_has_a_fixture_and_facts():
    presets = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")
                     if p.stem not in ("pretrained", "tiny", "tiny_base"))
    assert PRESETS == presets == sorted(FACTS)


def loaded(preset: str, tmp_path: Path):
    return load_model(preset_cfg(preset, tmp_path).model, tmp_path)


def example(index: int = 0) -> Example:
    image = Image.new("RGB", (112, 112), (40 + 10 * index, 90, 160))
    return Example(question=f"How many circles are there in image {index}?", answer="3",
                   target="<think> I count 3. </think> <answer> 3 </answer>", images=[image], index=index)


@pytest.mark.parametrize("preset", PRESETS)
def test_the_build_keeps_the_published_token_ids_and_files(preset):
    """Every special token sits at the id the published files give it, every id config.json names is a
    special token, and the published small files are in the build byte for byte."""
    folder = preset_folder(preset)
    manifest = json.loads((folder / "build_manifest.json").read_text())["files"]
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    published_tokens = json.loads((PUBLISHED / preset / "tokenizer_config.json").read_text()).get(
        "added_tokens_decoder", {}) if (PUBLISHED / preset / "tokenizer_config.json").is_file() else {}
    for index, token in published_tokens.items():
        assert vocab[token["content"]] == int(index)
    by_id = {i: t for t, i in vocab.items()}
    config = json.loads((folder / "config.json").read_text())
    for key in ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id", "boi_token_index"):
        if key in config:
            assert by_id[config[key]].startswith("<"), (key, by_id[config[key]])
    for name, what in manifest.items():
        if what == "published, verbatim":
            assert (folder / name).read_bytes() == (PUBLISHED / preset / name).read_bytes(), name


@pytest.mark.parametrize("preset", PRESETS)
def test_reply_end_stop_ids_and_image_tokens_come_from_the_published_files(preset, tmp_path):
    model, processor = loaded(preset, tmp_path)
    how, end, stops, image_tokens = FACTS[preset]
    assert reply_end(processor) == ReplyEnd(end, how)
    assert processor.tokenizer.convert_ids_to_tokens(stop_token_ids(model, processor.tokenizer)) == stops
    image = Image.new("RGB", (448, 448), (100, 120, 140))
    batch = PromptCollator(processor, TEMPLATE)([Example(question="How many?", answer="1", target="1",
                                                         images=[image], index=0)])
    assert int((batch["input_ids"] == image_token_id(processor)).sum()) == image_tokens


@pytest.mark.parametrize("preset", PRESETS)
def test_sft_prompt_tokens_equal_evaluations_and_the_labels_are_the_reply_plus_its_end(preset, tmp_path):
    """One prompt builder for both: SFT's prompt tokens (before the reply) are evaluation's, the default
    system turn of a template that inserts one included; the labels are exactly the reply's tokens and
    the family's end (the template's closing token, or the eos where the template closes nothing)."""
    _, processor = loaded(preset, tmp_path)
    examples = [example(0), example(1)]
    prompts = PromptCollator(processor, TEMPLATE)(examples)
    sft = SFTCollator(processor, TEMPLATE)(examples)
    tokenizer = processor.tokenizer
    _, end, _, _ = FACTS[preset]
    for row, ex in enumerate(examples):
        prompt = prompts["input_ids"][row][prompts["attention_mask"][row].bool()].tolist()
        labelled = sft["labels"][row] != -100
        first_label = int(labelled.nonzero()[0])
        assert sft["input_ids"][row][:first_label].tolist() == prompt
        reply = tokenizer(ex.target, add_special_tokens=False)["input_ids"]
        assert sft["labels"][row][labelled].tolist() == reply + [tokenizer.convert_tokens_to_ids(end)]
    if "qwen2" in preset:  # Qwen2/2.5-VL's template inserts a default system turn: both prompts carry it
        assert "You are a helpful assistant." in tokenizer.decode(prompts["input_ids"][0])


def test_the_published_llava_template_closes_nothing_and_sft_appends_the_eos(tmp_path):
    """LLaVA-1.5's published template writes only a space after a reply: SFT ends replies with </s>
    (id 2, the tokenizer's eos), and generation stops at it."""
    template = (PUBLISHED / "llava_1_5_7b" / "chat_template.jinja").read_text()
    model, processor = loaded("llava_1_5_7b", tmp_path)
    assert processor.chat_template == template
    rendered = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Q"}]},
                                              {"role": "assistant", "content": [{"type": "text", "text": "A"}]}],
                                             tokenize=False)
    assert rendered == "USER: Q ASSISTANT: A "
    assert reply_end(processor) == ReplyEnd("</s>", "eos appended")
    assert 2 in stop_token_ids(model, processor.tokenizer)


def broken_copy(preset: str, tmp_path: Path, file: str, edit) -> Path:
    folder = tmp_path / preset
    shutil.copytree(preset_folder(preset), folder)
    path = folder / file
    path.write_text(edit(path.read_text()))
    return folder


def load_broken(preset: str, folder: Path, tmp_path: Path):
    cfg = compose_config([f"model={preset}", f"model.path={folder}"], output_dir=tmp_path)
    return load_model(cfg.model, tmp_path)


def test_a_template_that_places_no_image_fails_at_load_naming_the_file(tmp_path):
    folder = broken_copy("llava_1_5_7b", tmp_path, "chat_template.jinja", lambda t: t.replace("'<image>\n'", "''"))
    (folder / "chat_template.json").unlink()
    with pytest.raises(ModelError, match=r"chat_template.jinja / chat_template.json: the chat template writes "
                                         r"nothing for an image part"):
        load_broken("llava_1_5_7b", folder, tmp_path)


def test_an_eos_id_the_tokenizer_lacks_fails_at_load_naming_the_key(tmp_path):
    folder = broken_copy("qwen2_vl_2b_instruct", tmp_path, "generation_config.json",
                         lambda t: t.replace("151643\n  ],", "999999\n  ],"))
    with pytest.raises(ModelError, match=r"generation_config.json eos_token_id lists 999999, which the tokenizer "
                                         r"\(151657 tokens\) does not have"):
        load_broken("qwen2_vl_2b_instruct", folder, tmp_path)


def test_a_processor_without_an_image_processor_fails_at_load_naming_the_file(tmp_path):
    folder = broken_copy("gemma3_4b_it", tmp_path, "preprocessor_config.json",
                         lambda t: t.replace('"image_processor_type": "Gemma3ImageProcessor",', ""))
    with pytest.raises(ModelError, match=r"preprocessor_config.json names no image_processor_type"):
        load_broken("gemma3_4b_it", folder, tmp_path)


def test_a_pixel_budget_on_a_processor_that_sizes_by_edges_fails_naming_the_setting(tmp_path):
    cfg = compose_config(["model=llava_1_5_7b", f"model.path={preset_folder('llava_1_5_7b')}", "model.max_pixels=401408"],
                         output_dir=tmp_path)
    with pytest.raises(ModelError, match=r"model.max_pixels: CLIPImageProcessorPil .* has no pixel budget"):
        load_model(cfg.model, tmp_path)


def test_the_tiny_llava_family_carries_the_published_template_verbatim():
    from othink_mr1.models.tiny_families import FAMILIES

    assert FAMILIES["llava"].chat_template == (PUBLISHED / "llava_1_5_7b" / "chat_template.jinja").read_text()

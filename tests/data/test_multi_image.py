"""The family-agnostic data path: several images per record, checks read off the processor (vision
tokens, the template's image slot and end of turn), the SFT mask from the prompt's length, and that
single-image Qwen batches are exactly what the Qwen-only collators made."""

from __future__ import annotations

import copy
import io
import json
import random
from pathlib import Path

import datasets
import pytest
import torch
from conftest import task_config
from PIL import Image

from othink_mr1.config import SyntheticDataConfig
from othink_mr1.data import batch_layout
from othink_mr1.data.batch_layout import expected_image_tokens, image_token_id, vision_tokens
from othink_mr1.data.collate import IGNORE_INDEX, PromptCollator, ReplyEnd, SFTCollator, image_slot, reply_end
from othink_mr1.data.hub import load_test_jsonl, load_train_source
from othink_mr1.data.records import DataError, Example
from othink_mr1.data.synthetic import counting, geometry
from othink_mr1.data.tasks import TaskSplit, load_split

QWEN_VISION = {"<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"}
TEMPLATE = "{question}  Output the thinking process in <think> </think> and final answer (number) in <answer> </answer> tags."


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")


@pytest.fixture(scope="module")
def processor(tiny):
    return tiny[1]


def _scene(index: int, size: tuple[int, int] = (112, 112)) -> Image.Image:
    return counting.make_item("train", index, 0, 112)["image"].resize(size)


def _example(index: int, n_images: int = 1, question: str = "How many objects are there?",
             target: str = "<answer> 3 </answer>") -> Example:
    return Example(images=[_scene(index + k) for k in range(n_images)], question=question, answer="3",
                   target=target, index=index)


def _png(colour=(10, 20, 30), size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------ what the processor says


def test_vision_tokens_of_the_tiny_qwen2_vl_are_its_five_vision_specials(processor, monkeypatch):
    assert set(vision_tokens(processor)) == QWEN_VISION
    assert len(vision_tokens(processor)) == 5
    # Cached per processor: sampling suppression asks every step.
    calls = []
    monkeypatch.setattr(batch_layout, "_vision_tokens", lambda p: calls.append(p) or ("x",))
    assert set(vision_tokens(processor)) == QWEN_VISION and not calls
    other = copy.deepcopy(processor)
    assert vision_tokens(other) == ["x"] and calls == [other]  # another object is computed afresh


def test_image_slot_reply_end_and_image_token_are_read_off_the_template(processor):
    assert image_slot(processor) == "<|vision_start|><|image_pad|><|vision_end|>"
    # The end of an assistant turn is today's eos, and a special token.
    assert reply_end(processor) == ReplyEnd("<|im_end|>", "template")
    assert processor.tokenizer.eos_token == "<|im_end|>"
    assert image_token_id(processor) == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_a_template_that_closes_nothing_ends_replies_with_the_eos_and_plain_text_is_refused(processor):
    plain = copy.deepcopy(processor)
    plain.chat_template = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
                           "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
                           "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}")
    # Only a newline after the reply: the tokenizer's eos ends it, and SFT appends it.
    assert reply_end(plain) == ReplyEnd("<|im_end|>", "eos appended")
    assert SFTCollator(plain, TEMPLATE).end == "<|im_end|>"
    # Text that is not a special token is no end of turn.
    plain.chat_template = plain.chat_template.replace("\n{% endfor %}", " END\n{% endfor %}")
    with pytest.raises(DataError, match=r"writes ' END\\n', which does not begin with a special token, after an "
                                        "assistant message"):
        reply_end(plain)


def test_expected_image_tokens_sums_each_samples_images(processor):
    batch = PromptCollator(processor, "{question}")([_example(0, 1), _example(1, 2)])
    sizes = [(112, 112)] * 3
    assert expected_image_tokens(processor, batch, [1, 2], sizes) == [16, 32]
    # Without Qwen's grid: transformers' own per-image count, summed the same way.
    no_grid = {k: v for k, v in batch.items() if k != "image_grid_thw"}
    assert expected_image_tokens(processor, no_grid, [1, 2], [(112, 112), (56, 84), (112, 112)]) == [16, 22]

    class NoHelper:
        def _get_num_multimodal_tokens(self, **kwargs):
            raise NotImplementedError

    assert expected_image_tokens(NoHelper(), no_grid, [1, 2], sizes) is None


# ----------------------------------------------------------- single-image Qwen: exactly as before


def _old_sft(processor, template: str, examples: list[Example], loss_on: str) -> dict:
    """The Qwen-only SFTCollator this project had (commit cf32e1c), restated: prompt + target + eos
    processed as one text, the reply found after the last `<|im_start|>` plus `assistant\\n`."""
    tok = processor.tokenizer
    im_start_id = tok.convert_tokens_to_ids("<|im_start|>")
    header_len = 1 + len(tok("assistant\n", add_special_tokens=False)["input_ids"])
    image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
    texts = []
    for ex in examples:
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": template.replace("{question}", ex.question)}]}]
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        texts.append(prompt + ex.target + tok.eos_token)
    batch = dict(processor(text=texts, images=[ex.images[0] for ex in examples], return_tensors="pt",
                           padding=True, padding_side="right"))
    input_ids = batch["input_ids"]
    labels = input_ids.clone()
    labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    labels[input_ids == image_token_id] = IGNORE_INDEX
    if loss_on == "assistant":
        for row in range(input_ids.shape[0]):
            starts = (input_ids[row] == im_start_id).nonzero()
            labels[row, :int(starts[-1]) + header_len] = IGNORE_INDEX
    batch["labels"] = labels
    return batch


def _old_prompts(processor, template: str, examples: list[Example]) -> dict:
    texts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": template.replace("{question}", ex.question)}]}],
        tokenize=False, add_generation_prompt=True) for ex in examples]
    return dict(processor(text=texts, images=[ex.images[0] for ex in examples], return_tensors="pt",
                          padding=True, padding_side="left"))


def _varied_examples(n: int) -> list[Example]:
    """Counting and geometry questions and targets (thinking, unicode, braces, LaTeX, digits, inner
    newlines and runs of spaces) on images of several sizes (so several patch grids)."""
    rng = random.Random("bit-identical")
    sizes = [(112, 112), (56, 84), (140, 98), (97, 150), (84, 56), (200, 120)]
    out = []
    for i in range(n):
        if i % 2:
            problem = geometry.make_problem("train" if i % 4 == 1 else "test", i, 0)[1]
            question, answer, thinking = problem.question, problem.answer, problem.thinking
        else:
            item = counting.make_item("train", i, 0, 112, render=False)
            question, answer = item["problem"], item["solution"].split()[1]
            thinking = counting.counting_thinking(int(answer), rng)
        target = rng.choice([
            f"<answer> {answer} </answer>",
            f"<think> {thinking} </think> <answer> {answer} </answer>",
            f"<think>{thinking}\nSo the answer is {{{answer}}}.</think>  <answer>{answer}</answer>",
            f"<think> 2√{{5}} or \\frac{{7}}{{2}}; 140° ≠ 40°… </think> <answer> {answer} </answer>",
        ])
        image = Image.new("RGB", sizes[i % len(sizes)], (i * 37 % 256, i * 91 % 256, 200))
        out.append(Example(images=[image], question=question, answer=answer, target=target, index=i))
    return out


@pytest.mark.parametrize("loss_on", ["assistant", "all"])
def test_sft_collator_gives_exactly_the_old_qwen_batches_for_single_images(processor, loss_on):
    examples = _varied_examples(36)
    new_collator = SFTCollator(processor, TEMPLATE, loss_on=loss_on)
    start = 0
    for size in (1, 2, 3, 5, 4, 6, 7, 8):
        batch_examples = examples[start:start + size]
        start += size
        old = _old_sft(processor, TEMPLATE, batch_examples, loss_on)
        new = new_collator(batch_examples)
        assert [k for k in new if k != "meta"] == list(old), "same tensors, in the same order"
        for key, value in old.items():
            assert new[key].dtype == value.dtype, key
            assert torch.equal(new[key], value), (key, size)
    assert start == len(examples)


def test_prompt_collator_gives_exactly_the_old_qwen_batches_for_single_images(processor):
    examples = _varied_examples(12)
    for chunk in (examples[:5], examples[5:6], examples[6:]):
        old = _old_prompts(processor, TEMPLATE, chunk)
        new = PromptCollator(processor, TEMPLATE)(chunk)
        assert [k for k in new if k != "meta"] == list(old)
        assert all(torch.equal(new[k], v) for k, v in old.items())
        assert new["meta"]["image_counts"] == [1] * len(chunk)


# ------------------------------------------------------------------------ mixed 1- and 2-image batch


def _counting_multi(tmp_path, role="train", n=6):
    task = task_config(name="counting_multi", source="synthetic_counting_multi", scorer="counting", prompt=TEMPLATE,
                       synthetic=SyntheticDataConfig(num_train=n, num_test=n, image_size=112, seed=0))
    return TaskSplit(task, role, load_split(task, role, str(tmp_path)))


def test_counting_multi_runs_through_both_collators_in_a_mixed_batch(processor, tiny, tmp_path):
    split = _counting_multi(tmp_path)
    examples = [split[0], split[1]]
    assert [len(ex.images) for ex in examples] == [1, 2]
    image_pad = image_token_id(processor)
    tok = processor.tokenizer

    prompts = PromptCollator(processor, TEMPLATE, split="counting_multi train")(examples)
    assert prompts["image_grid_thw"].tolist() == [[1, 8, 8]] * 3
    assert prompts["pixel_values"].shape[0] == 3 * 64
    assert (prompts["input_ids"] == image_pad).sum(1).tolist() == [16, 32]
    assert prompts["meta"]["image_counts"] == [1, 2]
    assert (prompts["mm_token_type_ids"] == 1).sum(1).tolist() == [16, 32]
    assert prompts["attention_mask"][:, -1].all()  # left padded

    sft = SFTCollator(processor, TEMPLATE, split="counting_multi train")(examples)
    assert sft["image_grid_thw"].tolist() == [[1, 8, 8]] * 3
    assert torch.equal(sft["pixel_values"], prompts["pixel_values"])
    assert (sft["input_ids"] == image_pad).sum(1).tolist() == [16, 32]
    assert sft["meta"]["image_counts"] == [1, 2]
    lengths = sft["attention_mask"].sum(1).tolist()
    for row, ex in enumerate(examples):
        reply = tok(ex.target + "<|im_end|>", add_special_tokens=False)["input_ids"]
        kept = (sft["labels"][row] != IGNORE_INDEX).nonzero().flatten().tolist()
        # Labels: exactly the reply tokens, which end the row; its prompt is the PromptCollator's.
        assert sft["labels"][row][kept].tolist() == reply == sft["input_ids"][row][kept].tolist()
        assert kept == list(range(lengths[row] - len(reply), lengths[row]))
        prompt = prompts["input_ids"][row][prompts["attention_mask"][row] == 1].tolist()
        assert sft["input_ids"][row][:kept[0]].tolist() == prompt
        assert not sft["attention_mask"][row, lengths[row]:].any()  # right padded
        assert (sft["mm_token_type_ids"][row, kept] == 0).all()
        assert ex.target.startswith("<think> ") and "</think> <answer>" in ex.target  # thinking + solution
    # The model takes the mixed batch: every image's features find their tokens.
    model = tiny[0]
    with torch.no_grad():
        loss = model(**{k: v for k, v in sft.items() if isinstance(v, torch.Tensor)}).loss
    assert torch.isfinite(loss)


def test_counting_multi_task_config_composes_and_scores_itself(make_cfg):
    from othink_mr1.config_checks import check_task

    cfg = make_cfg("task=counting_multi", "eval.tasks=[counting_multi]")
    assert cfg.task.source == "synthetic_counting_multi" and list(cfg.task.eval_tasks) == ["counting_multi"]
    assert cfg.task.prompt == cfg.tasks.counting.prompt  # the counting task's prompt
    check_task(cfg.task, "task")


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("token", ["<|image_pad|>", "<|vision_start|>", "<|video_pad|>"])
@pytest.mark.parametrize("collator", [PromptCollator, SFTCollator])
def test_a_vision_token_typed_in_a_question_names_split_and_item(processor, token, collator):
    good, bad = _example(0), _example(1, question=f"How many {token} objects?")
    with pytest.raises(DataError, match=rf"^counting train item 1: .*the question contains the model's vision "
                                        rf"token\(s\) \['{token.replace('|', '[|]')}'\]"):
        collator(processor, TEMPLATE, split="counting train")([good, bad])


def test_a_vision_token_in_an_sft_target_is_refused(processor):
    bad = _example(4, target="<answer> 3 </answer><|vision_end|>")
    with pytest.raises(DataError, match=r"counting train item 4: the SFT target contains"):
        SFTCollator(processor, TEMPLATE, split="counting train")([bad])


def test_more_images_than_the_template_places_names_split_item_and_counts(processor):
    blind = copy.deepcopy(processor)  # a chat template that writes nothing for an image part
    blind.chat_template = processor.chat_template.replace("<|vision_start|><|image_pad|><|vision_end|>", "")
    with pytest.raises(DataError, match=r"^geometry test item 0: the prompt holds 0 image slots \(none: the chat "
                                        r"template writes nothing for an image part\) for its 1 image"):
        PromptCollator(blind, TEMPLATE, split="geometry test")([_example(0)])
    # A template that places one slot however many images the item has.
    once = copy.deepcopy(processor)
    once.chat_template = processor.chat_template.replace(
        "{% if content['type'] == 'image' %}", "{% if content['type'] == 'image' and loop.first %}")
    assert image_slot(once) == image_slot(processor)
    PromptCollator(once, TEMPLATE)([_example(0)])  # one image: fine
    with pytest.raises(DataError, match=r"^counting train item 7: the prompt holds 1 image slots \('<\|vision_start\|>"
                                        r"<\|image_pad\|><\|vision_end\|>'\) for its 2 images"):
        SFTCollator(once, TEMPLATE, split="counting train")([_example(6), _example(7, n_images=2)])


def test_an_item_without_images_is_refused(processor):
    with pytest.raises(DataError, match="counting train item 3: the item has no image"):
        PromptCollator(processor, TEMPLATE, split="counting train")([Example([], "q", "1", "", 3)])


def test_the_token_check_after_processing_names_every_grid_of_the_item(processor):
    from othink_mr1.data.batch_layout import check_image_tokens

    examples = [_example(0), _example(1, n_images=2)]
    batch = PromptCollator(processor, TEMPLATE)(examples)
    short = dict(batch, input_ids=batch["input_ids"].clone())
    row = short["input_ids"][1]
    row[(row == image_token_id(processor)).nonzero()[0]] = 5
    with pytest.raises(DataError, match=r"counting_multi test item 1: the prompt holds 31 image tokens but its "
                                        r"1x8x8 \+ 1x8x8 patch grids give 32 image features \(merge 2x2\)"):
        check_image_tokens(processor, short, examples, "counting_multi test")
    with pytest.raises(DataError, match=r"expected one image grid per image \(3\), the processor returned 2"):
        check_image_tokens(processor, dict(batch, image_grid_thw=batch["image_grid_thw"][:2]), examples, "x test")


# ------------------------------------------------------------------------------- multi-image records


def _images_folder(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(_png((i * 60, 20, 30), (16 + 8 * i, 16)))
    (tmp_path / "imgs" / "garbage.png").write_bytes(b"\x89PNG not really")
    return tmp_path


def test_a_train_jsonl_with_image_lists_loads_every_image_in_order(tmp_path):
    _images_folder(tmp_path)
    lines = [{"images": ["imgs/0.png", "imgs/1.png"], "problem": "How many in both?", "solution": "<answer> 5 </answer>"},
             {"image": "imgs/2.png", "problem": "How many?", "solution": "<answer> 2 </answer>"},
             {"image": ["imgs/2.png", "imgs/0.png", "imgs/1.png"], "problem": "All?", "solution": "<answer> 9 </answer>"}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    ds = load_train_source(str(path))
    assert "image" not in ds.column_names and ds.features["images"] == datasets.List(datasets.Image(decode=False))
    split = TaskSplit(task_config(), "train", load_split(task_config(train_source=str(path)), "train", str(tmp_path / "c")))
    assert [[im.size for im in split[i].images] for i in range(3)] == [
        [(16, 16), (24, 16)], [(32, 16)], [(32, 16), (16, 16), (24, 16)]]
    assert all(im.mode == "RGB" for i in range(3) for im in split[i].images)


def test_a_test_jsonl_with_image_path_lists_loads_every_image(tmp_path):
    _images_folder(tmp_path)
    lines = [{"image_path": ["imgs/0.png", "imgs/1.png"], "question": "Both?", "ground_truth": 5},
             {"image_path": "imgs/2.png", "question": "One?", "ground_truth": 2},
             {"images": ["imgs/1.png"], "question": "Listed?", "ground_truth": 1}]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    ds = load_test_jsonl(path, tmp_path)
    assert ds["image_path"] == [[str((tmp_path / "imgs" / f"{i}.png").resolve()) for i in names]
                                for names in ([0, 1], [2], [1])]
    split = TaskSplit(task_config(), "test", ds)
    assert [len(split[i].images) for i in range(3)] == [2, 1, 1] and split[0].answer == "5"


@pytest.mark.parametrize("record,reason", [
    ({"images": [], "problem": "P?", "solution": "<answer> 1 </answer>"},
     "field 'images' is an empty list: a record needs at least one image"),
    ({"images": ["imgs/0.png", "imgs/garbage.png"], "problem": "P?", "solution": "<answer> 1 </answer>"},
     "images[1]: unreadable image"),
    ({"images": ["imgs/0.png", "imgs/gone.png"], "problem": "P?", "solution": "<answer> 1 </answer>"},
     "images[1]: image file not found"),
    ({"image": ["imgs/0.png", ""], "problem": "P?", "solution": "<answer> 1 </answer>"}, "field 'image[1]' is empty"),
    ({"images": ["imgs/0.png", 7], "problem": "P?", "solution": "<answer> 1 </answer>"}, "field 'images[1]' is not a path"),
    ({"problem": "P?", "solution": "<answer> 1 </answer>"}, "missing field(s) ['images or image']"),
], ids=["empty-list", "unreadable", "missing", "blank", "not-a-path", "no-image-field"])
def test_a_bad_image_list_in_a_train_jsonl_names_file_line_and_image(tmp_path, record, reason):
    _images_folder(tmp_path)
    good = {"images": ["imgs/0.png", "imgs/1.png"], "problem": "P?", "solution": "<answer> 1 </answer>"}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as err:
        load_split(task_config(train_source=str(path)), "train", str(tmp_path / "c"))
    assert f"{path}, line 2: " in str(err.value) and reason in str(err.value), str(err.value)


def test_a_bad_image_path_list_in_a_test_jsonl_names_file_line_and_image(tmp_path):
    _images_folder(tmp_path)
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"image_path": ["imgs/0.png"], "question": "Q?", "ground_truth": 1}) + "\n"
                    + json.dumps({"image_path": ["imgs/1.png", "imgs/garbage.png"], "question": "Q?", "ground_truth": 1})
                    + "\n" + json.dumps({"image_path": [], "question": "Q?", "ground_truth": 1}) + "\n")
    with pytest.raises(DataError, match=rf"{path}, line 2: image_path\[1\]: unreadable image"):
        load_test_jsonl(path, tmp_path)
    from othink_mr1.data.records import BadRows

    bad_rows = BadRows("skip", max_fraction=1.0)
    assert len(load_test_jsonl(path, tmp_path, bad_rows)) == 1
    assert [(r["line"], r["reason"].split(":")[0]) for r in bad_rows.rows] == [
        (2, "image_path[1]"), (3, "field 'image_path' is an empty list")]


def _saved_images_dataset(folder: Path, bad: dict[int, list]) -> Path:
    rows = {"images": [], "problem": [], "solution": []}
    for i in range(4):
        rows["images"].append(bad.get(i, [{"bytes": _png((i, 0, 0)), "path": None}] * (1 + i % 2)))
        rows["problem"].append(f"P{i}?")
        rows["solution"].append(f"<answer> {i} </answer>")
    features = datasets.Features({"images": datasets.List(datasets.Image()), "problem": datasets.Value("string"),
                                  "solution": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    return folder


def test_a_saved_dataset_with_image_lists_is_checked_image_by_image(tmp_path):
    clean = _saved_images_dataset(tmp_path / "clean", {})
    split = TaskSplit(task_config(), "train", load_split(task_config(train_source=str(clean)), "train", str(tmp_path / "c")))
    assert [len(split[i].images) for i in range(4)] == [1, 2, 1, 2]
    good = {"bytes": _png(), "path": None}
    for bad, reason in (([], "row 2: field 'images' is an empty list"),
                        ([good, {"bytes": b"GIF89a broken", "path": None}], "row 2: images[1]: unreadable image bytes")):
        folder = _saved_images_dataset(tmp_path / f"bad{len(bad)}", {2: bad})
        with pytest.raises(DataError) as err:
            load_split(task_config(train_source=str(folder)), "train", str(tmp_path / "c"))
        assert str(folder) in str(err.value) and reason in str(err.value), str(err.value)


# --------------------------------------------------------------------------------- other families


# Read off each tiny family's processor (models/tiny_families.py); None: the generic token count
# does not fit the family yet (expected_image_tokens' note), so no count is checked.
FAMILY_FACTS = {
    "qwen2_5_vl": ("<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>", [16, 32]),
    "qwen3_vl": ("<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>", [9, 18]),
    "idefics3": ("<image>", "<end_of_utterance>", [20, 40]),  # 4 tokens x (2x2 tiles + the global view) per image
    "llava": ("<image>\n", "</s>", [16, 32]),
    # One image: any-res (base 4 + 16 unpadded + 4 newlines); two: each its base grid and a newline.
    "llava_onevision": ("<image>\n", "<|im_end|>", [24, 10]),
    "gemma3": ("<start_of_image>", "<end_of_turn>", [4, 8]),
}


@pytest.mark.parametrize("family", list(FAMILY_FACTS))
def test_both_collators_serve_every_family_with_one_and_two_images(family):
    from conftest import family_folder

    from othink_mr1.models.factory import load_local

    model, processor = load_local(family_folder(family))
    slot, end, expected = FAMILY_FACTS[family]
    assert (image_slot(processor), reply_end(processor).text) == (slot, end)
    examples = [_example(0, 1), _example(1, 2)]
    prompts = PromptCollator(processor, TEMPLATE, split="counting_multi test")(examples)
    sft = SFTCollator(processor, TEMPLATE, split="counting_multi train")(examples)
    token = image_token_id(processor)
    counts = (sft["input_ids"] == token).sum(1).tolist()
    # (LLaVA-OneVision gives a sample with two images fewer tokens per image than one with one.)
    assert counts == (prompts["input_ids"] == token).sum(1).tolist() and min(counts) > 0
    sizes = [(112, 112)] * 3
    assert expected_image_tokens(processor, prompts, [1, 2], sizes) == expected == counts
    assert prompts["meta"]["image_counts"] == sft["meta"]["image_counts"] == [1, 2]
    lengths = sft["attention_mask"].sum(1).tolist()
    for row, ex in enumerate(examples):
        reply = processor.tokenizer(ex.target + end, add_special_tokens=False)["input_ids"]
        kept = (sft["labels"][row] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert sft["labels"][row][kept].tolist() == reply
        assert kept == list(range(lengths[row] - len(reply), lengths[row]))
        prompt = prompts["input_ids"][row][prompts["attention_mask"][row] == 1].tolist()
        assert sft["input_ids"][row][:kept[0]].tolist() == prompt
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in sft:
                assert (sft[key][row, kept[0]:] == 0).all()
    with torch.no_grad():
        loss = model(**{k: v for k, v in sft.items() if isinstance(v, torch.Tensor)}).loss
    assert torch.isfinite(loss)

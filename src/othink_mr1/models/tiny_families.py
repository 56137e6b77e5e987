"""Tiny random-weight models of other vision-language families, saved as hub folders.

Each builder writes what the real checkpoint's folder holds (config.json, weights, tokenizer files, the
family's chat template, preprocessor_config.json and processor_config.json naming the family's
transformers processor), at a few hundred thousand parameters, so `model=pretrained
model.path=FOLDER` runs every mode offline the way it runs a real Qwen2.5-VL, Qwen3-VL, SmolVLM
(Idefics3), LLaVA-1.5, LLaVA-OneVision or Gemma 3 checkpoint. The tokenizer is the embedded tiny
model's byte-level BPE (models/tiny.py) plus the family's own special tokens; the chat templates
follow each family's published turn format (roles, image slot, end-of-turn token); the image
settings are shrunk so a 112 px image gives tens of image tokens, not thousands.

Everything is a pure function of (family, seed): the same folder on every machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .tiny import build_tokenizer

# Bump when a builder's output changes, so cached folders are rebuilt rather than reused.
FAMILIES_VERSION = 4

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096)
VOCAB_SIZE = 1024  # the BPE's target; the trained vocabulary is smaller

# Chat templates in each family's turn format. Qwen-style turns (Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision).
_QWEN_TURNS = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}IMAGE_SLOT"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_VL_TEMPLATE = _QWEN_TURNS.replace("IMAGE_SLOT", "<|vision_start|><|image_pad|><|vision_end|>")
LLAVA_ONEVISION_TEMPLATE = _QWEN_TURNS.replace("IMAGE_SLOT", "<image>\n")
# SmolVLM / Idefics3: "User:<image>question<end_of_utterance>\nAssistant:" with no system turn.
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
# LLaVA-1.5: llava-hf/llava-1.5-7b-hf's published chat_template.jinja, verbatim (tests/fixtures/published/llava_1_5_7b):
# "USER: <image>\nquestion ASSISTANT: answer " - nothing closes a reply, so SFT appends the eos (data.collate.reply_end).
LLAVA_TEMPLATE = "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
# Gemma 3: "<bos><start_of_turn>user\n<start_of_image>question<end_of_turn>\n<start_of_turn>model\n".
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{% if message['role'] == 'assistant' %}model{% else %}{{ message['role'] }}{% endif %}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<start_of_image>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
IDEFICS3_ROW_COL = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]


@dataclass
class Family:
    """How to build one family's tiny folder."""

    processor_class: str
    chat_template: str
    special_tokens: list[str]  # added to the tiny BPE (Qwen2's are already there)
    eos_token: str  # the tokenizer's end of turn
    build_config: Callable[[dict[str, int]], Any]  # token ids -> the model config
    build_image_processor: Callable[[], Any]
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    # Named special tokens the family's processor reads from the tokenizer (Gemma 3's boi/eoi/image).
    named_tokens: dict[str, str] = field(default_factory=dict)
    bos_token: str | None = None


def _qwen(config_class: str, rope: dict[str, Any], vision: dict[str, Any]) -> Callable[[dict[str, int]], Any]:
    """A Qwen-family config builder: `rope` adds to the text config's mrope settings (head_dim 16: 2, 3
    and 3 rotary frequencies for time, height and width), `vision` to the vision tower's."""
    def build(ids: dict[str, int]) -> Any:
        import transformers

        # The config classes default to the real vocabulary's special token ids: name the tiny one's.
        specials = dict(bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
        return getattr(transformers, config_class)(
            text_config=dict(**TEXT, **specials, head_dim=16, vocab_size=ids["vocab"], tie_word_embeddings=True,
                             rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0,
                                              **rope}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                               out_hidden_size=TEXT["hidden_size"], spatial_merge_size=2, temporal_patch_size=2, **vision),
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=True, **specials)
    return build


def _idefics3(ids: dict[str, int]) -> Any:
    from transformers import Idefics3Config

    return Idefics3Config(
        text_config=dict(model_type="llama", **TEXT, vocab_size=ids["vocab"], tie_word_embeddings=True,
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=56, patch_size=14),
        scale_factor=2, image_token_id=ids["<image>"], tie_word_embeddings=True, pad_token_id=ids["<|endoftext|>"])


def _llava(ids: dict[str, int]) -> Any:
    from transformers import LlavaConfig

    return LlavaConfig(
        text_config=dict(model_type="llama", **TEXT, vocab_size=ids["vocab"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=56, patch_size=14, projection_dim=32),
        image_token_id=ids["<image>"], vision_feature_layer=-2, vision_feature_select_strategy="default",
        pad_token_id=ids["<|endoftext|>"])


def _llava_onevision(ids: dict[str, int]) -> Any:
    from transformers import LlavaOnevisionConfig

    return LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", **TEXT, vocab_size=ids["vocab"], tie_word_embeddings=True),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=28, patch_size=14),
        image_token_id=ids["<image>"], video_token_id=ids["<video>"], vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=[[28, 28], [28, 56], [56, 28], [56, 56]], tie_word_embeddings=True)


def _gemma3(ids: dict[str, int]) -> Any:
    from transformers import Gemma3Config

    return Gemma3Config(
        text_config=dict(model_type="gemma3_text", **TEXT, head_dim=16, vocab_size=ids["vocab"], sliding_window=64,
                         layer_types=["sliding_attention", "full_attention"], pad_token_id=ids["<|endoftext|>"],
                         bos_token_id=ids["<bos>"], eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]]),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=56, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"], tie_word_embeddings=True)


def _qwen_image_processor(patch_size: int) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import Qwen2VLImageProcessorPil

        # 112x112 images: 8x8 patches of 14 px (Qwen2.5-VL) or 7x7 of 16 px (Qwen3-VL, resized to 7x7).
        return Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=2, temporal_patch_size=2,
                                        size={"shortest_edge": 3136, "longest_edge": 12544})
    return build


def _idefics3_image_processor() -> Any:
    from transformers import Idefics3ImageProcessorPil

    # A 112 px image: resized to 112, split into 2x2 tiles of 56 px plus the global 56 px view.
    return Idefics3ImageProcessorPil(size={"longest_edge": 112}, max_image_size={"longest_edge": 56},
                                     do_image_splitting=True)


def _llava_image_processor() -> Any:
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})


def _llava_onevision_image_processor() -> Any:
    from transformers import LlavaOnevisionImageProcessorPil

    return LlavaOnevisionImageProcessorPil(size={"height": 28, "width": 28},
                                           image_grid_pinpoints=[[28, 28], [28, 56], [56, 28], [56, 56]])


def _gemma3_image_processor() -> Any:
    from transformers import Gemma3ImageProcessorPil

    return Gemma3ImageProcessorPil(size={"height": 56, "width": 56})


FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": Family("Qwen2_5_VLProcessor", QWEN_VL_TEMPLATE, [], "<|im_end|>",
                         _qwen("Qwen2_5_VLConfig", {}, dict(patch_size=14, window_size=56, fullatt_block_indexes=[1])),
                         _qwen_image_processor(14)),
    "qwen3_vl": Family("Qwen3VLProcessor", QWEN_VL_TEMPLATE, [], "<|im_end|>",
                       _qwen("Qwen3VLConfig", {"mrope_interleaved": True},
                             dict(patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0])),
                       _qwen_image_processor(16)),
    "idefics3": Family("Idefics3Processor", IDEFICS3_TEMPLATE,
                       ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *IDEFICS3_ROW_COL],
                       "<end_of_utterance>", _idefics3, _idefics3_image_processor, {"image_seq_len": 4}),
    "llava": Family("LlavaProcessor", LLAVA_TEMPLATE, ["<s>", "</s>", "<image>"], "</s>", _llava, _llava_image_processor,
                    {"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
                    bos_token="<s>"),
    "llava_onevision": Family("LlavaOnevisionProcessor", LLAVA_ONEVISION_TEMPLATE, ["<image>", "<video>"], "<|im_end|>",
                              _llava_onevision, _llava_onevision_image_processor,
                              {"num_image_tokens": 4, "vision_feature_select_strategy": "full",
                               "vision_aspect_ratio": "anyres_max_9"}),
    "gemma3": Family("Gemma3Processor", GEMMA3_TEMPLATE,
                     ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                      "<image_soft_token>"], "<end_of_turn>", _gemma3, _gemma3_image_processor,
                     {"image_seq_length": 4},
                     named_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                   "image_token": "<image_soft_token>"}, bos_token="<bos>"),
}


def random_model(config: Any, seed: int) -> Any:
    """An image-text model of `config` with random weights seeded by `seed`, without touching the global RNG.
    Some families start a projector at zero (Gemma 3's mm_input_projection_weight): the image would reach
    the language model as nothing and no gradient would reach the vision tower, so zero matrices are drawn."""
    from transformers import AutoModelForImageTextToText

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
        for param in model.parameters():
            if param.dim() >= 2 and not param.any():
                torch.nn.init.normal_(param, std=0.02)
    return model


def build_tiny_family(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight `family` model with its tokenizer and processor files to `folder`."""
    from transformers import GenerationConfig

    if family not in FAMILIES:
        raise ValueError(f"no tiny builder for family '{family}'; available: {sorted(FAMILIES)}")
    spec = FAMILIES[family]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(VOCAB_SIZE)
    tokenizer.add_special_tokens({"additional_special_tokens": spec.special_tokens}, replace_extra_special_tokens=False)
    tokenizer.eos_token = spec.eos_token
    if spec.bos_token:
        tokenizer.bos_token = spec.bos_token
    tokenizer.chat_template = spec.chat_template
    ids = {t: i for t, i in tokenizer.get_vocab().items() if t.startswith("<")}
    ids["vocab"] = len(tokenizer)
    config = spec.build_config(ids)
    model = random_model(config, seed)
    eos = [tokenizer.convert_tokens_to_ids(spec.eos_token)]
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=ids.get(spec.bos_token) if spec.bos_token else None)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if spec.named_tokens:
        # Named multimodal tokens (tokenizer.boi_token, ...) live in tokenizer_config.json, as on the hub.
        path = folder / "tokenizer_config.json"
        settings = json.loads(path.read_text(encoding="utf-8"))
        settings["extra_special_tokens"] = dict(spec.named_tokens)
        path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    spec.build_image_processor().save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(spec.chat_template, encoding="utf-8")
    (folder / "processor_config.json").write_text(
        json.dumps({"processor_class": spec.processor_class, **spec.processor_kwargs}, indent=2) + "\n")
    return folder

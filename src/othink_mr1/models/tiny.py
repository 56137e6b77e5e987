"""The embedded tiny Qwen2-VL: random weights, a locally trained tokenizer, no hub.

The tokenizer is a byte-level BPE (Qwen2's pre-tokenizer regex, NFC, byte-level decoder) trained on
the synthetic tasks' text and the R1-V prompt templates, with Qwen2's special tokens in Qwen2's order
and a Qwen2-VL chat template, so every code path (chat formatting, image placeholders, mrope
positions, `generate`) is the one the real models take. Everything is a pure function of
`TinyArchConfig`, so the same config gives the same model on every machine.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import torch
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ..data.synthetic import counting, generate_records, geometry
from .processing import image_only_class

# Qwen2's special tokens, in Qwen2's order (ids 0..13 here, 151643.. in the real vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
# Qwen2's pre-tokenizer: digits are split one by one, so numbers never become single tokens.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DEFAULT_SYSTEM = "You are a helpful assistant."
# Qwen2-VL's chat format: a default system turn, <|im_start|>role turns, images as
# <|vision_start|><|image_pad|><|vision_end|> (the processor expands <|image_pad|>).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Prompt templates the tokenizer should encode compactly (R1-V's train and eval templates).
R1V_SUFFIXES = (
    "  Output the thinking process in <think> </think> and final answer (number) in <answer> </answer> tags.",
    " First output the thinking process in <think> </think> and final answer (number) in <answer> </answer> tags.",
    " Output the thinking process in <think> </think> and final answer (number) in <answer> </answer> tags.",
)
CORPUS_ITEMS_PER_TASK = 2000


def tokenizer_corpus() -> Iterator[str]:
    """Text the tokenizer is trained on: questions, answers, reasoning and the chat scaffolding."""
    rng = random.Random("tiny-tokenizer")
    for split in ("train", "test"):
        for item in generate_records("synthetic_counting", split, CORPUS_ITEMS_PER_TASK, 0, 112, render=False):
            text = item.get("problem") or item["question"]
            count = item.get("ground_truth") or int(item["solution"].split()[1])
            yield f"{text}{rng.choice(R1V_SUFFIXES)}"
            yield f"<think> {counting.counting_thinking(count, rng)} </think> <answer> {count} </answer>"
        for index in range(CORPUS_ITEMS_PER_TASK):
            _, problem = geometry.make_problem(split, index, 0)
            yield f"{problem.question}{rng.choice(R1V_SUFFIXES)}"
            yield f"<think> {problem.thinking} </think> <answer> {problem.answer} </answer>"
    for _ in range(50):
        yield f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n<|im_start|>assistant\n"


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=32768,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(tokenizer: PreTrainedTokenizerFast, min_pixels: int, max_pixels: int) -> Any:
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    return image_only_class(Qwen2VLProcessor)(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_model(arch: Any, tokenizer: PreTrainedTokenizerFast) -> Qwen2VLForConditionalGeneration:
    """Random weights, seeded by arch.seed, without touching the global RNG state."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = arch.hidden_size // arch.num_attention_heads
    if head_dim % 2 or head_dim < 8:
        raise ValueError(f"model.tiny: hidden_size/num_attention_heads = {head_dim} must be even and >= 8")
    # mrope splits head_dim/2 rotary frequencies into temporal, height and width sections.
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = dict(
        depth=arch.vision_depth,
        embed_dim=arch.vision_embed_dim,
        hidden_size=arch.hidden_size,
        num_heads=arch.vision_num_heads,
        mlp_ratio=arch.vision_mlp_ratio,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(arch.seed)
        model = Qwen2VLForConditionalGeneration(config)
    gen = model.generation_config
    gen.bos_token_id = None
    gen.eos_token_id = ids["<|im_end|>"]
    gen.pad_token_id = ids["<|endoftext|>"]
    return model

"""Helpers shared by tests/ and tests/e2e/ (see each test file)."""

from __future__ import annotations

from pathlib import Path

from conftest import compose_config, preset_folder

# preset -> (how a reply ends, its end token, the stop tokens, image tokens for one 448x448 image under the
# preset's settings). Reply ends and stop ids are read off the published files where published (see the
# fixture README); the image-token counts follow from the published image settings: Qwen2/2.5-VL
# (448/14)^2/2^2 = 256, Qwen3-VL (448/16)^2/2^2 = 196, LLaVA-1.5 a 336 crop in 14 px patches = 576,
# Gemma 3 256 per image, SmolVLM 4x4 tiles of 512 px plus the global view at 64 each = 1088,
# LLaVA-OneVision any-res (base 729 + 2x2 crops unpadded, with newlines) = 3699.
QWEN_STOPS = ["<|im_end|>", "<|endoftext|>"]


FACTS = {
    "gemma3_4b_it": ("template", "<end_of_turn>", ["<eos>", "<end_of_turn>"], 256),
    "llava_1_5_7b": ("eos appended", "</s>", ["</s>"], 576),
    "llava_onevision_0_5b": ("template", "<|im_end|>", ["<|im_end|>"], 3699),
    "qwen2_5_vl_3b_instruct": ("template", "<|im_end|>", QWEN_STOPS, 256),
    "qwen2_5_vl_7b_instruct": ("template", "<|im_end|>", QWEN_STOPS, 256),
    "qwen2_vl_2b_instruct": ("template", "<|im_end|>", QWEN_STOPS, 256),
    "qwen2_vl_7b_instruct": ("template", "<|im_end|>", QWEN_STOPS, 256),
    "qwen3_vl_2b_instruct": ("template", "<|im_end|>", QWEN_STOPS, 196),
    "smolvlm_256m_instruct": ("template", "<end_of_utterance>", ["<|im_end|>", "<end_of_utterance>"], 1088),
}


def preset_cfg(preset: str, tmp_path: Path, *overrides: str):
    return compose_config([f"model={preset}", f"model.path={preset_folder(preset)}", "eval.tasks=[counting]",
                           "eval.row_zero=false", *overrides], output_dir=tmp_path)

"""The [memory] line's arithmetic (budget.memory_plan): per-device bytes of weights, gradients, AdamW state and
the frozen starting model under each strategy, checked against the parameter counts of the paper's 2B and 7B
models built on the meta device (no weights: seconds, no memory)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PUBLISHED, compose_config
from transformers import AutoModelForImageTextToText, Qwen2VLConfig

from othink_mr1.budget import GIB, memory_line, memory_plan

# Qwen2-VL-7B-Instruct's architecture, as its hub config.json states it (no copy of that file was found to
# vendor: tests/fixtures/published/README.md); the model card gives 8.29B parameters.
QWEN2_VL_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                   num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                   vision_config=dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_size=3584,
                                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2))


def meta_parameters(config: Qwen2VLConfig) -> int:
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def counts() -> dict[str, int]:
    published = json.loads((PUBLISHED / "qwen2_vl_2b_instruct" / "config.json").read_text())
    published.pop("quantization_config")  # the vendored copy is the AWQ release's (its README); same architecture
    return {"2b": meta_parameters(Qwen2VLConfig(**published)), "7b": meta_parameters(Qwen2VLConfig(**QWEN2_VL_7B))}


def trainer(*overrides: str):
    return compose_config(list(overrides)).trainer


def test_the_meta_models_have_the_published_sizes(counts):
    assert 2.20e9 < counts["2b"] < 2.22e9  # the model card: 2.21B
    assert 8.28e9 < counts["7b"] < 8.30e9  # 8.29B


@pytest.mark.parametrize("overrides, divided", [
    (["trainer=ddp", "trainer.devices=8"], (1, 1, 1)),
    (["trainer=fsdp", "trainer.devices=8"], (8, 8, 8)),
    (["trainer=fsdp", "trainer.devices=8", "trainer.fsdp_sharding=SHARD_GRAD_OP"], (1, 8, 8)),
    (["trainer=deepspeed_zero2", "trainer.devices=8"], (1, 8, 8)),
    (["trainer=deepspeed_zero3", "trainer.devices=8"], (8, 8, 8)),
    (["trainer=gpu"], (1, 1, 1)),
])
def test_per_device_bytes_follow_the_strategy(counts, overrides, divided):
    P = counts["7b"]
    plan = memory_plan(trainer(*overrides), "float32", P, P, P)
    w, g, o = divided
    assert plan.weights == 4 * P / w and plan.gradients == 4 * P / g and plan.optimizer == 8 * P / o
    assert plan.reference == 4 * P  # the frozen copy is whole on every device
    assert plan.total == plan.weights + plan.gradients + plan.optimizer + plan.reference


def test_the_7b_row_needs_sharding_and_the_2b_row_fits_one_gpu(counts):
    """What the issue measured: full fine-tuning with AdamW holds 16 bytes per parameter, about 112+ GB for 7B."""
    P7, P2 = counts["7b"], counts["2b"]
    ddp = memory_plan(trainer("trainer=ddp", "trainer.devices=8"), "float32", P7, P7, P7)
    assert 16 * P7 / 1e9 == pytest.approx((ddp.total - ddp.reference) / 1e9) and ddp.total / GIB > 80  # no 80 GB GPU
    fsdp = memory_plan(trainer("trainer=fsdp", "trainer.devices=8"), "float32", P7, P7, P7)
    assert fsdp.total / GIB < 80  # sharded over 8 it fits, the whole reference included
    one = memory_plan(trainer("trainer=gpu"), "float32", P2, P2, P2)
    assert one.total / GIB < 80  # the 2B one-GPU recipes
    assert 16 * P2 + 4 * P2 == one.total


def test_lora_trains_few_parameters_and_keeps_no_second_copy(counts):
    P = counts["2b"]
    adapters = 18_464_768
    plan = memory_plan(trainer("trainer=gpu"), "float32", P + adapters, adapters, 0)
    assert plan.weights == 4 * (P + adapters) and plan.gradients == 4 * adapters and plan.optimizer == 8 * adapters
    assert plan.reference == 0


def test_the_line_states_each_part_and_offload(counts):
    P = counts["7b"]
    line = memory_line(memory_plan(trainer("trainer=deepspeed_zero3", "trainer.devices=8"), "bfloat16", P, P, 0))
    assert line.startswith("[memory] per device under deepspeed_stage_3 over 8 process(es), bfloat16: weights 1.93 GiB")
    assert "8.29B parameters, 8.29B trained" in line and "activations, rollout KV cache" in line
    offloaded = memory_plan(trainer("trainer=deepspeed_zero3", "trainer.devices=8", "trainer.strategy=deepspeed_stage_3_offload"),
                            "bfloat16", P, P, 0)
    assert offloaded.optimizer == 0 and "(offloaded to CPU)" in memory_line(offloaded)
    with pytest.raises(ValueError, match="model.dtype=int8"):
        memory_plan(trainer(), "int8", P, P, 0)

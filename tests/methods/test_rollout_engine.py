"""method.rollout_engine: the settings refused up front, the weights the vLLM engine gets, the prompts it is
sent, and the loss's truncated importance sampling. Runs without vLLM (tests/e2e/vllm_env runs vLLM itself)."""

from __future__ import annotations

import copy
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_config
from support.prefix_sharing import prompt_batch

from othink_mr1.models import vllm_without_torchvision
from othink_mr1.data.batch_layout import image_token_id
from othink_mr1.methods import grpo_method
from othink_mr1.methods.grpo import GRPOModule, Rollout
from othink_mr1.methods.grpo_loss import grpo_loss
from othink_mr1.methods.kl_schedules import ConstantKL
from othink_mr1.models.adapters import apply_lora
from othink_mr1.models.vllm_engine import _prompt_ids, check_model_supported, policy_weights
from othink_mr1.runner import check_config
from othink_mr1.utils.errors import ConfigError


# ------------------------------------------------------------------------------------ settings


def test_vllm_where_it_is_not_installed_is_refused_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setattr(grpo_method, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"method.rollout_engine=vllm: vLLM is not installed.*make vllm-env"):
        check_config(compose_config(["method.rollout_engine=vllm"], output_dir=tmp_path))


@pytest.mark.parametrize("overrides, message", [
    (["method.rollout_is_cap=2.0"], r"method.rollout_is_cap=2.0: .*needs method.rollout_engine=vllm \(it is hf\)"),
    (["method.rollout_engine=vllm", "method.rollout_is_cap=0.0"], r"method.rollout_is_cap=0.0: the truncation cap must be positive"),
    (["method.rollout_engine=vllm", "method.vllm_gpu_memory_utilization=1.5"],
     r"method.vllm_gpu_memory_utilization=1.5: must be in \(0, 1\]"),
    (["method=gspo", "method.rollout_engine=vllm", "method.rollout_is_cap=2.0"],
     r"method.rollout_is_cap=2.0: .*GSPO's ratio is per sequence"),
    (["method.rollout_engine=sglang"], r"rollout_engine"),
])
def test_engine_settings_that_cannot_work_are_refused_up_front(tmp_path, monkeypatch, overrides, message):
    monkeypatch.setattr(grpo_method, "vllm_installed", lambda: True)
    with pytest.raises(Exception, match=message):
        check_config(compose_config(overrides, output_dir=tmp_path))


def test_the_default_is_hf_and_vllm_passes_where_installed(tmp_path, monkeypatch):
    assert compose_config([]).method.rollout_engine == "hf"
    monkeypatch.setattr(grpo_method, "vllm_installed", lambda: True)
    check_config(compose_config(["method.rollout_engine=vllm", "method.rollout_is_cap=2.0"], output_dir=tmp_path))


def test_a_family_whose_prompts_the_engine_does_not_lay_out_is_refused(tiny):
    check_model_supported(tiny[0], "tiny")  # Qwen2-VL
    with pytest.raises(ConfigError, match=r"method.rollout_engine=vllm: model=smol is a idefics3 model.*rollout_engine=hf"):
        check_model_supported(SimpleNamespace(config=SimpleNamespace(model_type="idefics3")), "smol")


# ------------------------------------------------------------------------------ what it is sent


def test_lora_weights_are_the_merged_model_and_leave_the_policy_untouched(tiny):
    lora_cfg = compose_config(["model.lora.enabled=true", "model.lora.rank=4", "model.lora.alpha=8"]).model.lora
    model = apply_lora(copy.deepcopy(tiny[0]), lora_cfg)
    with torch.no_grad():  # adapters that have moved (B starts at 0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = policy_weights(model)
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    assert weights.keys() == merged.keys() == tiny[0].state_dict().keys()  # the plain model's names
    for key in merged:
        torch.testing.assert_close(weights[key], merged[key], rtol=0, atol=1e-6, msg=key)
    changed = [k for k in merged if not torch.equal(merged[k], tiny[0].state_dict()[k])]
    assert changed and all("proj" in k or "qkv" in k or "fc" in k or "mlp" in k for k in changed)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_plain_weights_are_the_state_dict(tiny):
    weights = policy_weights(tiny[0])
    assert all(torch.equal(weights[k], v) for k, v in tiny[0].state_dict().items())


def test_prompts_lose_their_left_padding_and_keep_one_image_token_per_image(tiny):
    processor = tiny[1]
    batch = prompt_batch(processor, "counting", n=3)
    image_id = image_token_id(processor)
    prompts = _prompt_ids(batch, image_id)
    assert len(prompts) == 3 and len({len(p) for p in prompts}) > 1  # prompts of different lengths
    for ids, row, mask in zip(prompts, batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
        real = [t for t, m in zip(row, mask) if m]
        assert ids.count(image_id) == 1 and real.count(image_id) == 16  # 16 visual tokens collapsed to one
        assert [t for t in ids if t != image_id] == [t for t in real if t != image_id]
        assert real.index(image_id) == ids.index(image_id)  # in place
        assert processor.tokenizer.pad_token_id not in ids[:1]


# ------------------------------------------------------------------------ importance sampling


def _module(tiny, tmp_path, *overrides):
    cfg = compose_config(["model=tiny", *overrides], output_dir=tmp_path)
    return GRPOModule(tiny[0], tiny[1], cfg.method, total_steps=4, kl=ConstantKL(0.0))


def _rollout(logp_engine: torch.Tensor, mask: torch.Tensor) -> Rollout:
    n = mask.shape[0]
    return Rollout(completion_ids=torch.zeros_like(mask), completion_mask=mask, advantages=torch.ones(n),
                   rewards=torch.zeros(n), reward_parts={}, engine_logp=logp_engine)


def test_truncated_importance_weights_are_the_capped_ratio_to_the_engine(tiny, tmp_path):
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.1, -1.0]])
    engine = torch.tensor([[-1.0, -1.0, -2.5], [-3.5, -0.1, -1.0]])
    rollout = _rollout(engine, torch.ones_like(logp, dtype=torch.long))
    module = _module(tiny, tmp_path, "method.rollout_engine=vllm", "method.rollout_is_cap=2.0")
    weights = module.rollout_is_weights(logp, rollout)
    expected = torch.exp(logp - engine).clamp(max=2.0)
    assert torch.equal(weights, expected)
    assert weights[0, 2] == 2.0 and weights[0, 0] == 1.0 and weights[0, 1] == pytest.approx(0.3679, abs=1e-4)
    assert _module(tiny, tmp_path, "method.rollout_engine=vllm").rollout_is_weights(logp, rollout) is None


def test_token_weights_scale_each_tokens_policy_gradient():
    torch.manual_seed(0)
    logp = torch.randn(4, 6).requires_grad_(True)
    advantages = torch.tensor([1.0, -0.5, 2.0, 0.3])
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    weights = torch.rand(4, 6) * 2
    (plain_grad,) = torch.autograd.grad(grpo_loss(logp, advantages, mask)[0], logp)
    (weighted_grad,) = torch.autograd.grad(grpo_loss(logp, advantages, mask, token_weights=weights)[0], logp)
    torch.testing.assert_close(weighted_grad, plain_grad * weights)
    same = grpo_loss(logp, advantages, mask, token_weights=torch.ones(4, 6))[0]
    assert torch.equal(same, grpo_loss(logp, advantages, mask)[0])


# ------------------------------------------------------------------------------------ compat


def test_the_compat_plugin_does_nothing_where_torchvision_imports(monkeypatch):
    from transformers import processing_utils

    mapping = dict(processing_utils.MODALITY_TO_AUTOPROCESSOR_MAPPING._MAPPING_NAMES)
    monkeypatch.setattr(vllm_without_torchvision, "_MENDED", [])
    monkeypatch.setattr(vllm_without_torchvision, "torchvision_import_error", lambda: None)
    stand_in = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
    had = sys.modules.get(stand_in)
    vllm_without_torchvision.register()
    assert vllm_without_torchvision.mended() == []
    assert processing_utils.MODALITY_TO_AUTOPROCESSOR_MAPPING._MAPPING_NAMES == mapping
    assert sys.modules.get(stand_in) is had

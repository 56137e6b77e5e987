"""The model factory: the tiny offline Qwen2-VL, tiny_base's accuracy window, pretrained loading."""

from __future__ import annotations

import pytest
import torch
from conftest import CACHE, CONF, compose_config
from PIL import Image

from othink_mr1.data.collate import PromptCollator
from othink_mr1.data.records import Example
from othink_mr1.models.factory import ModelError, load_local, load_model, tiny_folder
from othink_mr1.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_model, build_tokenizer


def test_tokenizer_has_qwen2_specials_in_order_and_round_trips_any_text(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (tok.eos_token, tok.pad_token, tok.padding_side) == ("<|im_end|>", "<|endoftext|>", "left")
    for text in ("angle CED = 140°", "4√{3}cm", "\\frac{5}{2}", "12米 and 3海里", "How many items?  Output"):
        assert tok.decode(tok(text)["input_ids"]) == text
    # Qwen2's pre-tokenizer splits numbers into single digits.
    assert tok.tokenize("1234") == ["1", "2", "3", "4"]


def test_chat_template_is_qwen2_vl_format(tiny):
    _, processor = tiny
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n<|im_start|>assistant\n")
    assert processor.chat_template == CHAT_TEMPLATE


def test_processor_gives_16_visual_tokens_for_a_112px_image(tiny):
    _, processor = tiny
    example = Example(images=[Image.new("RGB", (112, 112), "white")], question="q", answer="1", target="", index=0)
    batch = PromptCollator(processor, "{question}")([example])
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert batch["pixel_values"].shape == (64, 1176)  # 8x8 patches of 2x14x14x3
    assert int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 16


def test_tiny_is_deterministic_for_a_seed_and_differs_across_seeds():
    cfg = compose_config(["model=tiny"]).model
    tok_a, tok_b = build_tokenizer(cfg.tiny.vocab_size), build_tokenizer(cfg.tiny.vocab_size)
    assert tok_a.get_vocab() == tok_b.get_vocab()
    a, b = build_model(cfg.tiny, tok_a), build_model(cfg.tiny, tok_b)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    cfg.tiny.seed = 1
    c = build_model(cfg.tiny, tok_a)
    assert not torch.equal(a.model.language_model.embed_tokens.weight, c.model.language_model.embed_tokens.weight)
    assert sum(p.numel() for p in a.parameters()) < 2_000_000


def test_saved_tiny_reloads_with_identical_logits(tiny):
    model, processor = tiny
    cfg = compose_config(["model=tiny"]).model
    reloaded, reloaded_processor = load_local(tiny_folder(cfg, CACHE))
    example = Example(images=[Image.new("RGB", (112, 112), "red")], question="How many items?", answer="1", target="", index=0)
    batch = PromptCollator(processor, "{question}")([example])
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        assert torch.equal(model.eval()(**inputs).logits, reloaded.eval()(**inputs).logits)
    assert reloaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_pretrained_source_loads_a_local_folder_and_sets_the_image_budget():
    cfg = compose_config(["model=qwen2_vl_2b_instruct", f"model.path={tiny_folder(compose_config(['model=tiny']).model, CACHE)}",
                          "model.dtype=float32", "model.max_pixels=50176"]).model
    model, processor = load_model(cfg, CACHE)
    assert model.config.model_type == "qwen2_vl"
    assert processor.image_processor.size["longest_edge"] == 50176
    assert processor.image_processor.size["shortest_edge"] == 3136


def test_hub_id_offline_fails_naming_model_path():
    cfg = compose_config(["model=qwen2_vl_2b_instruct"]).model
    with pytest.raises(ModelError, match="model.path='Qwen/Qwen2-VL-2B-Instruct'"):
        load_model(cfg, CACHE)


def test_unknown_dtype_is_named():
    cfg = compose_config(["model=tiny", "model.dtype=float8"]).model
    with pytest.raises(ModelError, match="model.dtype='float8'"):
        load_model(cfg, CACHE)



class _Verdict:
    def __init__(self, correct):
        self.correct = correct

    def score(self, completion, answer):
        return type("Score", (), {"correct": self.correct(completion)})()


@pytest.mark.parametrize("verdict,expected", [
    (lambda text: True, (1.0, 1.0, 1.0)),
    (lambda text: False, (0.0, 0.0, 1.0)),
])
def test_sampling_headroom_aggregates_group_verdicts(monkeypatch, verdict, expected):
    """mean accuracy, pass@G and zero-variance groups from the verdicts of each prompt's G samples."""
    import othink_mr1.jobs.tiny_base as job

    cfg = compose_config(["model=tiny"]).model
    model, processor = load_model(cfg, CACHE)
    monkeypatch.setattr(job, "get_scorer", lambda name, protocol: _Verdict(verdict))
    h = job.sampling_headroom(model, processor, job.synthetic_task("counting"), CACHE, prompts=3, group=2)
    assert (h["mean_accuracy"], h["pass_at_group"], h["zero_variance_groups"]) == expected
    assert (h["prompts"], h["group_size"], h["temperature"]) == (3, 2, 1.0)


def test_the_acceptance_tasks_are_composed_without_the_runs_overrides():
    """tiny_base's acceptance check scores `tasks.<name>` as the config composes it with no overrides, inside a
    Hydra app (a run's own overrides ignored) and outside one alike."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from othink_mr1.jobs.tiny_base import ACCEPTANCE_TASKS, synthetic_task

    plain = {name: OmegaConf.to_container(compose_config([], shrink=False).tasks[name], resolve=True)
             for name in ACCEPTANCE_TASKS}
    GlobalHydra.instance().clear()
    assert {name: OmegaConf.to_container(synthetic_task(name), resolve=True) for name in ACCEPTANCE_TASKS} == plain
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        run = compose("config", overrides=["task=geometry", "task.synthetic.num_test=5", "tasks.counting.max_new_tokens=9"])
        assert (run.task.synthetic.num_test, run.tasks.counting.max_new_tokens) == (5, 9)
        inside = {name: OmegaConf.to_container(synthetic_task(name), resolve=True) for name in ACCEPTANCE_TASKS}
    assert inside == plain and plain["counting"]["max_new_tokens"] != 9


def _fake_build(tmp_path, monkeypatch, body):
    """jobs.tiny_base with its training replaced by `body(out_dir)` (the folder logic, not the minutes)."""
    import othink_mr1.jobs.tiny_base as job

    def build(model_cfg, tiny_dir, out_dir, cache_dir, **options):
        body(out_dir)
        (out_dir / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(job, "build_tiny_base", build)
    monkeypatch.setattr(job, "tiny_folder", lambda cfg, cache: tmp_path / "tiny")
    # git runs as a subprocess (the e2e build test runs it for real)
    monkeypatch.setattr(job, "git_state", lambda root: {"sha": "0123456789" * 4, "dirty": False})
    return job


def test_building_tiny_base_leaves_the_callers_random_state_as_it_was(tmp_path, monkeypatch):
    """The build's draws (loaders, shuffles, dropout) must not shift a caller's: restoring the generators keeps
    whatever runs after a build the same as without it."""
    import random

    import numpy as np

    job = _fake_build(tmp_path, monkeypatch, lambda out: (torch.rand(3), random.random(), np.random.rand(2)))
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    job.build_folder(compose_config(["model=tiny_base"]).model, tmp_path / "built", tmp_path)
    after_build = torch.rand(1).item(), random.random(), np.random.rand()
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    assert (torch.rand(1).item(), random.random(), np.random.rand()) == after_build


def test_building_tiny_base_uses_the_builds_thread_count_and_gives_the_caller_its_own_back(tmp_path, monkeypatch):
    """The thread count changes the float reductions, so the build pins it (and records it in the manifest):
    the same weights whichever process builds them."""
    seen = []
    job = _fake_build(tmp_path, monkeypatch, lambda out: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    caller = 1 if job.BUILD_NUM_THREADS != 1 else 3
    torch.set_num_threads(caller)
    try:
        manifest = job.build_folder(compose_config(["model=tiny_base"]).model, tmp_path / "built", tmp_path)
        assert seen == [job.BUILD_NUM_THREADS]
        assert torch.get_num_threads() == caller
    finally:
        torch.set_num_threads(before)
    assert manifest["built_at"]["machine"]["torch_threads"] == job.BUILD_NUM_THREADS


def test_a_build_writes_its_manifest_and_the_factory_loads_only_a_matching_config(tmp_path, monkeypatch):
    """The folder gets a manifest hashing every file; model.path loads it under the config it was built from,
    and any other config is refused naming the key that differs."""
    import json

    from othink_mr1.models.factory import check_tiny_base, tiny_base_build_config

    job = _fake_build(tmp_path, monkeypatch, lambda out: (out / "config.json").write_text("{}"))
    cfg = compose_config(["model=tiny_base", "model.base_build.steps=7"]).model
    job.build_folder(cfg, tmp_path / "built", tmp_path)
    manifest = json.loads((tmp_path / "built" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    assert manifest["files"]["model.safetensors"]["bytes"] == len(b"weights")
    assert manifest["build_config"] == tiny_base_build_config(cfg) and manifest["build_config"]["base_build"]["steps"] == 7
    assert len(manifest["built_at"]["commit"]) == 40 and manifest["built_at"]["machine"]["cpu_capability"]
    with_path = compose_config(["model=tiny_base", "model.base_build.steps=7", f"model.path={tmp_path / 'built'}"]).model
    assert check_tiny_base(with_path) == tmp_path / "built"
    other = compose_config(["model=tiny_base", f"model.path={tmp_path / 'built'}"]).model
    with pytest.raises(ModelError, match=r"built from another config.*base_build.steps: built with 7, this config has 575"
                                         r".*python -m othink_mr1.jobs.tiny_base"):
        load_model(other, CACHE)


def test_a_build_never_writes_into_an_existing_folder_and_a_failed_one_leaves_none(tmp_path, monkeypatch):
    from othink_mr1.utils.errors import ConfigError

    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "model.safetensors").write_bytes(b"the user's")

    def failing(out):
        raise RuntimeError("out of memory")

    job = _fake_build(tmp_path, monkeypatch, failing)
    cfg = compose_config(["model=tiny_base"]).model
    with pytest.raises(ConfigError, match=r"--out .*kept already exists"):
        job.build_folder(cfg, tmp_path / "kept", tmp_path)
    assert (tmp_path / "kept" / "model.safetensors").read_bytes() == b"the user's"
    with pytest.raises(RuntimeError, match="out of memory"):
        job.build_folder(cfg, tmp_path / "new", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # no folder, finished-looking or temporary


def test_the_build_command_refuses_an_existing_folder_with_status_2(tmp_path, capsys):
    from othink_mr1.jobs.tiny_base import main

    assert main(["--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} already exists" in capsys.readouterr().err

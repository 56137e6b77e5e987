"""The config tree: every option composes, schemas catch typos and wrong types with the key named,
run names derive from the choices, and the paper experiments' composed configs do not drift."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import CONF, ROOT, compose_config
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from othink_mr1.runner import check_config
from othink_mr1.utils.errors import ConfigError

GOLDEN = Path(__file__).parent / "golden"
# Groups chosen on the command line (budget/<method>/<model> is picked by the method's defaults, hydra is fixed).
GROUPS = ("task", "method", "model", "kl", "trainer", "logger", "paths", "eval", "mode", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


ALL_OPTIONS = [(g, o) for g in GROUPS for o in options(g)]


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no options"
    assert sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml")), "sweeps/ has no sweep configs"


@pytest.mark.parametrize("group,option", ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    cfg = compose_config([f"{group}={option}"], output_dir=tmp_path, shrink=False)
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert plain["run_name"] and "${" not in plain["run_name"]
    assert plain["task"]["name"] in plain["run_name"] or plain["mode"] == "eval"
    if group in ("task", "method", "model"):
        assert plain[group]["name"] == option


def _own_values(path: Path) -> tuple[dict, list]:
    """A config file's own values (its defaults list apart) and its defaults list."""
    node = yaml.safe_load(path.read_text()) or {}
    return node, node.pop("defaults", [])


def _inherited(group: str, option: str) -> dict:
    """What `group/option` would be without its own values: its schema's defaults, then the same
    group's options its defaults list extends (trainer/gpu extends trainer/default, ...)."""
    from hydra.core.config_store import ConfigStore

    base = OmegaConf.create({})
    for entry in _own_values(CONF / group / f"{option}.yaml")[1]:
        if not isinstance(entry, str) or entry == "_self_":
            continue
        if entry.startswith("/schema/"):
            schema = ConfigStore.instance().load(entry.removeprefix("/").split("@")[0] + ".yaml").node
            base = OmegaConf.merge(base, schema)
        elif "/" not in entry and "@" not in entry:
            parent = OmegaConf.merge(_inherited(group, entry), _own_values(CONF / group / f"{entry}.yaml")[0])
            base = OmegaConf.merge(base, parent)
    return OmegaConf.to_container(base)


def _leaves(node: dict, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _lookup(node: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return "<absent>"
        node = node[key]
    return node


def _restated(own: dict, inherited: dict) -> list[str]:
    return [f"{key}={value!r}" for key, value in _leaves(own) if _lookup(inherited, key) == value]


GLOBAL_GROUPS = ("experiment",)  # `# @package _global_` files (and budget/), checked against a composition


@pytest.mark.parametrize("group, option", [(g, o) for g, o in ALL_OPTIONS if g not in GLOBAL_GROUPS])
def test_no_option_restates_a_value_it_inherits(group, option):
    """Each default is stated once: an option sets only what differs from its schema's defaults and
    from the options it extends (a restated value would silently pin it when the default moves)."""
    own = _own_values(CONF / group / f"{option}.yaml")[0]
    assert _restated(own, _inherited(group, option)) == [], f"conf/{group}/{option}.yaml restates inherited values"


@pytest.mark.parametrize("path", sorted((CONF / "experiment").glob("*.yaml")) + sorted((CONF / "budget").glob("*/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_experiments_and_budgets_list_only_their_deltas(path):
    """An experiment (or a model's budget for a method) sets only values its group choices do not already give."""
    own, defaults = _own_values(path)
    if path.parent.name == "experiment":
        choices = [f"{k.removeprefix('override /')}={v}" for entry in defaults if isinstance(entry, dict)
                   for k, v in entry.items()]
        choices += [f"experiment={entry}" for entry in defaults if isinstance(entry, str) and entry != "_self_"]
    else:  # budget/<method>/<model>.yaml: its method composed with a model that has no budget
        assert path.stem in options("model") and path.parent.name in options("method"), path
        choices = [f"method={path.parent.name}", "model=pretrained", "model.path=/x"]
    plain = OmegaConf.to_container(compose_config(choices, shrink=False), resolve=False)
    assert _restated(own, plain) == [], f"{path.relative_to(ROOT)} restates values its choices already give"


def test_sweep_config_is_a_group_and_launches_a_multirun(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["sweeps=seeds"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params == {"seed": "1,2,3"}
    assert cfg.hydra.sweep.subdir == cfg.run_name  # one folder per job, named by its choices


@pytest.mark.parametrize(
    "override,key",
    [
        ("method.lrr=1e-4", "lrr"),  # typo in a key
        ("task.train_size=ten", "task.train_size"),  # wrong type
        ("eval.batch_size=big", "eval.batch_size"),
        ("model.tiny.hidden_size=1.5", "model.tiny.hidden_size"),
        ("trainer.enable_progress_bar=maybe", "trainer.enable_progress_bar"),
    ],
)
def test_typos_and_wrong_types_fail_at_composition_naming_the_key(override, key):
    with pytest.raises((HydraException, OmegaConfBaseException)) as err:
        compose_config([override])
    assert key in str(err.value) or key in str(err.value.__cause__)


@pytest.mark.parametrize("group", ["task", "model", "method"])
def test_unknown_option_names_the_group_and_lists_choices(group):
    with pytest.raises(HydraException) as err:
        compose_config([f"{group}=no_such_thing"])
    message = str(err.value)
    assert f"{group}/no_such_thing" in message
    for option in options(group):
        assert option in message
    assert "schema" not in message.split("Config search path")[0]  # schemas are not options


def test_run_name_and_dirs_derive_from_choices_and_seed(tmp_path):
    cfg = compose_config(["task=geometry", "seed=3"], output_dir=tmp_path)
    assert cfg.run_name == "geometry_grpo_d_tiny_base_seed3"  # the default method: GRPO with kl=grpo_d
    cfg = compose_config(["task=geometry", "seed=3", "kl=constant"], output_dir=tmp_path)
    assert cfg.run_name == "geometry_grpo_tiny_base_seed3"  # plain GRPO, the paper's baseline
    cfg = compose_config(["task=geometry", "seed=3", "kl=cosine"], output_dir=tmp_path)
    assert cfg.run_name == "geometry_grpo_kl-cosine_tiny_base_seed3"
    cfg = compose_config(["task=geometry", "seed=3", "method=sft", "tag=lr_ablation"], output_dir=tmp_path)
    assert cfg.run_name == "geometry_sft_tiny_base_seed3_lr_ablation"
    cfg = compose_config(["mode=eval", "model=tiny", "seed=5"], output_dir=tmp_path)
    assert cfg.run_name == "eval_tiny_seed5"
    cfg = compose_config(["mode=eval", "ckpt=outputs/runs/counting_sft_tiny_seed1/checkpoints/last.ckpt"], output_dir=tmp_path)
    assert cfg.run_name == "eval_tiny_base_counting_sft_tiny_seed1-last_seed42"


def test_hydra_run_dir_is_the_run_name_under_outputs():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["task=geometry", "seed=7"], return_hydra_config=True)
    assert cfg.hydra.run.dir.endswith("/runs/geometry_grpo_d_tiny_base_seed7")
    assert cfg.hydra.output_subdir is None  # the runner writes config.yaml itself, never over a finished run


def test_the_small_model_budget_is_keyed_by_the_model(tmp_path):
    # The tiny models train at a small-model lr; the real ones keep R1-V's; the command line wins.
    assert compose_config(["model=tiny_base", "method=sft"], shrink=False).method.lr == pytest.approx(5e-4)
    assert compose_config(["model=qwen2_vl_2b_instruct", "method=sft"], shrink=False).method.lr == pytest.approx(2e-5)
    assert compose_config(["model=tiny_base", "method=sft", "method.lr=1e-3"], shrink=False).method.lr == pytest.approx(1e-3)
    real_grpo = compose_config(["model=qwen2_vl_2b_instruct"], shrink=False).method
    assert (real_grpo.lr, real_grpo.prompts_per_step, real_grpo.num_generations) == (1e-6, 16, 8)
    assert compose_config(["model=tiny_base"], shrink=False).method.prompts_per_step == 16
    # A GRPO variant (its defaults start from grpo) trains at the model's GRPO budget with no file of its own.
    gspo = compose_config(["model=tiny", "method=gspo"], shrink=False).method
    assert not list(CONF.glob("**/*gspo*.yaml"))[1:]  # conf/method/gspo.yaml is GSPO's only file
    assert (gspo.name, gspo.lr, gspo.lr_schedule, gspo.batch_size, gspo.max_steps, gspo.max_completion_length) == (
        "gspo", 1e-4, "constant", 16, 80, 64)


def test_the_method_picks_its_kl_schedule_and_kl_can_override_it():
    assert compose_config([], shrink=False).kl.name == "grpo_d"
    assert compose_config(["method=sft"], shrink=False).kl.name == "none"
    assert compose_config(["kl=constant", "kl.beta=0.01"], shrink=False).kl.beta == pytest.approx(0.01)


def test_real_models_load_from_hub_ids_with_r1v_pixels():
    expected = {
        "qwen2_vl_2b_instruct": "Qwen/Qwen2-VL-2B-Instruct",
        "qwen2_vl_7b_instruct": "Qwen/Qwen2-VL-7B-Instruct",
        "qwen2_5_vl_3b_instruct": "Qwen/Qwen2.5-VL-3B-Instruct",
    }
    for name, hub_id in expected.items():
        model = compose_config([f"model={name}"], shrink=False).model
        # fp32 master weights; trainer=gpu computes in bf16 (bf16-mixed).
        assert (model.source, model.path, model.dtype) == ("pretrained", hub_id, "float32")
        assert (model.min_pixels, model.max_pixels) == (3136, 401408)


def test_every_family_preset_composes_with_its_hub_id_and_the_folders_image_settings():
    """The non-Qwen presets keep their checkpoint's own image settings (no pixel budget: their
    processors have none); model=pretrained names the run after the checkpoint."""
    expected = {
        "qwen2_5_vl_7b_instruct": ("Qwen/Qwen2.5-VL-7B-Instruct", 401408),
        "qwen3_vl_2b_instruct": ("Qwen/Qwen3-VL-2B-Instruct", 401408),
        "smolvlm_256m_instruct": ("HuggingFaceTB/SmolVLM-256M-Instruct", None),
        "llava_1_5_7b": ("llava-hf/llava-1.5-7b-hf", None),
        "llava_onevision_0_5b": ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", None),
        "gemma3_4b_it": ("google/gemma-3-4b-it", None),
    }
    for name, (hub_id, max_pixels) in expected.items():
        model = compose_config([f"model={name}"], shrink=False).model
        assert (model.name, model.source, model.path, model.max_pixels) == (name, "pretrained", hub_id, max_pixels)
        assert model.image_processor == {}
    cfg = compose_config(["model=pretrained", "model.path=HuggingFaceTB/SmolVLM-256M-Instruct"], shrink=False)
    assert cfg.model.name == "SmolVLM-256M-Instruct" and "SmolVLM-256M-Instruct" in cfg.run_name
    cfg = compose_config(["model=pretrained", "model.path=/data/models/my-vlm/", "+model.image_processor.size.longest_edge=728"])
    assert cfg.model.name == "my-vlm" and cfg.model.image_processor == {"size": {"longest_edge": 728}}
    with pytest.raises(ConfigError, match="model.path is required with model=pretrained"):
        check_config(compose_config(["model=pretrained"]))


def test_one_prompt_per_task_shared_by_training_and_eval():
    cfg = compose_config([], shrink=False)
    for name, task in cfg.tasks.items():
        assert "{question}" in task.prompt
        assert task.prompt.startswith("{question}  Output the thinking process")  # R1-V's training template
        assert task.eval_prompt is None  # evaluation reuses `prompt` unless set


def test_semantic_checks_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="eval.tasks: unknown task 'nope'"):
        check_config(compose_config(["eval.tasks=[counting,nope]"], output_dir=tmp_path))
    with pytest.raises(ConfigError, match=r"task.prompt must contain '\{question\}'"):
        check_config(compose_config(["task.prompt=Count the objects."], output_dir=tmp_path))
    with pytest.raises(ConfigError, match="method.lr_schedule='exponential'"):
        check_config(compose_config(["method.lr_schedule=exponential"], output_dir=tmp_path))
    with pytest.raises(ConfigError, match="method.batch_size=0"):
        check_config(compose_config(["method.batch_size=0"], output_dir=tmp_path))
    with pytest.raises(ConfigError, match="ckpt='/no/such.ckpt'"):
        check_config(compose_config(["mode=eval", "ckpt=/no/such.ckpt"], output_dir=tmp_path))


def _golden_view(name: str) -> dict:
    """The composed experiment without machine-specific paths."""
    cfg = compose_config([f"experiment={name}"], output_dir=Path("/outputs"), shrink=False)
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # StrEnum fields as their names
    plain.pop("paths")
    for task in [plain["task"], *plain["tasks"].values()]:
        for key in ("test_jsonl", "image_root"):
            if task[key]:
                task[key] = str(Path(task[key]).relative_to(ROOT))
    return plain


def _without_new_unused_tasks(view: dict, golden: dict) -> dict:
    """`view` without the tasks that its golden lacks and the experiment neither trains nor scores: adding a
    task (its YAML and its line in conf/config.yaml) leaves every paper experiment as it was, while a
    changed or removed task the golden holds, or a new one the experiment uses, still fails."""
    used = {view["task"]["name"], *view["eval"]["tasks"]}
    new = set(view["tasks"]) - set(golden.get("tasks", {})) - used
    return {**view, "tasks": {name: task for name, task in view["tasks"].items() if name not in new}}


@pytest.mark.parametrize("name", options("experiment"))
def test_paper_experiment_matches_its_golden_config(name, request):
    """verl-style: a changed default that alters a paper experiment fails here until the golden
    file is regenerated on purpose (pytest --update-golden) and the diff reviewed."""
    golden = GOLDEN / f"{name}.yaml"
    view = _golden_view(name)
    if request.config.getoption("--update-golden"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(yaml.safe_dump(view, sort_keys=True, allow_unicode=True))
    assert golden.exists(), f"no golden config for experiment {name}: run pytest --update-golden"
    expected = yaml.safe_load(golden.read_text())
    assert expected == _without_new_unused_tasks(view, expected)


def test_a_new_task_leaves_the_goldens_but_a_changed_or_used_one_does_not():
    expected = yaml.safe_load((GOLDEN / "paper_grpo_d_counting_2b.yaml").read_text())
    view = _golden_view("paper_grpo_d_counting_2b")
    dice = {**view["tasks"]["counting"], "name": "dice", "source": "synthetic_dice"}
    assert _without_new_unused_tasks({**view, "tasks": {**view["tasks"], "dice": dice}}, expected) == expected
    scored = {**view, "tasks": {**view["tasks"], "dice": dice}, "eval": {**view["eval"], "tasks": ["counting", "dice"]}}
    assert _without_new_unused_tasks(scored, expected) != expected
    changed = {**view["tasks"], "geometry": {**view["tasks"]["geometry"], "max_new_tokens": 7}}
    assert _without_new_unused_tasks({**view, "tasks": changed}, expected) != expected
    removed = {k: v for k, v in view["tasks"].items() if k != "geoqa"}
    assert _without_new_unused_tasks({**view, "tasks": removed}, expected) != expected


def test_every_task_names_a_source_and_a_scorer_that_resolve():
    """A task's YAML alone names its data and its scorer: `source: synthetic_<module>` is the generator module
    data/synthetic/<module>.py, `scorer:` a registered scorer."""
    from othink_mr1.config_checks import check_task
    from othink_mr1.data.synthetic import generator
    from othink_mr1.rewards.scorers import get_scorer

    for name in options("task"):
        task = compose_config([f"task={name}"], shrink=False).task
        check_task(task, "task")
        assert get_scorer(task.scorer).name == task.scorer, name
        if task.source != "r1v":
            module = generator(task.source)
            assert module.__name__ == "othink_mr1.data.synthetic." + task.source.removeprefix("synthetic_"), name


def test_an_unknown_source_is_refused_naming_the_key_and_the_sources(tmp_path):
    with pytest.raises(ConfigError, match=r"^task.source='synthetic_no_such_generator': expected one of \[") as err:
        check_config(compose_config(["task.source=synthetic_no_such_generator"], output_dir=tmp_path))
    for source in ("synthetic_counting", "synthetic_counting_multi", "synthetic_geometry", "r1v"):
        assert f"'{source}'" in str(err.value)


def test_the_counting_generators_refuse_an_image_too_small_for_their_scenes(tmp_path):
    """The image-size check is counting's own hook (data/synthetic/counting.py check_config), run by the config
    checks for both counting sources and for no other."""
    from othink_mr1.config_checks import check_task

    message = "task.synthetic.image_size=84: counting scenes of up to 10 objects need at least 112px"
    with pytest.raises(ConfigError, match=f"^{message}$"):
        check_config(compose_config(["task.synthetic.image_size=84"], output_dir=tmp_path))
    cfg = compose_config(["tasks.counting_multi.synthetic.image_size=84", "tasks.geometry.synthetic.image_size=84",
                          "task.synthetic.image_size=112"], output_dir=tmp_path)
    check_task(cfg.task, "task")
    check_task(cfg.tasks.geometry, "tasks.geometry")  # geometry's generator has no such hook
    with pytest.raises(ConfigError, match=r"^tasks.counting_multi.synthetic.image_size=84: counting scenes"):
        check_task(cfg.tasks.counting_multi, "tasks.counting_multi")


# The paper's settings (brief, Sec. "Training setup"), stated here independently of the golden files,
# which only freeze whatever the presets compose to.
PAPER_KL = {
    "grpo_d_counting": {"name": "grpo_d", "beta_min": 0.04, "beta_max": 0.10, "warmup_ratio": 0.3},
    "grpo_d_geoqa": {"name": "grpo_d", "beta_min": 0.0, "beta_max": 0.02, "warmup_ratio": 0.3},
    "grpo_counting": {"name": "constant", "beta": 0.04},
    "grpo_geoqa": {"name": "constant", "beta": 0.01},
    "sft_counting": {"name": "none"},
    "sft_geoqa": {"name": "none"},
}


@pytest.mark.parametrize("name", [n for n in options("experiment") if n.startswith("paper_")])
def test_paper_presets_carry_the_papers_settings(name):
    cfg = compose_config([f"experiment={name}"], shrink=False)
    cell, size = name.removeprefix("paper_").rsplit("_", 1)
    assert cfg.model.name == {"2b": "qwen2_vl_2b_instruct", "7b": "qwen2_vl_7b_instruct"}[size]
    assert cfg.task.name == ("clevr_count" if "counting" in cell else "geoqa")
    if "counting" in cell:
        assert cfg.task.train_size == {"2b": 100, "7b": 120}[size]
    expected = PAPER_KL[cell]
    assert set(cfg.kl) == set(expected) and cfg.kl.name == expected["name"]
    assert all(cfg.kl[k] == pytest.approx(v) for k, v in expected.items() if k != "name")
    m = cfg.method
    if m.name == "grpo":
        assert (m.num_generations, m.temperature, m.lr, m.prompts_per_step, m.epochs, m.max_completion_length) == (
            8, 1.0, 1e-6, 16, 2, 512)
        assert dict(m.rewards) == {"accuracy": 1.0, "format": 1.0}  # alpha = 1
        assert m.loss_aggregation == "grpo" and m.num_iterations == 1
    else:  # the paper gives no SFT recipe: R1-V's, at 16 samples per optimizer step
        assert (m.lr, m.lr_schedule, m.warmup_ratio, m.epochs) == (2e-5, "cosine", 0.1, 1)
        assert m.batch_size * m.accumulate_grad_batches == 16


@pytest.mark.parametrize("name", [n for n in options("experiment") if n.startswith("one_gpu_")])
def test_one_gpu_recipes_keep_the_papers_batch_through_accumulation(name):
    from othink_mr1.utils.distributed import world_size

    cfg = compose_config([f"experiment={name}"], shrink=False)
    m = cfg.method
    assert world_size(cfg.trainer) == 1 and cfg.trainer.precision == "bf16-mixed"
    assert m.batch_size * m.accumulate_grad_batches == m.prompts_per_step == 16
    assert (m.num_generations, m.max_completion_length, m.num_iterations) == (8, 512, 1)
    assert (cfg.kl.name, cfg.kl.beta_max, cfg.model.name) == ("grpo_d", 0.02, "qwen2_vl_2b_instruct")
    assert cfg.model.lora.enabled == name.endswith("_lora")


@pytest.mark.parametrize("overrides, message", [
    (["trainer=fsdp", "model.lora.enabled=true"], r"trainer.strategy=fsdp with model.lora.enabled=true: .*trainer=ddp"),
    (["trainer=fsdp", "model.freeze.vision_tower=true"], r"trainer.strategy=fsdp with model.freeze.vision_tower=true"),
    (["trainer=fsdp", "method.rollout_engine=vllm"], r"trainer.strategy=fsdp with method.rollout_engine=vllm"),
])
def test_fsdp_refuses_units_that_would_mix_frozen_and_trained_weights(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config([*overrides, "trainer.accelerator=cpu"], output_dir=tmp_path))

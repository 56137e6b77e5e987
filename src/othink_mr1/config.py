"""Structured-config schemas for every Hydra config group.

Each group option in ``conf/`` starts its defaults list with the schema stored here
(``- /schema/<group>@_here_``, ``- /schema/sft@_here_`` for a method), so composition fails on a misspelt key or a value
of the wrong type and the error names the full key (``method.lrr``, ``task.train_size``), before
any data is loaded or any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from omegaconf import MISSING

from .rewards.base import DEFAULT_PROTOCOL, PROTOCOLS  # pure Python: no torch at config time

# Name sets checked when the config is composed: an unknown name fails there, and OmegaConf's message
# names the key and lists the valid names. Members are strings (`cfg.eval.protocol == "r1v"`).
ScoringProtocol = StrEnum("ScoringProtocol", {name: name for name in PROTOCOLS})
# pil: transformers' PIL image processors (R1-V's preprocessing); torchvision: its torchvision ones.
IMAGE_BACKENDS = ("pil", "torchvision")
ImageBackend = StrEnum("ImageBackend", {name: name for name in IMAGE_BACKENDS})
# method.decode_compile (models/decoding.py): run GRPO's decode step through torch.compile.
DECODE_COMPILE = ("auto", "on", "off")
DecodeCompile = StrEnum("DecodeCompile", {name: name for name in DECODE_COMPILE})
# method.rollout_engine: what samples GRPO's rollouts. hf: transformers' model in the training process
# (models/rollouts.py); vllm: an in-process vLLM engine beside it (models/vllm_engine.py).
ROLLOUT_ENGINES = ("hf", "vllm")
RolloutEngine = StrEnum("RolloutEngine", {name: name for name in ROLLOUT_ENGINES})
# eval.split: the split evaluation scores. validation (synthetic tasks only) is for tuning, never for reporting.
EVAL_SPLITS = ("test", "validation")
EvalSplit = StrEnum("EvalSplit", {name: name for name in EVAL_SPLITS})

# --------------------------------------------------------------------------------------------- task

# R1-V's prompt (the paper's, for counting and geometry alike).
R1V_PROMPT = ("{question}  Output the thinking process in <think> </think> and final answer (number) in "
              "<answer> </answer> tags.")


@dataclass
class SyntheticDataConfig:
    """Size and seed of a generated (Pillow-rendered) dataset."""

    num_train: int = MISSING
    num_validation: int = MISSING
    num_test: int = MISSING
    image_size: int = 112
    seed: int = 0


@dataclass
class TaskConfig:
    """One task: where its train/test splits come from, how it is prompted and scored."""

    name: str = MISSING
    # Which loader builds the splits: r1v, or synthetic_<module> (the generator data/synthetic/<module>.py).
    source: str = MISSING
    # Scorer used by evaluation and rewards: counting | geometry.
    scorer: str = MISSING
    # One template shared by SFT, GRPO and evaluation; must contain "{question}". Default: R1-V's
    # training prompt, which the paper uses for every task.
    prompt: str = R1V_PROMPT
    # Evaluation normally reuses `prompt`; set this to reproduce R1-V's separate eval templates.
    eval_prompt: Optional[str] = None
    # Greedy decoding budget per item at evaluation (R1-V: 256 counting, 1024 geometry).
    max_new_tokens: int = MISSING
    # Optional few-shot subset of the train split (the paper trains counting on 100 samples).
    train_size: Optional[int] = None
    train_subset_seed: int = 0
    # Optional subset of the test split, for quick looks; None = the whole split.
    eval_size: Optional[int] = None
    # Synthetic tasks.
    synthetic: Optional[SyntheticDataConfig] = None
    # R1-V tasks: train split from a hub id or a local path (save_to_disk folder, parquet, jsonl),
    # test split from R1-V's jsonl plus the folder its image paths are relative to.
    train_source: Optional[str] = None
    train_split: str = "train"
    test_jsonl: Optional[str] = None
    image_root: Optional[str] = None
    # Tasks scored alongside this one when it is trained (same-task and cross-task generalization).
    eval_tasks: list[str] = field(default_factory=list)


# -------------------------------------------------------------------------------------------- model


@dataclass
class TinyArchConfig:
    """Architecture of the embedded tiny Qwen2-VL (random weights, local tokenizer)."""

    vocab_size: int = MISSING
    hidden_size: int = MISSING
    intermediate_size: int = MISSING
    num_hidden_layers: int = MISSING
    num_attention_heads: int = MISSING
    num_key_value_heads: int = MISSING
    max_position_embeddings: int = MISSING
    vision_depth: int = MISSING
    vision_embed_dim: int = MISSING
    vision_num_heads: int = MISSING
    vision_mlp_ratio: int = MISSING
    seed: int = MISSING


@dataclass
class TinyBaseBuildConfig:
    """The short 'pretraining' that turns `tiny` into `tiny_base` (a stand-in instruct model)."""

    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    warmup_ratio: float = MISSING
    # Pretraining items drawn per synthetic task (`counting`, `geometry`), shuffled together: the mix sets
    # how far each task gets (counting learns in fewer items than geometry's copying does).
    num_train: dict[str, int] = MISSING
    # Accuracy window the built model must land in on each synthetic test split.
    min_accuracy: float = MISSING
    max_accuracy: float = MISSING
    seed: int = MISSING


@dataclass
class LoraConfig:
    """LoRA adapters through peft (`model.lora.enabled=true`). The base weights stay frozen, so the KL
    reference is the same model with its adapters switched off (no second copy in memory)."""

    enabled: bool = False
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # Linear layers of the language model that get adapters, by the last part of their name; a name
    # that is no linear layer of the loaded model's language model is an error.
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    # false: the vision tower stays frozen (R1-V's LoRA); true: every linear layer of its blocks
    # (attention and MLP, whatever the family names them) gets adapters too.
    vision_tower: bool = False


@dataclass
class FreezeConfig:
    """Parts of a full fine-tuning run that stay fixed (not in the optimizer, no gradients), found from
    the loaded model's structure (models/adapters.py); a part this model lacks is an error."""

    vision_tower: bool = False  # the vision encoder: patch embedding, blocks, norms
    merger: bool = False  # the projector into the language model (and e.g. LLaVA-OneVision's image_newline)
    language_model: bool = False  # decoder layers, embeddings and the output head


@dataclass
class ModelConfig:
    name: str = MISSING
    # tiny | tiny_base | pretrained (a hub id or a local folder, loaded with from_pretrained).
    source: str = MISSING
    # pretrained: the hub id or folder. tiny_base: a folder built by `python -m othink_mr1.jobs.tiny_base`
    # (null: the one the project ships, models/tiny_base/).
    path: Optional[str] = None
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    # Image settings on top of the folder's own (None keeps the folder's): pixel budgets for processors
    # that resize to a pixel count (the Qwen families; R1-V: 3136..401408), any other image processor
    # setting by name (`model.image_processor.size.longest_edge=728`, `...do_image_splitting=false`).
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    image_processor: dict[str, Any] = field(default_factory=dict)
    # Which of transformers' image processors resizes and normalizes images: pil (R1-V's, the same on
    # every machine) | torchvision (fails the run where torchvision does not import; never a fallback).
    image_backend: ImageBackend = ImageBackend.pil
    trust_remote_code: bool = False
    # Caps every task's max_new_tokens for models with a short context (the tiny ones).
    max_new_tokens_cap: Optional[int] = None
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    tiny: Optional[TinyArchConfig] = None
    base_build: Optional[TinyBaseBuildConfig] = None


# ------------------------------------------------------------------------------------------- method


@dataclass
class MethodConfig:
    """What every training method shares: optimisation and batch geometry."""

    name: str = MISSING
    # The method's recipe is stated in conf/method/<name>.yaml (MISSING here); the settings below with a
    # value are the same for every method and stated only here.
    lr: float = MISSING
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_schedule: str = MISSING  # cosine | linear | constant
    warmup_ratio: float = MISSING
    max_grad_norm: Optional[float] = 1.0
    # Prompts per device per micro-batch, and micro-batches per optimizer step.
    batch_size: int = MISSING
    accumulate_grad_batches: int = MISSING
    epochs: int = MISSING
    # Optimizer steps; overrides `epochs` when set.
    max_steps: Optional[int] = None
    # A step with a non-finite loss, reward or gradient is skipped (counted, logged); this many in a
    # row stop the run with an error.
    max_nonfinite_skips: int = 3


@dataclass
class SFTConfig(MethodConfig):
    # auto: "thinking + solution" when the data has a thinking field, else the solution alone.
    target: str = MISSING  # auto | solution | thinking_solution
    # Loss on the assistant tokens only (R1-V) or on every non-image token of the sequence.
    loss_on: str = MISSING  # assistant | all


@dataclass
class GRPOConfig(MethodConfig):
    """GRPO (DeepSeekMath) as R1-V runs it, with a scheduled KL coefficient (`kl=`).

    Batch geometry: `prompts_per_step` = batch_size (prompts per micro-batch per device) x
    accumulate_grad_batches x devices; each prompt is expanded to `num_generations` completions inside
    the step, so a group never crosses micro-batches or devices. Values: conf/method/grpo.yaml.
    """

    prompts_per_step: int = MISSING
    num_generations: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    # 0 samples from the whole distribution (what the loss's log-probs assume); R1-V inherited
    # transformers' default top_k = 50.
    top_k: int = MISSING
    max_completion_length: int = MISSING
    # The end-of-turn token is blocked before this many tokens (0: off). For benchmarks that need equal
    # completion lengths (bench/grpo_vs_trl.py), like generate()'s min_new_tokens.
    min_completion_length: int = MISSING
    # Reward name -> weight; total = sum(weight * reward). format weight = the paper's alpha.
    rewards: dict[str, float] = MISSING
    # (r - mean) / (std + 1e-4) within each group; False keeps r - mean (Dr. GRPO).
    scale_rewards: bool = MISSING
    # mu: updates per rollout batch. 1 (R1-V) makes the ratio identically 1 and the clip inert.
    num_iterations: int = MISSING
    epsilon: float = MISSING
    # Upper clip bound (DAPO's clip-higher); None = epsilon.
    epsilon_high: Optional[float] = MISSING
    # grpo: token mean per completion, then mean (the paper's); dapo: token mean over the batch;
    # dr_grpo: token sum over a fixed max_completion_length.
    loss_aggregation: str = MISSING
    # Log-prob passes run each prompt (and image) once and its G completions on top of the shared KV
    # cache (models/prefix_sharing.py): same values to float tolerance, about 2.5x less work on the
    # tiny tasks. False runs every prompt + completion sequence in full (a reference for the check).
    share_prompt_prefix: bool = MISSING
    # The rollout decode step (models/decoding.py) under torch.compile: on | off | auto (on for CUDA, where it
    # runs as a CUDA graph; off on CPU, where compiling costs about half a minute per process). The same
    # tokens either way; a compiler failure under auto falls back to eager with one warning, recorded in
    # results.json (train.decode).
    decode_compile: DecodeCompile = MISSING
    # What samples the rollouts (docs/training.md, "Rollout engine"): hf, or vllm (an in-process vLLM engine
    # that gets the policy's weights before each optimizer step's rollouts). The loss always uses the training
    # model's log-probs; with vllm the gap to the engine's is logged as train/rollout_logprob_gap.
    rollout_engine: RolloutEngine = MISSING
    # Truncated importance sampling (verl's TIS): each token's loss weighted by min(pi_train / pi_engine, cap)
    # for the engine's sampling mismatch; None = off. vllm only.
    rollout_is_cap: Optional[float] = MISSING
    # The share of GPU memory vLLM may take (weights, activations, KV cache) beside training; vllm only.
    vllm_gpu_memory_utilization: float = MISSING


# ---------------------------------------------------------------------------------------- kl


@dataclass
class KLConfig:
    """KL-coefficient schedule for GRPO (`kl=`); `none` = no KL term and no reference model. Each
    schedule's own fields are its `Config`, beside its class in methods/kl_schedules.py; the values are
    stated in conf/kl/<name>.yaml."""

    name: str = MISSING


# ------------------------------------------------------------------------------- the other groups


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    log_every_n_steps: int = 1
    deterministic: bool = False
    # Progress output: on a terminal Lightning's bar; otherwise (nohup, SLURM, CI) a plain line every
    # progress_every_s seconds and at the end of each loop (0: every step; null: none). false: neither.
    # utils/progress.py.
    enable_progress_bar: bool = True
    progress_every_s: Optional[float] = 30.0
    # Torch CPU threads (None: leave torch's default).
    num_threads: Optional[int] = None
    # Save checkpoints/last.ckpt every N optimizer steps (and at the end), for resume.
    checkpoint_every_n_steps: Optional[int] = 50
    # strategy=fsdp: module classes that become FSDP units (empty: the model's _no_split_modules,
    # i.e. Qwen2-VL's decoder layers and ViT blocks), and torch's ShardingStrategy name.
    fsdp_wrap: list[str] = field(default_factory=list)
    fsdp_sharding: str = "FULL_SHARD"
    # After every optimizer step: identical parameters on all ranks, each prompt's completions on one
    # rank (written to <run_dir>/distributed_checks.jsonl). For debugging a cluster set-up; costs a
    # parameter hash and an all_gather per step.
    check_distributed: bool = False


@dataclass
class LoggerConfig:
    # csv is always written; wandb is added when `wandb` is true.
    wandb: bool = False
    project: str = "othink-mr1"
    entity: Optional[str] = None
    group: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled
    tags: list[str] = field(default_factory=list)


@dataclass
class PathsConfig:
    root_dir: str = "."
    output_dir: str = MISSING
    cache_dir: str = MISSING
    run_dir: str = MISSING


@dataclass
class EvalConfig:
    # Tasks scored at evaluation; default: the trained task's `eval_tasks`.
    tasks: list[str] = MISSING
    batch_size: int = 16
    # Validate during training every N optimizer steps (None: only before and after training).
    every_n_steps: Optional[int] = None
    # Score the starting model before any training ("row zero").
    row_zero: bool = True
    write_completions: bool = True
    # How answers are judged (rewards.base.PROTOCOLS): r1v, R1-V's evaluation and the paper's (parse the
    # whole output with math-verify), or normalized (the normalising answer-span geometry scorer). GRPO's
    # accuracy reward pays the same protocol's verdict.
    protocol: ScoringProtocol = ScoringProtocol(DEFAULT_PROTOCOL)
    # Which split is scored: test (what results report) or validation (synthetic tasks only: items kept
    # apart from train and test, for tuning settings without looking at the test split).
    split: EvalSplit = EvalSplit.test
    # Training curves (evaluation/curve.py): every eval task scored at this many evenly spaced optimizer steps,
    # step 0 and the last included, on a fixed subset of its split: greedy accuracy, and sampled accuracy
    # (mean@k) and KL to the starting model from curve_samples completions per item at temperature 1.
    # null: end points only. On tiny_base the defaults cost about a fifth of the main job (docs/results.md).
    curve_points: Optional[int] = 5
    # Items per task in the subset (the same items for every run: chosen by curve_seed alone).
    curve_items: int = 32
    curve_samples: int = 4
    curve_seed: int = 0


@dataclass
class DataConfig:
    # A row with an unreadable image, a missing or empty field or broken JSON: "error" stops the run
    # before training and names it; "skip" leaves it out, counts it and lists it in
    # <run_dir>/bad_rows.jsonl (and results.json's data.skipped_rows).
    on_bad_row: str = "error"
    # With skip: a split with more than this fraction of its examined rows bad still stops the run
    # (a wrong image_root or schema, not a few damaged rows).
    max_bad_fraction: float = 0.1


@dataclass
class Config:
    task: TaskConfig = MISSING
    # Every task that can be evaluated, by name (the trained one is `task`).
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    method: MethodConfig = MISSING
    model: ModelConfig = MISSING
    kl: KLConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = MISSING
    eval: EvalConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    mode: str = "train"  # train | eval
    seed: int = 42
    # Free-form suffix that separates otherwise identical runs (ablations, repeats).
    tag: str = ""
    run_name: str = MISSING
    # eval mode: a checkpoint (.ckpt) or a saved model folder to evaluate instead of model.*.
    ckpt: Optional[str] = None
    # Export the trained model with save_pretrained into <run_dir>/model (reusable as model.path).
    save_model: bool = True
    # Continue an unfinished run: true = its checkpoints/last.ckpt, or a checkpoint path; auto = its
    # last.ckpt when there is one, else start it (the sweeps' setting, so a re-launch continues cells).
    resume: Any = False
    # Set by a sweep (sweeps/): the grid cell this job is (base, sft, grpo, grpo_d, ...); recorded in
    # results.json for the report.
    cell: str = ""
    # Set by a sweep: its name (paper_grid, smoke, ...), the wandb group unless logger.group is set.
    sweep: str = ""
    # Read by sweeps only: `seeds=3` runs seeds 1..3, `seeds=1,5` runs those seeds.
    seeds: Any = None

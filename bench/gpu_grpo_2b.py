"""GRPO on a Qwen2-VL-2B-shaped model with random weights, on one GPU, through the framework's own
run path (issue 5's GPU check; no download: the architecture is Qwen2-VL-2B-Instruct's config, the
tokenizer and processor are the embedded tiny ones, the images the synthetic geometry diagrams
upscaled to 448 px, 256 visual tokens each).

    python bench/gpu_grpo_2b.py [--steps 2] [--generations 8] [--tokens 512] [--prompts 16] [--micro-batch 4]
                                [--decode-compile both|on|off|auto] [--engine hf|vllm|both] [--vllm-memory 0.3]
                                [--lora] [--out bench/results/gpu_grpo_2b.json]
    python bench/gpu_grpo_2b.py --small --cpu --steps 2 --tokens 8     # a smoke run on CPU (about a minute)

The paper's step: --prompts 16 prompts, G 8 completions each of exactly --tokens tokens (min = max new
tokens), in micro-batches of --micro-batch prompts, bf16 mixed precision (fp32 weights and Adam state),
beta > 0 (a reference model, or with --lora the adapter-disabled policy). `--decode-compile both` (the
default) runs the job twice, with the compiled decode step (method.decode_compile=on: a CUDA graph on
GPU) and without it. Records per run: seconds per step, decode tokens per second (completion tokens over
the time spent sampling), the first step apart (it carries the compile), peak GPU memory, and how the
run decoded (results.json's train.decode). The default command is sized to finish within 10 minutes on
one H100/H200. `--engine vllm` (or both) samples the rollouts with the in-process vLLM engine
(method.rollout_engine=vllm, with --vllm-memory as method.vllm_gpu_memory_utilization; run it with the
Python of an environment with vllm's CUDA build and the project installed: docs/training.md); its runs add the engine's record (start, sync and sampling seconds, syncs) and decode_compile does not apply.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _config import ROOT, compose

# Qwen2-VL-2B-Instruct's architecture (its config.json), with the tiny tokenizer's special-token ids.
QWEN2_VL_2B = dict(
    text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
              num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, mrope_section=[16, 24, 24]),
    vision=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4),
    vocab_size=151936,
)
SMALL = dict(
    text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1000000.0, mrope_section=[4, 6, 6]),
    vision=dict(depth=2, embed_dim=64, hidden_size=128, num_heads=4, mlp_ratio=2),
    vocab_size=2048,
)


def build_folder(folder: Path, shape: dict, cache_dir: str) -> None:
    """A saved random-weight Qwen2-VL of `shape` with the tiny processor (image budget 448 px)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from othink_mr1.models.factory import load_local, tiny_folder
    from othink_mr1.models.tiny import SPECIAL_TOKENS

    _, processor = load_local(tiny_folder(compose("model=tiny").model, cache_dir))
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(shape["text"])
    mrope = text.pop("mrope_section")
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=shape["vocab_size"], rope_parameters={"rope_type": "default", "mrope_section": mrope,
                                                                          "rope_theta": text.pop("rope_theta")},
                         tie_word_embeddings=True, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         bos_token_id=None, **text),
        vision_config=dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, **shape["vision"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = ids["<|im_end|>"], ids["<|endoftext|>"]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=4, help="prompts per micro-batch")
    parser.add_argument("--decode-compile", default="both", choices=["both", "on", "off", "auto"])
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm", "both"])
    parser.add_argument("--vllm-memory", type=float, default=0.3, help="method.vllm_gpu_memory_utilization")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--small", action="store_true", help="a tiny model of the same layout (smoke test)")
    parser.add_argument("--cpu", action="store_true", help="trainer=cpu, fp32 (smoke test)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gpu_grpo_2b_"))
    cache = compose("model=tiny").paths.cache_dir
    build_folder(work / "model", SMALL if args.small else QWEN2_VL_2B, cache)
    modes = ["on", "off"] if args.decode_compile == "both" else [args.decode_compile]
    runs = ([("hf", mode) for mode in modes] if args.engine in ("hf", "both") else []) + \
        ([("vllm", "off")] if args.engine in ("vllm", "both") else [])
    summaries = [one_run(args, work, mode, engine) for engine, mode in runs]
    print(json.dumps(summaries, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summaries, indent=2) + "\n")


def one_run(args: argparse.Namespace, work: Path, decode_compile: str, engine: str = "hf") -> dict:
    """One training job with method.decode_compile=`decode_compile` and method.rollout_engine=`engine`; its timings."""
    import torch

    from othink_mr1.methods.grpo import GRPOModule
    from othink_mr1.runner import run

    P, M, G, T = args.prompts, args.micro_batch, args.generations, args.tokens
    if P % M:
        raise SystemExit(f"--prompts {P} is not a multiple of --micro-batch {M}")
    overrides = [
        "model=qwen2_vl_2b_instruct", f"model.path={work / 'model'}", "model.max_pixels=200704", "model.min_pixels=200704",
        "task=geometry", "task.synthetic.image_size=448", f"task.synthetic.num_train={max(64, P * (args.steps + 1))}",
        "kl=constant", "kl.beta=0.04", f"method.prompts_per_step={P}", f"method.batch_size={M}",
        f"method.accumulate_grad_batches={P // M}", f"method.num_generations={G}", f"method.max_completion_length={T}",
        f"method.min_completion_length={T}", f"method.max_steps={args.steps}", f"method.decode_compile={decode_compile}",
        "eval.row_zero=false", "eval.tasks=[geometry]", "task.synthetic.num_test=8", "tasks.geometry.synthetic.num_test=8",
        f"task.max_new_tokens={T}", "trainer.enable_progress_bar=false", "trainer.checkpoint_every_n_steps=null",
        "trainer=cpu" if args.cpu else "trainer=gpu", f"tag={engine}_decode_{decode_compile}",
        f"method.rollout_engine={engine}", f"method.vllm_gpu_memory_utilization={args.vllm_memory}",
        "eval.curve_points=null",  # step times alone: no training curve between the steps
    ] + (["model.lora.enabled=true", "model.lora.rank=64", "model.lora.alpha=128", "method.lr=1e-5"] if args.lora else [])
    cfg = compose(*overrides, output_dir=work / "outputs")
    sampling: list[float] = []
    original = GRPOModule.draw  # what a step calls to sample, with either engine

    def timed_sample(self, batch):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = original(self, batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        sampling.append(time.perf_counter() - started)
        return out

    GRPOModule.draw = timed_sample
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # results.json's peak is this run's, not the process's
    try:
        started = time.time()
        results = run(cfg)
    finally:
        GRPOModule.draw = original
    train_s = results["train"]["seconds"]
    per_step = P // M  # sample calls per optimizer step
    first, rest = sampling[:per_step], sampling[per_step:]
    tokens_per_call = M * G * T
    return {
        "shape": "small" if args.small else "Qwen2-VL-2B-Instruct (random weights)", "lora": args.lora,
        "engine": engine, "decode_compile": decode_compile, "decode": results["train"].get("decode"),
        "rollout_engine": results["train"].get("rollout_engine"),
        "prompts_per_step": P, "micro_batch": M, "num_generations": G, "completion_tokens": T, "steps": args.steps,
        "hardware": results["hardware"], "train_seconds": train_s,
        "seconds_per_step": round(train_s / args.steps, 2),
        "first_step_sampling_seconds": round(sum(first), 2),
        "decode_tokens_per_second": round(tokens_per_call * len(rest) / sum(rest), 1) if rest else None,
        "decode_tokens_per_second_first_step": round(tokens_per_call * len(first) / sum(first), 1),
        "completion_tokens_per_second": round(P * G * T * args.steps / train_s, 1),
        "wall_seconds": round(time.time() - started, 1),
    }


if __name__ == "__main__":
    main()

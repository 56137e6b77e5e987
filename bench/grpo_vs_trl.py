"""Our GRPO step against TRL's GRPOTrainer on identical work, alternating in one process.

    pip install -r bench/requirements.txt      # trl, for this benchmark only
    python bench/grpo_vs_trl.py [--pairs 5] [--steps 3] [--prompts 16] [--generations 8] [--tokens 64]
                                [--threads 2] [--out bench/results/grpo_vs_trl.json]

Same work on both sides: the shipped tiny_base model (models/tiny_base; TRL loads the same folder),
the synthetic counting train prompts and images through the same processor and chat template, G
completions per prompt of exactly --tokens tokens (min = max new tokens), temperature 1, beta 0.04 so
both compute a reference, one update per rollout (mu 1), the per-sequence token-mean loss ("grpo"),
the accuracy + format reward, AdamW, fp32, no gradient checkpointing, the same torch threads.

First, the equal-work check (after one optimizer step of ours, whose weights TRL's policy then
takes, so the policy and the reference differ): TRL samples one rollout and both sides score it;
prompt tokens, completion masks, advantages, policy and reference log-probs, KL and loss must agree to
float tolerance. Then one warm-up step of TRL's, then --pairs rounds of --steps optimizer steps of ours
followed by as many of TRL's. A step is timed from its start to the end of its optimizer step
(sampling, rewards, reference, loss, backward, update). Printed: per-round medians, the median step
of each system over all rounds with its min-max, and ours / TRL per round and overall.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _config import ROOT, compose

BETA = 0.04
LR = 1e-5


def our_side(args: argparse.Namespace, out: Path, *overrides: str) -> dict[str, Any]:
    """Our GRPOModule on tiny_base, with a prompt loader over the counting train split (`overrides`: more
    Hydra overrides)."""
    import torch
    from torch.utils.data import DataLoader

    from othink_mr1.data.collate import PromptCollator
    from othink_mr1.data.tasks import TaskSplit, load_split
    from othink_mr1.models.factory import tiny_base_folder
    from othink_mr1.runner import build_module, load_weights

    P, G, T = args.prompts, args.generations, args.tokens
    cfg = compose("model=tiny_base", "task=counting", "kl=constant", f"kl.beta={BETA}", f"method.num_generations={G}",
                  f"method.prompts_per_step={P}", f"method.batch_size={P}", "method.accumulate_grad_batches=1",
                  f"method.max_completion_length={T}", f"method.min_completion_length={T}", f"model.max_new_tokens_cap={T}",
                  f"method.lr={LR}", "method.lr_schedule=constant", "method.warmup_ratio=0.0", "method.max_steps=1000",
                  *overrides, output_dir=out)
    model, processor = load_weights(cfg)
    module = build_module(cfg, model, processor, type("Budget", (), {"total_steps": 1000})(), None, {})
    split = TaskSplit(cfg.task, "train", load_split(cfg.task, "train", cfg.paths.cache_dir))
    collate = PromptCollator(processor, cfg.task.prompt, split="counting train")
    loader = DataLoader(split, batch_size=P, shuffle=True, collate_fn=collate, generator=torch.Generator().manual_seed(0))
    return {"cfg": cfg, "module": module, "processor": processor, "split": split, "collate": collate, "loader": loader,
            "folder": tiny_base_folder(cfg.model)}


def trl_side(args: argparse.Namespace, ours: dict[str, Any], out: Path) -> Any:
    """TRL's GRPOTrainer on the same model folder, prompts, images and reward."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from othink_mr1.data.collate import chat_messages
    from othink_mr1.rewards.grpo_rewards import compute_rewards

    split, task = ours["split"], ours["cfg"].task
    rows = []
    for index in range(len(split)):
        example = split[index]
        rows.append({"prompt": chat_messages(task.prompt, example.question), "image": example.images[0],  # counting: one image per item
                     "answer": example.answer, "question": example.question})
    dataset = Dataset.from_list(rows)
    weights = dict(ours["cfg"].method.rewards)

    def accuracy_and_format(prompts, completions, answer, question, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        total, _parts = compute_rewards(weights, texts, answer=answer, question=question, scorer=["counting"] * len(texts))
        return total

    P, G, T = args.prompts, args.generations, args.tokens
    config = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=P * G, gradient_accumulation_steps=1,
        num_generations=G, max_completion_length=T, generation_kwargs={"min_new_tokens": T}, temperature=1.0,
        top_p=1.0, top_k=0, beta=BETA, loss_type="grpo", num_iterations=1, scale_rewards="group",
        learning_rate=LR, lr_scheduler_type="constant", bf16=False, fp16=False,
        gradient_checkpointing=False, use_cpu=True, report_to=[], logging_steps=10**6, save_strategy="no",
        log_completions=False, max_steps=args.steps, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    return GRPOTrainer(model=str(ours["folder"]), reward_funcs=[accuracy_and_format], args=config,
                       train_dataset=dataset, processing_class=ours["processor"])


def equal_work_check(args: argparse.Namespace, ours: dict[str, Any], trl: Any) -> dict[str, float]:
    """One TRL rollout scored by both sides; every quantity the loss uses must agree. Run after our
    warm-up step, with our updated policy copied into TRL's model, so the policy differs from the
    reference and the KL term is not trivially zero."""
    import torch

    from othink_mr1.models.rollouts import completion_mask
    from othink_mr1.methods.grpo_loss import grpo_loss

    P, G = args.prompts, args.generations
    module, split = ours["module"], ours["split"]
    trl.model.load_state_dict(module.model.state_dict())
    trl.model.train()
    rows = [trl.train_dataset[i] for i in range(P) for _ in range(G)]  # TRL's sampler repeats each prompt G times
    torch.manual_seed(0)
    out = trl._generate_and_score_completions(rows)
    batch = ours["collate"]([split[i] for i in range(P)])

    # Same prompt tokens (both left-padded to the longest prompt).
    trl_prompts = out["prompt_ids"][::G]
    width = min(trl_prompts.shape[1], batch["input_ids"].shape[1])
    assert torch.equal(trl_prompts[:, -width:], batch["input_ids"][:, -width:]), "prompt tokens differ"
    completion_ids = out["completion_ids"]
    mask = completion_mask(completion_ids, ours["processor"].tokenizer.eos_token_id)
    assert torch.equal(mask, out["completion_mask"].long()), "completion masks differ"

    rollout = module.build_rollout(batch, completion_ids)
    with torch.no_grad():
        trl_logp, _, _ = trl._get_per_token_logps_and_entropies(
            trl.model, torch.cat([out["prompt_ids"], completion_ids], dim=1),
            torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1), completion_ids.shape[1],
            pixel_values=out.get("pixel_values"), image_grid_thw=out.get("image_grid_thw"),
            num_images=out.get("num_images"), mm_token_type_ids=out.get("mm_token_type_ids"))
        our_logp = module.log_probs(module.model, rollout)
        trl.current_gradient_accumulation_steps = 1  # set by train(); one micro-batch per step here
        trl_loss = trl.compute_loss(trl.model, out)
        our_loss, stats = grpo_loss(our_logp, rollout.advantages, rollout.completion_mask, ref_logp=rollout.ref_logp,
                                    beta=BETA, aggregation="grpo")
    valid = mask.bool()
    trl_kl = trl._metrics["train"]["kl"][-1]
    diffs = {
        "advantages": float((rollout.advantages - out["advantages"]).abs().max()),
        "policy_logp": float((our_logp - trl_logp)[valid].abs().max()),
        "reference_logp": float((rollout.ref_logp - out["ref_per_token_logps"])[valid].abs().max())
        if "ref_per_token_logps" in out else float("nan"),
        "kl": abs(float(stats["kl"]) - float(trl_kl)),
        "loss": abs(float(our_loss) - float(trl_loss)),
    }
    assert float(stats["kl"]) > 0, "the policy should differ from the reference after a step"
    tolerance = {"advantages": 1e-5, "policy_logp": 1e-4, "reference_logp": 1e-4, "kl": 1e-6, "loss": 1e-5}
    failed = {k: v for k, v in diffs.items() if not v <= tolerance[k]}
    print(f"[check] one TRL rollout ({P} prompts x G={G}) scored by both: max |difference| "
          + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()) + f" (KL itself {float(stats['kl']):.2e}, loss "
          f"{float(our_loss):.3e})" + (f"  FAILED: {failed}" if failed else "  -> equal work"), flush=True)
    if failed:
        raise SystemExit(f"equal-work check failed: {failed}")
    return {"max_abs_difference": diffs, "kl": float(stats["kl"]), "loss": float(our_loss)}


def time_ours(ours: dict[str, Any], steps: int) -> list[float]:
    import pytorch_lightning as pl

    times: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            times.append(time.perf_counter() - self.t0)

    # default_root_dir: where a vLLM rollout engine writes its folder (method.rollout_engine=vllm).
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Timer()],
                         use_distributed_sampler=False, num_sanity_val_steps=0, limit_val_batches=0,
                         default_root_dir=str(ours["cfg"].paths.run_dir))
    trainer.fit(ours["module"], train_dataloaders=ours["loader"])
    ours["trainer"] = trainer  # its callback_metrics: the last step's logged values
    return times


def time_trl(trl: Any, steps: int) -> list[float]:
    from transformers import TrainerCallback

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.t0)

    timer = Timer()
    trl.add_callback(timer)
    trl.args.max_steps = steps
    trl.train()
    trl.remove_callback(timer)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per system per round")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-compile", default="on", choices=["auto", "on", "off"],
                        help="method.decode_compile for our side (on: compiled decode step, also on CPU)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "grpo_vs_trl.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="grpo_vs_trl_"))
    ours = our_side(args, out, f"method.decode_compile={args.decode_compile}")
    trl = trl_side(args, ours, out)
    # Warm-up (first-call allocations, lazy imports, and compiling the decode step for every shape it
    # takes); moves the policy off the reference. Timed apart: compile time is not a step's.
    warmup_ours = time_ours(ours, 2)
    check = equal_work_check(args, ours, trl)
    time_trl(trl, 1)
    rounds = []
    for pair in range(args.pairs):
        ours_times, trl_times = time_ours(ours, args.steps), time_trl(trl, args.steps)
        rounds.append({"ours": ours_times, "trl": trl_times,
                       "ratio": statistics.median(ours_times) / statistics.median(trl_times)})
        print(f"[round {pair + 1}/{args.pairs}] ours median {statistics.median(ours_times):.3f} s/step, TRL "
              f"{statistics.median(trl_times):.3f} s/step, ratio {rounds[-1]['ratio']:.3f}", flush=True)

    all_ours = [t for r in rounds for t in r["ours"]]
    all_trl = [t for r in rounds for t in r["trl"]]
    ratios = [r["ratio"] for r in rounds]
    summary = {
        "command": "python bench/grpo_vs_trl.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "trl": __import__("trl").__version__, "transformers": __import__("transformers").__version__},
        "work": {"model": "tiny_base", "task": "counting", "prompts_per_step": args.prompts,
                 "num_generations": args.generations, "completion_tokens": args.tokens, "beta": BETA, "mu": 1,
                 "loss": "grpo", "precision": "fp32"},
        "equal_work_check": check,
        "decode_compile": args.decode_compile,
        # The two warm-up steps of ours; with the compiled decode step the first carries the compile time.
        "ours_warmup_steps_s": warmup_ours,
        "ours_s_per_step": {"median": statistics.median(all_ours), "min": min(all_ours), "max": max(all_ours)},
        "trl_s_per_step": {"median": statistics.median(all_trl), "min": min(all_trl), "max": max(all_trl)},
        "ratio_ours_over_trl": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "rounds": rounds,
    }
    o, t, r = summary["ours_s_per_step"], summary["trl_s_per_step"], summary["ratio_ours_over_trl"]
    print(f"\nours warm-up steps (compile included): {', '.join(f'{w:.1f}' for w in warmup_ours)} s")
    print(f"ours {o['median']:.3f} s/step ({o['min']:.3f}-{o['max']:.3f}), TRL {t['median']:.3f} s/step "
          f"({t['min']:.3f}-{t['max']:.3f}); ours / TRL median {r['median']:.3f} over {args.pairs} pairs "
          f"({r['min']:.3f}-{r['max']:.3f})")
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()

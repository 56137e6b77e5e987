"""Where a GRPO step's time goes: sampling, rewards, reference log-probs, policy forward/backward/update.

    python bench/grpo_profile.py [--prompts 4] [--generations 8] [--tokens 512] [--steps 3] [--threads 2]
                                 [--label NAME] [--out bench/results/grpo_profile.json] [OVERRIDE ...]

The work of bench/grpo_vs_trl.py (tiny_base, synthetic counting prompts, G completions of exactly --tokens
tokens, beta 0.04 so a reference runs), our side only, through the Lightning loop. The module's methods are
wrapped with timers: `sample` (rollout decoding), `reference_log_probs`, and the rest of the step (rewards,
policy log-probs, loss, backward, optimizer). One warm-up step (it carries any compile time, reported
apart), then --steps timed steps; medians per phase. OVERRIDEs are Hydra overrides
(e.g. method.decode_compile=off). Results are appended to --out under --label with commit and machine.

Per rollout engine (bench/RESULTS.md, "GRPO step per rollout engine"), from bench/ in .venv-vllm:
    ../.venv-vllm/bin/python grpo_profile.py --tokens 64 --label hf --out results/rollout_engines.json
    ../.venv-vllm/bin/python grpo_profile.py --tokens 64 --label vllm --out results/rollout_engines.json \
        method.rollout_engine=vllm
With vllm, `sample` includes the per-step weight sync, and the record carries the last step's
train/rollout_logprob_gap and the engine's own record (start, sync and sampling seconds).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _config import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--label", default="run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "grpo_profile.json"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from grpo_vs_trl import our_side, time_ours

    with tempfile.TemporaryDirectory() as tmp:
        ours = our_side(args, Path(tmp), *args.overrides)
        module = ours["module"]
        phases: dict[str, list[float]] = {"sample": [], "reference_log_probs": []}
        for name in phases:
            # `draw` is what the step calls to sample (with either engine; `sample` is its ids alone).
            attribute = "draw" if name == "sample" else name
            original = getattr(module, attribute)

            def timed(*a, _original=original, _name=name, **k):
                t0 = time.perf_counter()
                out = _original(*a, **k)
                phases[_name].append(time.perf_counter() - t0)
                return out

            setattr(module, attribute, timed)
        steps = time_ours(ours, args.steps + 1)
        logged = {k: float(v) for k, v in ours["trainer"].callback_metrics.items() if k == "train/rollout_logprob_gap"}
        engine = module.engine.record() if module.engine is not None else None
    warmup = {"step": steps[0], **{k: v[0] for k, v in phases.items()}}
    median = {"step": statistics.median(steps[1:]), **{k: statistics.median(v[1:]) for k, v in phases.items()}}
    median["rest (rewards, policy pass, backward, update)"] = median["step"] - median["sample"] - median["reference_log_probs"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    record = {"label": args.label, "commit": commit, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "work": f"{args.prompts} x {args.generations} x {args.tokens}",
              "overrides": args.overrides, "warmup_step_s": warmup, "median_s": median,
              "decode_tokens_per_s": args.prompts * args.generations * args.tokens / median["sample"],
              "last_step": logged, "rollout_engine": engine}
    print(json.dumps(record, indent=1))
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(records + [record], indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Data faults at scale: damaged rows in an R1-V-schema dataset, under data.on_bad_row=error and =skip.

    python bench/data_faults.py [--train 2000] [--test 200] [--fraction 0.02] [--out bench/results/data_faults.json]

Writes the synthetic counting splits out as R1-V's files (a train JSONL of image/problem/solution with PNG
files beside it, a test JSONL of image_path/question/ground_truth), damages a seeded random `--fraction`
of the rows of each in seven ways (image file missing, not an image, a truncated JPEG, a 1x300 sliver,
broken JSON, a missing field, an empty text field), then runs the real entry point twice on the tiny
model (SFT, 2 steps, scored on that test file):

- default (`data.on_bad_row=error`): must exit 2 before any training, naming the first damaged line;
- `data.on_bad_row=skip`: must finish, with exactly the damaged lines listed in bad_rows.jsonl, the
  counts in results.json, and the evaluation over exactly the undamaged test rows.

It also times loading and checking both splits in-process (every image decoded once).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _config import ROOT, compose

FAULTS = ("missing image", "not an image", "truncated jpeg", "sliver image", "broken json", "missing field",
          "empty text")


def truncated_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((64, 64), 80).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def write_split(rows: list[dict], role: str, folder: Path, fraction: float, rng: random.Random) -> tuple[Path, dict[int, str]]:
    """The split as a JSONL in R1-V's schema with a `fraction` of its lines damaged; returns the file and
    {line number: fault}."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    damaged = sorted(rng.sample(range(len(rows)), max(1, round(fraction * len(rows)))))
    faults = {index: FAULTS[k % len(FAULTS)] for k, index in enumerate(damaged)}
    image_key, text_key = ("image", "problem") if role == "train" else ("image_path", "question")
    lines, injected = [], {}
    for index, row in enumerate(rows):
        name = f"{role}_{index}.png"
        row["image"].save(images / name)
        record = ({"image": f"images/{name}", "problem": row["problem"], "solution": row["solution"]} if role == "train"
                  else {"image_path": f"images/{name}", "question": row["question"], "ground_truth": row["ground_truth"]})
        fault = faults.get(index)
        if fault == "missing image":
            record[image_key] = f"images/gone_{index}.png"
        elif fault == "not an image":
            (images / name).write_bytes(b"<html>404 not found</html>")
        elif fault == "truncated jpeg":
            (images / name).write_bytes(truncated_jpeg())
        elif fault == "sliver image":
            Image.new("RGB", (1, 300)).save(images / name)
        elif fault == "missing field":
            del record["solution" if role == "train" else "ground_truth"]
        elif fault == "empty text":
            record[text_key] = "   "
        line = json.dumps(record, ensure_ascii=False)
        if fault == "broken json":
            line = line[: len(line) // 2]
        lines.append(line)
        if fault:
            injected[index + 1] = fault
    path = folder / f"{role}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, injected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--fraction", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_faults.json"))
    args = parser.parse_args()

    from othink_mr1.data.records import BadRows
    from othink_mr1.data.tasks import load_split
    from othink_mr1.results import read as read_results

    base = compose()
    work = Path(tempfile.mkdtemp(prefix="data_faults_"))
    rng = random.Random(args.seed)
    source = {role: load_split(base.tasks.counting, role, base.paths.cache_dir) for role in ("train", "test")}
    train_rows = [source["train"][i] for i in range(min(args.train, len(source["train"])))]
    test_rows = [source["test"][i] for i in range(min(args.test, len(source["test"])))]
    train, train_bad = write_split(train_rows, "train", work / "data", args.fraction, rng)
    test, test_bad = write_split(test_rows, "test", work / "data", args.fraction, rng)
    print(f"[faults] {len(train_bad)} of {len(train_rows)} train lines and {len(test_bad)} of {len(test_rows)} "
          f"test lines damaged, under {work / 'data'}", flush=True)

    overrides = ["model=tiny", "method=sft", "method.max_steps=2", "method.batch_size=4", "task=clevr_count",
                 f"task.train_source={train}", "task.train_size=null", f"task.test_jsonl={test}",
                 f"task.image_root={work / 'data'}", "eval.tasks=[clevr_count]", "eval.row_zero=false",
                 "model.max_new_tokens_cap=8", "trainer.enable_progress_bar=false", "save_model=false",
                 "data.max_bad_fraction=0.05", "eval.curve_points=null"]

    # Loading and checking both splits, in-process (what a run spends before building its model).
    task = compose(*overrides).task
    bad_rows = BadRows("skip", 0.05)
    t0 = time.perf_counter()
    loaded = {role: len(load_split(task, role, base.paths.cache_dir, bad_rows)) for role in ("train", "test")}
    load_seconds = time.perf_counter() - t0

    env = dict(os.environ, OTHINK_OUTPUT_DIR=str(work / "outputs"))
    runs = {}
    for mode in ("error", "skip"):
        command = [sys.executable, str(ROOT / "run.py"), *overrides, f"data.on_bad_row={mode}", f"tag={mode}"]
        t0 = time.perf_counter()
        process = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
        seconds = time.perf_counter() - t0
        run_dir = work / "outputs" / "runs" / f"clevr_count_sft_tiny_seed42_{mode}"
        runs[mode] = {"exit_code": process.returncode, "seconds": round(seconds, 1), "run_dir": run_dir,
                      "stderr_last_line": (process.stderr.strip().splitlines() or [""])[-1]}
        print(f"[faults] on_bad_row={mode}: exit {process.returncode} in {seconds:.1f} s", flush=True)

    error, skip = runs["error"], runs["skip"]
    first_line = min(train_bad)
    error_ok = (error["exit_code"] == 2 and f"{train}, line {first_line}:" in error["stderr_last_line"]
                and not (error["run_dir"] / "checkpoints").exists() and not (error["run_dir"] / "results.json").exists())
    listed = [json.loads(line) for line in (skip["run_dir"] / "bad_rows.jsonl").read_text().splitlines()]
    results = read_results(skip["run_dir"])
    listed_train = {r["line"] for r in listed if r["split"] == "clevr_count train"}
    listed_test = {r["line"] for r in listed if r["split"] == "clevr_count test"}
    skip_ok = (skip["exit_code"] == 0 and listed_train == set(train_bad) and listed_test == set(test_bad)
               and results.data["skipped_rows"] == {"clevr_count train": len(train_bad), "clevr_count test": len(test_bad)}
               and results.after["clevr_count"]["n"] == len(test_rows) - len(test_bad)
               and loaded == {"train": len(train_rows) - len(train_bad), "test": len(test_rows) - len(test_bad)})
    by_fault = {fault: sum(f == fault for f in (*train_bad.values(), *test_bad.values())) for fault in FAULTS}
    out = {
        "command": "python bench/data_faults.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
        "train_rows": len(train_rows), "test_rows": len(test_rows),
        "injected": {"train": len(train_bad), "test": len(test_bad), "by_fault": by_fault},
        "load_and_check_seconds": round(load_seconds, 2),
        "error_mode": {"exit_code": error["exit_code"], "seconds": error["seconds"], "message": error["stderr_last_line"],
                       "stopped_before_training_naming_the_first_line": error_ok},
        "skip_mode": {"exit_code": skip["exit_code"], "seconds": skip["seconds"],
                      "listed": {"train": len(listed_train), "test": len(listed_test)},
                      "skipped_rows": results.data["skipped_rows"], "eval_n": results.after["clevr_count"]["n"],
                      "train_steps": results.train["steps"], "listed_exactly_the_injected_rows": skip_ok},
        # Undamaged rows the skip run did not train or score on (must be 0).
        "good_rows_lost": (len(train_rows) - len(train_bad) - loaded["train"]) + (len(test_rows) - len(test_bad) - loaded["test"]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(out, indent=2, ensure_ascii=False))
    if not (error_ok and skip_ok):
        raise SystemExit("data faults: a check failed (see above)")


if __name__ == "__main__":
    main()

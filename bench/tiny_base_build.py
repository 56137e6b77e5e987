"""Time a from-scratch build of tiny_base (tokenizer, random init, pretraining, acceptance check).

    python bench/tiny_base_build.py

Builds into a fresh temporary cache and folder (the project cache and the shipped models/tiny_base are
left alone), prints the build report (accuracy per synthetic test split, seconds, the model's sha256 and
the machine) and writes bench/results/tiny_base_build.json. The same machine and thread count give the
shipped model's sha256 only on the kernel path that built it (models/tiny_base/manifest.json).
Target: at most 5 minutes on 2 CPU cores, accuracy within [15%, 60%] on both tasks.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from _config import ROOT, compose  # noqa: E402  (bench/ is the script's directory)


def main() -> None:
    from othink_mr1.jobs.tiny_base import build_folder
    from othink_mr1.utils.quiet import quiet_third_party

    quiet_third_party()
    model_cfg = compose("model=tiny_base").model
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        manifest = build_folder(model_cfg, Path(cache) / "tiny_base", cache)
        wall = time.perf_counter() - start
        report = json.loads((Path(cache) / "tiny_base" / "build_report.json").read_text())
    result = {"wall_seconds_including_data_and_tokenizer": round(wall, 1), **{k: report[k] for k in
              ("accuracy", "format_rate", "window", "in_window", "train_seconds", "total_seconds")},
              "model_sha256": manifest["files"]["model.safetensors"]["sha256"], "built_at": manifest["built_at"]}
    out = ROOT / "bench" / "results" / "tiny_base_build.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""What a float result depends on besides the code: the CPU, the kernel path torch takes on it, the BLAS and
the thread count. Recorded in a run's meta.json and in the tiny_base manifest, so a figure can be traced to
the machine that computed it."""

from __future__ import annotations

import os
import platform
import re
from typing import Any

# Environment variables that cap or pin the kernel path (ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2
# ONEDNN_MAX_CPU_ISA=AVX2 makes an AVX-512 machine take the AVX2 kernels) or the thread count (a SLURM job's
# CPUs set it where nothing else does: runner.set_threads).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "SLURM_CPUS_PER_TASK")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU name, core count, torch's CPU capability (its kernel path), BLAS, oneDNN, threads and KERNEL_ENV."""
    import torch

    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    onednn = re.search(r"(?:oneDNN|MKL-DNN) v([\d.]+)", config)
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "platform": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": blas.group(1) if blas else None,
        "onednn": onednn.group(1) if onednn else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "env": {name: os.environ[name] for name in KERNEL_ENV if name in os.environ},
    }

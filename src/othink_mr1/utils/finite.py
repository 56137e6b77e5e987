"""Which tensors hold a NaN or an inf: the one check behind the load-time weight check (models/factory.py,
a resumed checkpoint in runner.py) and the training guard's stopping message (methods/evaluation_module.py),
so that both name the same thing the same way.

One reduction per tensor, no copy: `torch.aminmax` propagates NaN and shows an inf as its min or max, so a
tensor is finite exactly when both are; it reads each element once and allocates two scalars (where
`isfinite(t).all()` would write a bool tensor of the tensor's size). The flags are gathered into one list
at the end, so tensors on a GPU cost one device sync, not one per tensor.
"""

from __future__ import annotations

from typing import Iterable

import torch

# How many offending tensors a message names.
SHOWN = 3


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor | None]]) -> tuple[list[str], int]:
    """(names of the floating-point tensors holding a NaN or inf, in order; how many were checked).
    None, empty, integer and meta tensors are not checked (nothing to read, or nothing that can be NaN)."""
    names: list[str] = []
    flags: list[torch.Tensor] = []
    for name, tensor in named:
        if tensor is None or not tensor.is_floating_point() or tensor.numel() == 0 or tensor.is_meta:
            continue
        low, high = torch.aminmax(tensor.detach())
        flags.append(torch.isfinite(low) & torch.isfinite(high))
        names.append(name)
    if not flags:
        return [], 0
    # One stack (and one sync) per device: a sharded model's tensors live on several.
    by_device: dict[torch.device, list[int]] = {}
    for i, flag in enumerate(flags):
        by_device.setdefault(flag.device, []).append(i)
    finite = [True] * len(flags)
    for indices in by_device.values():
        for i, ok in zip(indices, torch.stack([flags[i] for i in indices]).tolist()):
            finite[i] = ok
    return [name for name, ok in zip(names, finite) if not ok], len(names)


def describe(bad: list[str], total: int, what: str) -> str:
    """'non-finite <what> (NaN or inf) in 3 of 40 tensors (first: a, b, c)'."""
    first = ", ".join(bad[:SHOWN]) + (", ..." if len(bad) > SHOWN else "")
    return f"non-finite {what} (NaN or inf) in {len(bad)} of {total} tensors (first: {first})"

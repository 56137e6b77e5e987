"""Float equality between two paths that compute the same value in another order: the shared-prompt forward
against the plain one, 4x1 accumulation against 1x4, another thread count or kernel path.

Why not torch.allclose with a fixed atol: the paths add the same terms in another order, and in float a sum's
rounding error scales with its length and with the size of the terms, not with the result. One gradient entry
that is a near-zero difference of large terms carries the error of its large neighbours; an elementwise
tolerance fails on it at one thread count and passes at another (measured: the plain and shared-prompt
gradients of v_proj differ by 1.5e-6 of the tensor's largest entry at 1, 2 and 3 threads alike; in float64
by 5e-8, float32's own rounding in transformers' rotary and vision position code).

The bound: a sum of n terms computed in any order is within gamma_n ~ n*u of the exact one, relative to the
sum of the terms' magnitudes (u the dtype's unit roundoff: 2^-24 for float32). So two orders of the same sum
differ by at most about 2*n*u times its scale; we take the tensor's largest magnitude as that scale
(normwise) and n as the longest reduction behind each entry. For a weight gradient that is every token of the
batch (rows x sequence length, ~1,000 here: a tolerance of ~1e-4 relative, 50x the measured error), for
log-probs the vocabulary (the log-softmax). A real defect (a wrong position, an image paired with the wrong
prompt, a missing token) changes entries by a sizeable fraction of the tensor's scale and fails it.
"""

from __future__ import annotations

import torch

UNIT_ROUNDOFF = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8,
                 torch.float16: 2.0 ** -11}
# Thread counts the equality tests run at (tests/conftest.py's `threads` fixture): 1, the default on 2 cores,
# and one more than the cores, where the work splits unevenly.
THREAD_COUNTS = (1, 2, 3)


def reduction_tolerance(dtype: torch.dtype, terms: int) -> float:
    """Relative (normwise) tolerance for two orders of a sum of `terms` terms in `dtype`: 2 * terms * u."""
    return 2 * terms * UNIT_ROUNDOFF[dtype]


def assert_close_normwise(actual: torch.Tensor, expected: torch.Tensor, terms: int, name: str = "") -> None:
    """max |actual - expected| <= reduction_tolerance(dtype, terms) * max |expected|."""
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    scale = float(expected.abs().max())
    error = float((actual - expected).abs().max())
    tolerance = reduction_tolerance(expected.dtype, terms) * scale
    assert error <= tolerance, (f"{name}: max |difference| {error:.3e} exceeds {tolerance:.3e} (2 x {terms} summed "
                                f"terms x u={UNIT_ROUNDOFF[expected.dtype]:.2e} x max |expected| {scale:.3e})")

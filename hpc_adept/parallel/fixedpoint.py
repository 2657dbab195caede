"""Exact, partition-independent sums of floating-point arrays: fixed point in int64.

Floating-point addition is not associative, so a sum split over ranks (each rank adds its
terms, the all-reduce adds the partial sums in its own order) changes its last bits with
the rank count, and an optimiser such as Adam turns those bits into full-size steps.
Integer addition is associative: every term is rounded onto the grid ``2**-k`` (a
deterministic function of the term alone), the integers are added in any order, on any
number of ranks, and give the same bits. ``k`` comes from a bound on the terms that every
rank knows (the same on any rank count), chosen so that the sum of ``n_terms`` terms stays
below ``2**62``: the grid is then ``2**-62 n_terms bound``, far finer than float32's
rounding of the largest term.

MPI-free (pure torch): the sums over ranks are the communicators' job.
"""

from __future__ import annotations

import math

import torch

#: The sum of all terms stays below 2**FIXED_POINT_BITS (int64 holds 2**63 - 1).
FIXED_POINT_BITS = 62


def fixed_point_exponent(bound: float, n_terms: int) -> int | None:
    """The grid exponent ``k`` for ``n_terms`` terms of magnitude at most ``bound``.

    Returns None when ``bound`` is not finite (the caller skips the sum: a non-finite
    loss is the guard's business), 0 when it is 0 (all terms are zero).
    """
    if not math.isfinite(bound):
        return None
    if bound <= 0.0:
        return 0
    _, exponent = math.frexp(bound)  # bound < 2**exponent
    # n_terms < 2**bit_length: n_terms * bound * 2**k < 2**FIXED_POINT_BITS
    k = FIXED_POINT_BITS - exponent - max(1, n_terms).bit_length()
    return max(-1000, min(1000, k))  # 2.0**k stays a normal double


def term_limit(n_terms: int) -> int:
    """Largest magnitude of one rounded term (a clamp: only a bound that was wrong reaches
    it, and the clamp is as deterministic as the rounding)."""
    return 2 ** (FIXED_POINT_BITS - max(1, n_terms).bit_length())


def quantize(values: torch.Tensor, k: int, n_terms: int) -> torch.Tensor:
    """``round(values * 2**k)`` as int64 (same shape and device), clamped to
    :func:`term_limit`; ``values`` float32 or float64 (exact scaling in float64)."""
    limit = float(term_limit(n_terms))
    scaled = values.to(torch.float64).mul(2.0 ** k).round_().clamp_(-limit, limit)
    return scaled.to(torch.int64)


def dequantize(total: torch.Tensor, k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The value of an int64 sum of :func:`quantize` terms, ``total * 2**-k`` in ``dtype``
    (through float64: the rounding is deterministic)."""
    return total.to(torch.float64).mul_(2.0 ** -k).to(dtype)

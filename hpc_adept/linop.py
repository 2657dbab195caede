"""Linear operators on torch tensors: adjoint, product and the dot-product test.

A :class:`LinearOperator` maps tensors of ``domain_shape`` to tensors of ``range_shape``
(:meth:`~LinearOperator.forward`) and back with its exact transpose
(:meth:`~LinearOperator.adjoint`). ``op.H`` is the adjoint as an operator, ``A @ B`` the
product (B first), ``op(x)`` the forward. The laminography projector
(:class:`hpc_adept.lamino.LaminoOperator`, and its distributed version) is one;
:class:`FunctionOperator` wraps a pair of functions. :func:`dottest` checks that an
operator's adjoint is the transpose of its forward. No MPI here: a distributed operator
returns full arrays on every rank, so the test runs unchanged on each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class AdjointTestError(AssertionError):
    """:func:`dottest` found ``<A x, y>`` and ``<x, A^H y>`` further apart than allowed."""


class LinearOperator:
    """A linear map between tensors of fixed shapes, with its exact adjoint.

    Subclasses set ``domain_shape`` and ``range_shape`` and implement :meth:`forward` and
    :meth:`adjoint`.

    Attributes
    ----------
    domain_shape : tuple of int
        Shape of the inputs of :meth:`forward` (the outputs of :meth:`adjoint`).
    range_shape : tuple of int
        Shape of the outputs of :meth:`forward` (the inputs of :meth:`adjoint`).
    """

    domain_shape: tuple[int, ...]
    range_shape: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: a ``domain_shape`` tensor to a ``range_shape`` one."""
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^H y``: a ``range_shape`` tensor to a ``domain_shape`` one."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    @property
    def H(self) -> LinearOperator:  # noqa: N802 - the usual name of the adjoint
        """The adjoint as an operator (forward and adjoint swapped)."""
        return _Adjoint(self)

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        """``(self @ other)(x) = self(other(x))``."""
        if not isinstance(other, LinearOperator):
            return NotImplemented
        if tuple(other.range_shape) != tuple(self.domain_shape):
            raise ValueError(f"cannot compose: the right operator's range {other.range_shape} "
                             f"is not the left one's domain {self.domain_shape}")
        return _Product(self, other)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(domain_shape={tuple(self.domain_shape)}, "
                f"range_shape={tuple(self.range_shape)})")


class _Adjoint(LinearOperator):
    """``A^H`` of an operator ``A``."""

    def __init__(self, op: LinearOperator) -> None:
        self.op = op
        self.domain_shape = tuple(op.range_shape)
        self.range_shape = tuple(op.domain_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.forward(y)

    @property
    def H(self) -> LinearOperator:  # noqa: N802
        return self.op


class _Product(LinearOperator):
    """``outer @ inner``: inner first."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        self.outer, self.inner = outer, inner
        self.domain_shape = tuple(inner.domain_shape)
        self.range_shape = tuple(outer.range_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer.forward(self.inner.forward(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.adjoint(self.outer.adjoint(y))


class FunctionOperator(LinearOperator):
    """A linear operator from a function and its adjoint.

    Parameters
    ----------
    forward, adjoint : callable
        ``x -> A x`` and ``y -> A^H y`` on tensors.
    domain_shape, range_shape : sequence of int
        Shapes of ``x`` and ``y``.
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor],
                 adjoint: Callable[[torch.Tensor], torch.Tensor],
                 domain_shape: Sequence[int], range_shape: Sequence[int]) -> None:
        self._forward, self._adjoint = forward, adjoint
        self.domain_shape = tuple(int(n) for n in domain_shape)
        self.range_shape = tuple(int(n) for n in range_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._adjoint(y)


def dottest(
    op: LinearOperator,
    *,
    rtol: float,
    atol: float = 0.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    seed: int = 0,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Dot-product test of an operator's adjoint: ``<A x, y> = <x, A^H y>``.

    ``x`` and ``y`` are standard normal (a CPU generator seeded with ``seed``: ``x``
    drawn first, then ``y``), so every process draws the same ones; the inner products
    are summed in float64 over the full arrays.

    Parameters
    ----------
    op : LinearOperator
    rtol, atol : float
        Pass when ``|<A x, y> - <x, A^H y>| <= rtol * |<A x, y>| + atol``.
    dtype : torch.dtype
        Of the random vectors (the operator runs in it).
    device : torch.device or str, optional
        Where the vectors go (default CPU).
    seed : int
    x : torch.Tensor, ``op.domain_shape``, optional
        Use this instead of a random ``x`` (moved to ``device`` when one is given).
    y : torch.Tensor, ``op.range_shape``, optional
        Use this instead of a random ``y``.

    Returns
    -------
    (lhs, rhs) : (float, float)
        ``<A x, y>`` and ``<x, A^H y>``.

    Raises
    ------
    AdjointTestError (an AssertionError)
        The two differ by more than the tolerance (the message gives both).
    """
    gen = torch.Generator().manual_seed(seed)
    if x is None:
        x = torch.randn(tuple(op.domain_shape), generator=gen, dtype=dtype)
    if y is None:
        y = torch.randn(tuple(op.range_shape), generator=gen, dtype=dtype)
    if device is not None:
        x, y = x.to(device), y.to(device)
    with torch.no_grad():
        lhs = float((op.forward(x).double() * y.double()).sum())
        rhs = float((x.double() * op.adjoint(y).double()).sum())
    if not abs(lhs - rhs) <= rtol * abs(lhs) + atol:
        relative = abs(lhs - rhs) / abs(lhs) if lhs else float("inf")
        raise AdjointTestError(f"dot-product test of {op!r} failed: <A x, y> = {lhs!r}, "
                               f"<x, A^H y> = {rhs!r}, relative difference {relative:.3e} "
                               f"(rtol {rtol:g}, atol {atol:g})")
    return lhs, rhs

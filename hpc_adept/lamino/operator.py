"""The laminography operator: forward projection, exact adjoint and FBP of one geometry.

:class:`LaminoOperator` holds a :class:`~hpc_adept.lamino.geometry.Geometry` and the
kernel that computes it (:data:`KERNELS`): ``torch`` (:mod:`hpc_adept.lamino.projector`,
any device) or ``triton`` (:mod:`hpc_adept.lamino.fused`; compiled on GPUs, Triton's
interpreter on CPU tensors, for tests only). Both compute the same matrix ``A`` (to
rounding) and its exact transpose. The operator is differentiable: the backward of
:meth:`~LaminoOperator.forward` is :meth:`~LaminoOperator.adjoint` and vice versa (both
linear, so nothing is saved for the backward). It is a
:class:`~hpc_adept.linop.LinearOperator` (``op.H``, ``A @ B``, :func:`~hpc_adept.linop.dottest`),
and :meth:`~LaminoOperator.angles_subset` / :meth:`~LaminoOperator.with_geometry` give the
same operator on other angles (a rank's shard) or another geometry (a binning level, a
slab). The distributed version,
:class:`hpc_adept.parallel.distops.DistributedLaminoOperator`, is a subclass.

:func:`project`, :func:`backproject` and :func:`fbp` are one-call forms.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from hpc_adept.lamino import fused
from hpc_adept.lamino.filters import angular_weights, as_float_tensor, ramp_filter
from hpc_adept.lamino.geometry import Geometry, GeometryError
from hpc_adept.lamino.projector import (
    backproject_torch,
    check_chunk_bytes,
    chunk_budget,
    project_torch,
)
from hpc_adept.linop import LinearOperator

#: Implementations of the same operator: ``torch`` (``grid_sample`` and a sparse product,
#: any device) and ``triton`` (one fused kernel per direction; compiled on GPUs, run by
#: Triton's interpreter on CPU tensors, which is for tests only).
KERNELS: tuple[str, ...] = ("torch", "triton")

_FLOAT_DTYPES = (torch.float32, torch.float64)


def check_kernel(kernel: str) -> str:
    """Return ``kernel`` if it names a usable implementation.

    Raises
    ------
    ValueError
        Not one of :data:`KERNELS`, or ``triton`` without Triton
        (``pip install 'hpc_adept[triton]'``; CUDA builds of torch ship it).
    """
    if kernel not in KERNELS:
        raise ValueError(f"projector kernel must be one of {', '.join(KERNELS)}, "
                         f"got {kernel!r}")
    if kernel == "triton" and not fused.available():
        raise ValueError("the triton projector kernel needs Triton: "
                         "pip install 'hpc_adept[triton]'")
    return kernel


def _check_input(x: object, shape: tuple[int, ...], name: str, what: str) -> None:
    """Raise TypeError / GeometryError unless ``x`` is a float tensor of ``shape``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if tuple(x.shape) != shape:
        raise GeometryError(
            f"{name} has shape {tuple(x.shape)} but the geometry's {what} is {shape}"
        )


class _Apply(torch.autograd.Function):
    """``op``'s forward (or adjoint); the backward is the other direction (differentiable)."""

    @staticmethod
    def forward(ctx, x, op, adjoint):  # noqa: D102
        ctx.op, ctx.adjoint = op, adjoint
        return op._apply_adjoint(x) if adjoint else op._apply_forward(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return _Apply.apply(grad.contiguous(), ctx.op, not ctx.adjoint), None, None


class LaminoOperator(LinearOperator):
    """Laminographic projection ``A`` of one geometry, its exact adjoint and FBP.

    Parameters
    ----------
    geometry : Geometry
        Angles, tilt, shapes and slab offset.
    kernel : {'torch', 'triton'}
        Implementation (:data:`KERNELS`), used for tensors on every device (``triton``
        on CPU tensors runs in Triton's interpreter: tests only).
    max_chunk_bytes : int, optional
        ``torch`` kernel: byte budget of the per-chunk intermediate, the rotated slices of
        one slice group for a chunk of angles, [n_slices, ny_s, n_chunk * nu'] in the
        input's dtype (ny_s, nu' <= in-plane diagonal of the volume); default
        ``MAX_CHUNK_BYTES[device type]``. At least one angle is processed at a time. The
        ``triton`` kernel has no intermediate and ignores it.

    Attributes
    ----------
    domain_shape : (nz, ny, nx)
        ``geometry.volume_shape``.
    range_shape : (n_angles, nv, nu)
        ``geometry.projection_shape``.

    Raises
    ------
    TypeError
        ``geometry`` is not a :class:`Geometry`.
    ValueError
        Unknown or unusable kernel, or a bad ``max_chunk_bytes``.
    """

    def __init__(self, geometry: Geometry, kernel: str = "torch",
                 max_chunk_bytes: int | None = None) -> None:
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a Geometry, got {type(geometry).__name__}")
        self.kernel = check_kernel(kernel)
        self.max_chunk_bytes = check_chunk_bytes(max_chunk_bytes)
        self._set_geometry(geometry)

    def _set_geometry(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.domain_shape = geometry.volume_shape
        self.range_shape = geometry.projection_shape

    def __repr__(self) -> str:
        g = self.geometry
        return (f"{type(self).__name__}({g.n_angles} angles, tilt {g.tilt_deg:g} deg, "
                f"volume {list(g.volume_shape)}, detector {list(g.detector_shape)}, "
                f"kernel {self.kernel!r})")

    # ------------------------------------------------------------------ the operator

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """Forward projection (line integrals), differentiable.

        Parameters
        ----------
        volume : torch.Tensor, float32 or float64, shape [nz, ny, nx]
            Per-voxel values (e.g. phase per voxel), on any device.

        Returns
        -------
        torch.Tensor, same dtype and device, shape [n_angles, nv, nu]
            Line integrals along the ray direction in voxel units (DESIGN.md section 3).

        Raises
        ------
        TypeError
            ``volume`` is not a float32/float64 tensor.
        GeometryError (a ValueError)
            ``volume.shape`` differs from ``geometry.volume_shape``.
        """
        _check_input(volume, self.geometry.volume_shape, "volume", "volume_shape")
        return _Apply.apply(volume, self, False)

    def adjoint(self, projections: torch.Tensor) -> torch.Tensor:
        """Exact adjoint of :meth:`forward` (unfiltered backprojection), differentiable.

        Parameters
        ----------
        projections : torch.Tensor, float32 or float64, shape [n_angles, nv, nu]

        Returns
        -------
        torch.Tensor, same dtype and device, shape [nz, ny, nx]
            ``A^T g``, summed over all angles (no angular weighting).

        Raises
        ------
        TypeError, GeometryError
            As :meth:`forward`, for ``geometry.projection_shape``.
        """
        _check_input(projections, self.geometry.projection_shape, "projections",
                     "projection shape")
        return _Apply.apply(projections, self, True)

    def fbp(self, projections: torch.Tensor | np.ndarray,
            weights: np.ndarray | Sequence[float] | None = None) -> torch.Tensor | np.ndarray:
        """Filtered backprojection: ramp filter, angular weights, :meth:`adjoint`.

        Parameters
        ----------
        projections : torch.Tensor or np.ndarray, float32/float64, [n_angles, nv, nu]
            Line integrals (voxel units). The angles should cover 360 degrees (180
            suffice for tilt 90).
        weights : array-like, float, [n_angles], optional
            Quadrature weights of the angles, radians; default
            :func:`~hpc_adept.lamino.filters.angular_weights` of the geometry. An operator
            on a block of a scan's angles passes the block's share of the whole scan's
            weights.

        Returns
        -------
        Same type, dtype and device as ``projections``, shape [nz, ny, nx]
            Reconstructed per-voxel values; the missing cone (laminography) leaves low
            axial frequencies unrecovered.

        Raises
        ------
        GeometryError (a ValueError)
            ``projections.shape`` differs from ``geometry.projection_shape``.
        """
        p, was_numpy = as_float_tensor(projections, "projections")
        if tuple(p.shape) != self.geometry.projection_shape:
            raise GeometryError(f"projections has shape {tuple(p.shape)} but the geometry's "
                                f"projection shape is {self.geometry.projection_shape}")
        w = angular_weights(self.geometry) if weights is None \
            else np.asarray(weights, dtype=np.float64)
        if w.shape != (self.geometry.n_angles,):
            raise GeometryError(f"fbp: {w.shape[0] if w.ndim else 0} weights for "
                                f"{self.geometry.n_angles} angles")
        volume = self._fbp(p, w)
        return volume.detach().numpy() if was_numpy else volume

    def _fbp(self, projections: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
        """Filter, weight and backproject checked input (subclasses share the work)."""
        w = torch.as_tensor(weights, dtype=projections.dtype, device=projections.device)
        filtered = ramp_filter(projections, self.geometry.tilt_deg) * w[:, None, None]
        return self.adjoint(filtered)

    # ------------------------------------------------------------------ other geometries

    def with_geometry(self, geometry: Geometry) -> LaminoOperator:
        """The same operator (type, kernel, chunk budget, communicator) on ``geometry``."""
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a Geometry, got {type(geometry).__name__}")
        other = copy.copy(self)
        other._set_geometry(geometry)
        return other

    def angles_subset(self, index: int | slice | Sequence[int] | np.ndarray) -> LaminoOperator:
        """The operator restricted to some angles (:meth:`Geometry.subset`).

        Parameters
        ----------
        index : int, slice, int sequence or boolean mask
            Selects angles as ``np.asarray(angles_deg)[index]`` does (an int keeps one).
        """
        return self.with_geometry(self.geometry.subset(index))

    # ------------------------------------------------------------------ the kernels

    def _apply_forward(self, volume: torch.Tensor) -> torch.Tensor:
        """The kernel's forward on checked input, no autograd (subclasses share the work)."""
        if self.kernel == "triton":
            return fused.project_fused(volume, self.geometry)
        return project_torch(volume, self.geometry,
                             chunk_budget(self.max_chunk_bytes, volume.device))

    def _apply_adjoint(self, projections: torch.Tensor) -> torch.Tensor:
        """The kernel's adjoint on checked input, no autograd."""
        if self.kernel == "triton":
            return fused.backproject_fused(projections, self.geometry)
        return backproject_torch(projections, self.geometry,
                                 chunk_budget(self.max_chunk_bytes, projections.device))


def project(volume: torch.Tensor, geometry: Geometry, *, kernel: str = "torch",
            max_chunk_bytes: int | None = None) -> torch.Tensor:
    """``LaminoOperator(geometry, kernel, max_chunk_bytes).forward(volume)``, differentiable.

    volume [nz, ny, nx] -> projections [n_angles, nv, nu], float32/float64, any device.
    """
    return LaminoOperator(geometry, kernel, max_chunk_bytes).forward(volume)


def backproject(projections: torch.Tensor, geometry: Geometry, *, kernel: str = "torch",
                max_chunk_bytes: int | None = None) -> torch.Tensor:
    """``LaminoOperator(geometry, kernel, max_chunk_bytes).adjoint(projections)``.

    projections [n_angles, nv, nu] -> volume [nz, ny, nx]: the exact adjoint of
    :func:`project`, differentiable.
    """
    return LaminoOperator(geometry, kernel, max_chunk_bytes).adjoint(projections)


def fbp(projections: torch.Tensor | np.ndarray, geometry: Geometry, *, kernel: str = "torch",
        max_chunk_bytes: int | None = None) -> torch.Tensor | np.ndarray:
    """``LaminoOperator(geometry, kernel, max_chunk_bytes).fbp(projections)``.

    projections (tensor or array) [n_angles, nv, nu] -> volume [nz, ny, nx] of the same
    type, dtype and device.
    """
    return LaminoOperator(geometry, kernel, max_chunk_bytes).fbp(projections)

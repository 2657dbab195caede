"""LSQ-ML ptychography (Odstrcil, Menzel, Guizar-Sicairos, Opt. Express 26, 3108, 2018).

One implementation for NumPy and CuPy: every array lives on the array module ``xp`` of the
counts (or the one passed in); the only backend-specific piece is the FFT
(:mod:`hpc_adept.ptycho.fft`). The kernel knows nothing about MPI or files.

Conventions (DESIGN section 4):

- a frame is ``|fftshift(fft2(P * O_patch, norm="ortho"))|^2`` with DC at ``N // 2``;
- the probe's center is at ``(N - 1) / 2`` of its N x N frame;
- frame pixel ``i`` of a probe at offset ``p`` (object pixels, (row, col), from the projection
  center ``(m - 1) / 2``) sees projection pixel ``(m - 1) / 2 + p + i - (N - 1) / 2``;
- the object is ``O = exp(i * projection)``; it is reconstructed on a grid that holds the
  projection field (``field_shape``) plus the margin the scan needs, and
  :attr:`LsqmlResult.field_offset` says where the field sits in it.

Sub-pixel positions are handled like the simulator does: the patch is the integer window of
the object and the probe is shifted by the fractional part (Fourier shift theorem).

One iteration (epoch) visits every position once, in batches:

1. forward model ``Psi_jk = F(S_jk O_j)`` with ``S_jk`` mode ``k`` shifted for position ``j``;
2. far-field correction ``chi`` (Gaussian amplitude or Poisson model, bad pixels untouched);
3. per-position update directions ``dO_j = sum_k chi_jk conj(S_jk)``,
   ``dP_jk = chi_jk conj(O_j)`` (shifted back to the probe frame);
4. batch directions: object ``sum_j dO_j / sqrt(D^2 + (delta max D)^2)`` with the whole
   scan's illumination ``D`` (computed once per epoch); probe the mean of ``dP_j``;
5. per-position optimal steps from the real 2x2 normal equations, combined over the batch
   (trimmed mean for the object, mean for the probe) and scaled by ``step_scale``;
6. optional position correction, then the object is updated after each batch ("sparse") or
   once per epoch ("compact").

The epoch ends with the probe constraints (orthogonal modes, far-field centroid pinned),
the object/probe scale normalisation, optional momentum, and the Fourier error of the epoch.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from hpc_adept.backend import get_array_module, to_numpy
from hpc_adept.config import PtychoConfig
from hpc_adept.ptycho.fft import Fft2, make_fft2
from hpc_adept.ptycho.probe import (
    add_probe_modes,
    mean_total_counts,
    orthogonalize_modes,
    probe_from_data,
    scale_probe,
)

__all__ = [
    "DTYPES",
    "LsqmlResult",
    "ObjectGrid",
    "make_object_grid",
    "BatchPlan",
    "plan_batches",
    "optimal_steps",
    "poisson_step",
    "reconstruct",
    "solve_step_system",
]

NoiseModel = Literal["poisson", "gaussian"]
BatchMode = Literal["sparse", "compact"]
Callback = Callable[[int, float], "bool | None"]


DTYPES = ("complex64", "complex128")
"""Complex working precisions of :func:`reconstruct`."""


@dataclass(frozen=True)
class ObjectGrid:
    """Where the projection field and the probe windows sit in the object array.

    Attributes
    ----------
    shape : (H, W)
        Object array shape: the field plus the margin the scan needs.
    field_shape : (nv, nu)
        Projection field.
    field_offset : (row, col)
        Object index of field pixel (0, 0): the field is
        ``object[r:r + nv, c:c + nu]``.
    frame_size : int
        N.
    """

    shape: tuple[int, int]
    field_shape: tuple[int, int]
    field_offset: tuple[int, int]
    frame_size: int

    def window_origin(self, positions_px: Any) -> Any:
        """Object coordinate of frame pixel (0, 0), float ``[n, 2]``, of each position.

        Frame pixel ``i`` sees field pixel ``(m - 1) / 2 + p + i - (N - 1) / 2``, i.e.
        object pixel ``offset + (m - N) / 2 + p + i``.
        """
        xp = get_array_module(positions_px)
        base = xp.asarray([self.field_offset[a] + (self.field_shape[a] - self.frame_size) / 2.0
                           for a in (0, 1)], dtype=xp.float64)
        return positions_px + base

    def position_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Smallest and largest (row, col) position whose window stays inside, pixels."""
        lo = np.array([-(self.field_offset[a] + (self.field_shape[a] - self.frame_size) / 2.0)
                       for a in (0, 1)])
        hi = lo + np.array(self.shape) - self.frame_size - 1.0
        return lo, hi


def make_object_grid(positions_px: np.ndarray, field_shape: tuple[int, int], frame_size: int,
                     padding_px: int) -> ObjectGrid:
    """Smallest object grid holding the field and every probe window plus ``padding_px``.

    Parameters
    ----------
    positions_px : ndarray, float, [n, 2]
        (row, col) offsets from the field center, pixels.
    field_shape : (nv, nu)
    frame_size : int
        N.
    padding_px : int
        Margin beyond the outermost window (room for position refinement).
    """
    positions_px = np.asarray(positions_px, dtype=np.float64)
    shape, offset = [], []
    for axis in (0, 1):
        m = field_shape[axis]
        starts = (m - frame_size) / 2.0 + positions_px[:, axis]
        lo = min(math.floor(starts.min()) - padding_px, 0)
        hi = max(math.floor(starts.max()) + frame_size + 1 + padding_px, m)
        offset.append(-lo)
        shape.append(hi - lo)
    return ObjectGrid(tuple(shape), tuple(field_shape), tuple(offset), frame_size)


@dataclass(frozen=True, eq=False)
class LsqmlResult:
    """Outcome of :func:`reconstruct`.

    Attributes
    ----------
    object : array, complex, [H, W]
        Reconstructed transmission on the object grid (array module of the run).
    probe : array, complex, [modes, N, N]
        Probe modes, photons (``sum |P|^2`` = the mean frame's counts).
    positions_px : ndarray, float64, [n, 2]
        Refined (row, col) positions from the field center, pixels (the input ones when
        position correction is off).
    fourier_error : ndarray, float64, [iterations]
        Per epoch, ``sum (sqrt(I) - sqrt(d))^2 / sum d`` over good pixels, measured during
        the epoch's sweep (before each batch's update).
    iterations : int
        Epochs done (fewer than asked when the callback stopped the run).
    grid : ObjectGrid
        Where the field sits in :attr:`object`.
    illumination : array, float, [H, W]
        ``sum_j sum_k |P_k(r - r_j)|^2`` of the final probe and positions (photons).
    """

    object: Any
    probe: Any
    positions_px: np.ndarray
    fourier_error: np.ndarray
    iterations: int
    grid: ObjectGrid
    illumination: Any

    @property
    def field_shape(self) -> tuple[int, int]:
        """(nv, nu) of the projection field."""
        return self.grid.field_shape

    @property
    def field_offset(self) -> tuple[int, int]:
        """Object index of field pixel (0, 0)."""
        return self.grid.field_offset

    def field_slices(self) -> tuple[slice, slice]:
        """``object[result.field_slices()]`` is the projection field ``[nv, nu]``."""
        (r, c), (nv, nu) = self.grid.field_offset, self.grid.field_shape
        return slice(r, r + nv), slice(c, c + nu)

    def to_host(self) -> LsqmlResult:
        """The same result with NumPy arrays."""
        return replace(self, object=to_numpy(self.object), probe=to_numpy(self.probe),
                       illumination=to_numpy(self.illumination))


# --------------------------------------------------------------------------------------------
# Batches


@dataclass(frozen=True)
class BatchPlan:
    """How positions are grouped into batches; :meth:`epoch` draws one epoch's batches.

    'compact': the groups are k-means clusters of ``~batch_size`` neighbouring positions,
    and each group is a batch. 'sparse': the positions are clustered into ``batch_size``
    compact groups, and batch ``b`` takes every ``n_batches``-th position of the groups laid
    end to end, so each batch draws about one position from every region of the field and
    its windows rarely overlap.

    Attributes
    ----------
    mode : {'sparse', 'compact'}
    n_batches : int
    labels : ndarray, int64, [n]
        Group of each position.
    n_groups : int
    """

    mode: BatchMode
    n_batches: int
    labels: np.ndarray
    n_groups: int

    def epoch(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Position indices of each batch, int64; together a permutation of ``range(n)``."""
        members = [np.flatnonzero(self.labels == g) for g in rng.permutation(self.n_groups)]
        if self.mode == "compact":
            return [m for m in members if len(m)]
        order = np.concatenate([rng.permutation(m) for m in members])
        slots = np.arange(len(order)) % self.n_batches
        return [order[slots == b] for b in rng.permutation(self.n_batches)]


def plan_batches(positions_px: np.ndarray, batch_size: int, mode: BatchMode,
                 rng: np.random.Generator) -> BatchPlan:
    """Cluster the positions once for :class:`BatchPlan` (see there).

    Parameters
    ----------
    positions_px : ndarray, float, [n, 2]
    batch_size : int
        Positions per batch.
    mode : {'sparse', 'compact'}
    rng : numpy.random.Generator
        Seeds the k-means.
    """
    n = len(positions_px)
    n_batches = max(1, math.ceil(n / batch_size))
    groups = n_batches if mode == "compact" else min(batch_size, n)
    labels = _kmeans_labels(positions_px, groups, rng)
    return BatchPlan(mode, n_batches, labels, int(labels.max()) + 1)


def _kmeans_labels(points: np.ndarray, k: int, rng: np.random.Generator,
                   iterations: int = 10) -> np.ndarray:
    """Cluster labels ``[n]`` of a few Lloyd iterations from random distinct seeds."""
    points = np.asarray(points, dtype=np.float64)
    k = min(k, len(points))
    centers = points[rng.choice(len(points), size=k, replace=False)]
    labels = np.zeros(len(points), dtype=np.int64)
    for _ in range(iterations):
        dist = ((points[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
        labels = dist.argmin(1)
        for c in range(k):
            members = points[labels == c]
            if len(members):
                centers[c] = members.mean(0)
    return labels


# --------------------------------------------------------------------------------------------
# Patches: gather and scatter-add of N x N windows of the object


def patch_indices(starts: Any, shape: tuple[int, int], width: int) -> Any:
    """Flat indices ``[B, h, w]`` (int64) of ``shape`` windows whose pixel (0, 0) is ``starts``.

    ``width`` is the row length of the flattened image.
    """
    xp = get_array_module(starts)
    rows = xp.arange(shape[0], dtype=xp.int64)[None, :, None]
    cols = xp.arange(shape[1], dtype=xp.int64)[None, None, :]
    return (starts[:, 0, None, None] + rows) * width + (starts[:, 1, None, None] + cols)


def gather_patches(image: Any, starts: Any, frame_size: int) -> Any:
    """The N x N windows of ``image`` ([H, W]) at ``starts`` ([B, 2], int), ``[B, N, N]``.

    On the host, indexing a strided all-windows view copies whole window rows and needs no
    index array (measured 2x faster than flat-index gathering for 32 windows of 256^2). On
    the GPU, explicit indices (:func:`gather_patches_indexed`): the view's flat offsets reach
    ``(H - N + 1) (W - N + 1) N^2`` (1.8e10 for a 773^2 object and 512^2 frames), beyond the
    32-bit index arithmetic of CuPy builds that have the as_strided indexing bug
    (cupy/cupy#8130, fixed by #8150; setup.cfg's gpu extra asks for CuPy >= 13.2 as well).
    """
    xp = get_array_module(image)
    if xp is not np:
        return gather_patches_indexed(image, starts, frame_size)
    height, width = image.shape
    step_r, step_c = image.strides
    windows = xp.lib.stride_tricks.as_strided(
        image, shape=(height - frame_size + 1, width - frame_size + 1, frame_size, frame_size),
        strides=(step_r, step_c, step_r, step_c))
    return windows[starts[:, 0], starts[:, 1]]


def gather_patches_indexed(image: Any, starts: Any, frame_size: int) -> Any:
    """:func:`gather_patches` through explicit int64 indices into the flattened image (the
    GPU's way; every index is below ``H W``); any ``xp``."""
    indices = patch_indices(starts.astype("int64"), (frame_size, frame_size), image.shape[1])
    return image.reshape(-1)[indices]


def scatter_add(image: Any, starts: Any, values: Any) -> None:
    """Add the windows ``values`` ([B, N, N]) into ``image`` ([H, W]) at ``starts`` (in place).

    Overlapping windows add up, in batch order. On the host a loop of slice additions is
    3-5x faster than ``numpy.add.at`` on flat indices for 32 windows of 32^2-512^2 (no index
    array; measured with freed memory kept, profiling/RESULTS.md "LSQ-ML on the host") and
    gives the same sums bit for bit. On the GPU it is one atomic-add kernel instead of B
    launches. ``image`` must be C-contiguous.
    """
    xp = get_array_module(image)
    if xp is np:
        height, width = values.shape[-2:]
        windows = values.reshape(-1, height, width)  # [B, 1, N, N] from one probe mode
        for (row, col), window in zip(np.asarray(starts).tolist(), windows, strict=True):
            image[row:row + height, col:col + width] += window
        return
    scatter_add_indexed(image, starts, values)


def scatter_add_indexed(image: Any, starts: Any, values: Any) -> None:
    """:func:`scatter_add` as one ``add.at`` over flat indices (the GPU's way; any ``xp``)."""
    xp = get_array_module(image)
    # NumPy's add.at fast path needs the values' dtype to *be* the target's dtype object.
    values = xp.ascontiguousarray(values.astype(image.dtype, copy=False)).view(image.dtype)
    if xp.iscomplexobj(image):
        # CuPy's add.at takes real dtypes only: scatter the (re, im) pairs of the real views.
        real = image.real.dtype
        image, values = image.view(real), values.view(real)
        starts = starts * xp.asarray([1, 2], dtype=starts.dtype)
    indices = patch_indices(starts, values.shape[-2:], image.shape[1])
    xp.add.at(image.reshape(-1), indices.reshape(-1), values.reshape(-1))


def shift_ramps(fractions: Any, frame_size: int, dtype: str) -> Any:
    """Fourier-shift factors ``[B, 1, N, N]`` moving a probe by ``fractions`` ([B, 2]) pixels.

    ``ifft2(fft2(P) * ramp)[i] = P[i - fraction]`` (circular), the simulator's convention.
    """
    xp = get_array_module(fractions)
    k = xp.fft.fftfreq(frame_size)
    phase_r = xp.exp(-2j * xp.pi * fractions[:, 0, None] * k[None, :]).astype(dtype)
    phase_c = xp.exp(-2j * xp.pi * fractions[:, 1, None] * k[None, :]).astype(dtype)
    return (phase_r[:, :, None] * phase_c[:, None, :])[:, None]


# --------------------------------------------------------------------------------------------
# Far-field corrections


def gaussian_correction(far: Any, model_amplitude: Any, measured_amplitude: Any, valid: Any,
                        eps: float) -> Any:
    """``Psi' - Psi`` of the amplitude (Gaussian) model, ``[B, K, N, N]``, in place.

    ``Psi' = sqrt(d) / (sqrt(I) + eps) Psi`` on good pixels, ``Psi`` on bad ones.

    Parameters
    ----------
    far : array, complex, [B, K, N, N]
        Far fields ``Psi``; overwritten with the result (one 16 MB pass saved per batch of
        32 frames of 256^2, and no allocation).
    model_amplitude : array, float, [B, N, N]
        ``sqrt(I)``; overwritten.
    measured_amplitude : array, float, [B, N, N]
        ``sqrt(d)``.
    valid : array, float, [N, N]
        1 on good pixels, 0 on bad ones.
    eps : float
        Amplitude floor, sqrt(photons).
    """
    xp = get_array_module(far)
    factor = model_amplitude
    factor += eps
    xp.divide(measured_amplitude, factor, out=factor)
    factor -= 1.0
    factor *= valid
    far *= factor[:, None]
    return far


def poisson_correction(far: Any, intensity: Any, counts: Any, valid: Any,
                       eps: float) -> Any:
    """``Psi' - Psi`` of the Poisson model, ``[B, K, N, N]``, in place of ``far``.

    ``Psi' = (1 - alpha_j xi) Psi`` with ``xi = 1 - d / I`` (the Poisson likelihood's
    gradient direction) and the per-position step ``alpha_j`` of :func:`poisson_step`.
    """
    xi = (1.0 - counts / (intensity + eps)) * valid
    alpha = poisson_step(xi, intensity, counts)
    xi *= -alpha[:, None, None]
    far *= xi[:, None]
    return far


def poisson_step(xi: Any, intensity: Any, counts: Any, newton_steps: int = 2) -> Any:
    """Per-position step ``alpha`` ([B]) minimising the Poisson likelihood along ``xi``.

    Along ``I(alpha) = (1 - alpha xi)^2 I`` the likelihood ``sum I - d log I`` is stationary
    where ``g(alpha) = sum xi [d / (1 - alpha xi) - (1 - alpha xi) I] = 0``; ``g`` increases
    with ``alpha``, and a couple of Newton steps from ``alpha = 0`` converge (clipped to
    [0, 1], which keeps ``1 - alpha xi >= 0`` because ``xi <= 1``).

    Parameters
    ----------
    xi, intensity, counts : array, float, [B, N, N]
        ``xi = 0`` on bad pixels removes them from the sums.
    """
    xp = get_array_module(xi)
    alpha = xp.zeros(xi.shape[0], dtype=xp.float64)
    for _ in range(newton_steps):
        scale = xp.maximum(1.0 - alpha[:, None, None] * xi, 1e-6)
        grad = xp.sum(xi * (counts / scale - scale * intensity), axis=(1, 2), dtype=xp.float64)
        curv = xp.sum(xi * xi * (counts / scale**2 + intensity), axis=(1, 2),
                      dtype=xp.float64)
        alpha = xp.clip(alpha - grad / xp.maximum(curv, 1e-30), 0.0, 1.0)
    return alpha.astype(xi.dtype)


# --------------------------------------------------------------------------------------------
# Step sizes


def _inner_real(a: Any, b: Any) -> Any:
    """``Re sum conj(a) b`` over all axes but the first, float64 ``[B]``.

    ``Re(conj(a) b) = a.re b.re + a.im b.im`` is the dot product of the real views, done as
    one batched matrix product (BLAS / cuBLAS) without complex temporaries.
    """
    xp = get_array_module(a)
    real = a.real.dtype
    flat_a = xp.ascontiguousarray(a).view(real).reshape(a.shape[0], 1, -1)
    flat_b = xp.ascontiguousarray(b).view(real).reshape(b.shape[0], -1, 1)
    return xp.matmul(flat_a, flat_b).reshape(-1).astype(xp.float64)


def _power(values: Any, axis: int) -> Any:
    """``sum |values|^2`` along ``axis`` (real dtype); one pass for a single mode."""
    xp = get_array_module(values)
    power = xp.abs(values)
    power *= power
    if power.shape[axis] == 1:
        return xp.squeeze(power, axis=axis)
    return xp.sum(power, axis=axis)


def solve_step_system(uu: Any, vv: Any, uv: Any, u_chi: Any, v_chi: Any,
                      regularization: float) -> tuple[Any, Any]:
    """Per-position steps from the real 2x2 normal equations.

    ``[[uu + l_O, uv], [uv, vv + l_P]] [a_O, a_P] = [u_chi, v_chi]`` with
    ``l_O = regularization * mean(uu)`` and ``l_P = regularization * mean(vv)`` (the mean over
    the batch, so the damping follows each direction's own scale).

    Parameters
    ----------
    uu, vv : array, float64, [B]
        ``sum |u_j|^2``, ``sum |v_j|^2``.
    uv, u_chi, v_chi : array, float64, [B]
        ``Re sum conj(u_j) v_j``, ``Re sum conj(u_j) chi_j``, ``Re sum conj(v_j) chi_j`` (real
        parts: the paper's Eq. 22 prints the complex off-diagonal, a known typo).
    regularization : float
        Relative Tikhonov term (0 solves the plain system).

    Returns
    -------
    (a_O, a_P) : arrays, float64, [B]
        Unclipped, unscaled steps. A position whose system is singular (no signal) gets 0.
    """
    xp = get_array_module(uu)
    a11 = uu + regularization * xp.mean(uu)
    a22 = vv + regularization * xp.mean(vv)
    det = a11 * a22 - uv * uv
    tiny = 1e-12 * (a11 * a22 + uv * uv) + 1e-300
    ok = xp.abs(det) > tiny
    safe = xp.where(ok, det, 1.0)
    a_obj = xp.where(ok, (a22 * u_chi - uv * v_chi) / safe, 0.0)
    a_probe = xp.where(ok, (a11 * v_chi - uv * u_chi) / safe, 0.0)
    # Without a probe direction (v = 0) the system is 1x1.
    alone = vv <= 0
    a_obj = xp.where(alone, u_chi / xp.where(a11 > 0, a11, 1.0), a_obj)
    return a_obj, xp.where(alone, 0.0, a_probe)


def optimal_steps(u: Any, v: Any | None, chi: Any,
                  regularization: float) -> tuple[Any, Any]:
    """Per-position object and probe steps for exit-wave changes ``u``, ``v`` and target ``chi``.

    Minimises ``sum |chi_j - a_O u_j - a_P v_j|^2`` (plus the Tikhonov term) for each
    position ``j`` over real ``a_O, a_P``.

    Parameters
    ----------
    u, chi : array, complex, [B, ...]
        Exit-wave change of a unit object step, and the wanted change.
    v : array, complex, [B, ...] or None
        Exit-wave change of a unit probe step (None: the probe is not updated).
    regularization : float
        See :func:`solve_step_system`.

    Returns
    -------
    (a_O, a_P) : arrays, float64, [B]
    """
    xp = get_array_module(u)
    uu, u_chi = _inner_real(u, u), _inner_real(u, chi)
    if v is None:
        zeros = xp.zeros_like(uu)
        return solve_step_system(uu, zeros, zeros, u_chi, zeros, regularization)
    return solve_step_system(uu, _inner_real(v, v), _inner_real(u, v), u_chi,
                             _inner_real(v, chi), regularization)


def trimmed_mean(values: Any, fraction: float) -> Any:
    """Mean of ``values`` ([B]) without the ``fraction`` smallest and largest entries."""
    xp = get_array_module(values)
    cut = int(fraction * values.shape[0])
    if cut == 0:
        return xp.mean(values)
    return xp.mean(xp.sort(values)[cut:values.shape[0] - cut])


# --------------------------------------------------------------------------------------------
# The engine


@dataclass
class _Data:
    """Measured data on the device, DC moved to index 0 (so no fftshift per batch).

    Only ``sqrt(d)`` is kept: the amplitude model and the Fourier error use it directly, and
    the Poisson model squares a batch back, which is cheaper than a square root per batch.
    """

    amplitude: Any       # float, [n, N, N], sqrt(counts), 0 on bad pixels
    valid: Any           # float, [N, N], 1 = good pixel
    eps_intensity: float  # floor of I in divisions, photons
    eps_amplitude: float  # floor of sqrt(I), sqrt(photons)
    mean_total: float    # mean counts per frame, extrapolated over bad pixels
    total_counts: float  # sum of the counts on good pixels


@dataclass
class _State:
    """Mutable reconstruction state (all arrays on the device)."""

    obj: Any             # complex [H, W]
    probe: Any           # complex [K, N, N]
    positions: Any       # float64 [n, 2], offsets from the field center
    start_positions: Any  # float64 [n, 2], the input positions
    probe_centroid: Any = None  # float64 [2], far-field centroid the probe is pinned to
    probe_center: Any = None    # float64 [2], real-space centroid the probe is pinned to
    obj_update: Any = None  # complex [H, W], compact mode's accumulated update
    velocity: Any = None    # complex [H, W], momentum
    errors: list = field(default_factory=list)


def _prepare_data(counts: Any, mask: Any | None, xp: types.ModuleType,
                  real_dtype: str) -> _Data:
    counts = xp.asarray(counts, dtype=real_dtype)
    if counts.ndim != 3 or counts.shape[1] != counts.shape[2]:
        raise ValueError(f"counts must be [n, N, N], got {counts.shape}")
    n = counts.shape[-1]
    valid = xp.ones((n, n), dtype=real_dtype)
    if mask is not None:
        mask = xp.asarray(mask).astype(bool)
        if mask.shape != (n, n):
            raise ValueError(f"mask must be [{n}, {n}], got {mask.shape}")
        valid = (~mask).astype(real_dtype)
    mean_total = mean_total_counts(counts, valid)
    counts = xp.maximum(counts, 0) * valid
    total = max(float(xp.sum(counts, dtype=xp.float64)), 1e-30)
    amplitude = xp.fft.ifftshift(xp.sqrt(counts), axes=(-2, -1))
    eps = 1e-6 * max(mean_total / (n * n), 1e-12)
    return _Data(xp.ascontiguousarray(amplitude), xp.fft.ifftshift(valid), eps, math.sqrt(eps),
                 mean_total, total)


def _initial_probe(probe: Any | None, data: _Data, probe_modes: int, dtype: str,
                   xp: types.ModuleType) -> Any:
    """Probe modes ``[K, N, N]`` scaled to the data's mean total counts."""
    if probe is None:
        counts = xp.fft.fftshift(data.amplitude, axes=(-2, -1)) ** 2
        valid = xp.fft.fftshift(data.valid)
        start = probe_from_data(counts, valid, dtype=dtype)
    else:
        start = xp.asarray(probe).astype(dtype)
        if start.shape[-1] != data.amplitude.shape[-1] or start.shape[-2] != start.shape[-1]:
            raise ValueError(f"probe {start.shape} does not match frames "
                             f"{data.amplitude.shape[1:]}")
    modes = add_probe_modes(start, probe_modes)
    return scale_probe(modes, data.mean_total)


class _Engine:
    """One LSQ-ML run: the state plus the per-batch and per-epoch steps."""

    def __init__(self, data: _Data, state: _State, grid: ObjectGrid, options: PtychoConfig,
                 fft: Fft2, xp: types.ModuleType, dtype: str) -> None:
        self.data, self.state, self.grid, self.opt, self.fft, self.xp = (
            data, state, grid, options, fft, xp)
        self.dtype, self.real_dtype = dtype, _real_dtype(dtype)
        self.n_frame = data.amplitude.shape[-1]
        lo, hi = grid.position_bounds()
        self.pos_lo, self.pos_hi = xp.asarray(lo), xp.asarray(hi)
        self.error_sum = xp.zeros((), dtype=xp.float64)

    # -- geometry ---------------------------------------------------------------------------

    def windows(self, batch: Any, ramps: bool = True) -> tuple[Any, Any]:
        """Window starts ``[B, 2]`` (int64) and probe shift ramps ``[B, 1, N, N]`` (or None)."""
        xp = self.xp
        origin = self.grid.window_origin(self.state.positions[batch])
        starts = xp.floor(origin)
        if not ramps:
            return starts.astype(xp.int64), None
        fractions = (origin - starts).astype(self.real_dtype)
        return starts.astype(xp.int64), shift_ramps(fractions, self.n_frame, self.dtype)

    # -- one batch ---------------------------------------------------------------------------

    def run_batch(self, batch: Any, update_probe: bool, correct_positions: bool) -> None:
        """Steps 1-6 of the module docstring for the positions ``batch`` ([B], int)."""
        xp, st, opt = self.xp, self.state, self.opt
        starts, ramps = self.windows(batch)
        patches = gather_patches(st.obj, starts, self.n_frame)        # [B, N, N]
        probe_hat = self.fft.forward(st.probe)                        # [K, N, N]
        shifted = self.fft.inverse(probe_hat[None] * ramps, overwrite=True)  # [B, K, N, N]
        chi = self.exit_wave_correction(batch, shifted * patches[:, None])
        obj_dir = self.object_direction(starts, chi, shifted)
        u = gather_patches(obj_dir, starts, self.n_frame)[:, None] * shifted
        v, probe_dir = (self.probe_direction(chi, patches, ramps) if update_probe
                        else (None, None))
        a_obj, a_probe = optimal_steps(u, v, chi, opt.step_regularization)
        a_obj = opt.step_scale * xp.maximum(a_obj, 0.0)
        if correct_positions:
            self.correct_positions(batch, starts, shifted, chi)
        self.apply_object(obj_dir, trimmed_mean(a_obj, opt.trim_fraction))
        if update_probe:
            a_probe = opt.step_scale * xp.maximum(a_probe, 0.0)
            st.probe = st.probe + (xp.mean(a_probe) * probe_dir).astype(st.probe.dtype)

    def exit_wave_correction(self, batch: Any, exit_waves: Any) -> Any:
        """``chi = F^-1(Psi' - Psi)`` ``[B, K, N, N]``; accumulates the Fourier error."""
        xp, d = self.xp, self.data
        far = self.fft.forward(exit_waves, overwrite=True)
        intensity = _power(far, axis=1)                               # [B, N, N]
        measured = d.amplitude[batch]
        model = xp.sqrt(intensity)
        residual = model - measured
        residual *= d.valid
        flat = residual.reshape(-1)
        self.error_sum += xp.dot(flat, flat).astype(xp.float64)
        if self.opt.noise_model == "gaussian":
            delta = gaussian_correction(far, model, measured, d.valid, d.eps_amplitude)
        else:
            delta = poisson_correction(far, intensity, measured * measured, d.valid,
                                       d.eps_intensity)
        return self.fft.inverse(delta, overwrite=True)

    def object_direction(self, starts: Any, chi: Any, shifted: Any) -> Any:
        """Object direction ``[H, W]``: ``sum_j dO_j`` times the epoch's preconditioner."""
        xp = self.xp
        per_position = chi * xp.conj(shifted)
        if per_position.shape[1] > 1:
            per_position = xp.sum(per_position, axis=1)               # [B, N, N]
        numerator = xp.zeros(self.grid.shape, dtype=self.dtype)
        scatter_add(numerator, starts, per_position)
        numerator *= self.preconditioner
        return numerator

    def probe_direction(self, chi: Any, patches: Any, ramps: Any) -> tuple[Any, Any]:
        """Exit-wave change ``v`` ``[B, K, N, N]`` of the mean probe direction, and the direction.

        Returns ``(v, dP)`` with the mean direction ``dP`` ``[K, N, N]``.

        Each ``dP_j = chi_j conj(O_j)`` lives in position j's shifted frame; shifting back is
        a multiplication by ``conj(ramp_j)`` in Fourier space, so the mean direction is
        formed there and shifted forward again per position for ``v``.
        """
        xp = self.xp
        per_position = self.fft.forward(chi * xp.conj(patches)[:, None], overwrite=True)
        per_position *= xp.conj(ramps)
        mean_hat = xp.mean(per_position, axis=0)                      # [K, N, N]
        v = self.fft.inverse(mean_hat[None] * ramps, overwrite=True)
        v *= patches[:, None]
        return v, self.fft.inverse(mean_hat)

    def correct_positions(self, batch: Any, starts: Any, shifted: Any, chi: Any) -> None:
        """Move each position along the object gradient that best explains ``chi``.

        Moving the probe by ``+dp`` gives, up to a translation that leaves the intensity
        unchanged, the exit wave ``S O(r + dp) ~ S O + dp S dO/dr``; ``dp`` is the least-squares
        coefficient of ``chi`` on that gradient wave, clipped to the step limit.
        """
        xp, st, opt = self.xp, self.state, self.opt
        grad_r, grad_c = _central_gradient(st.obj)
        steps = []
        for gradient in (grad_r, grad_c):
            wave = gather_patches(gradient, starts, self.n_frame)[:, None] * shifted
            num, den = _inner_real(wave, chi), _inner_real(wave, wave)
            steps.append(num / xp.maximum(den, 1e-30))
        limit = opt.position_step_limit_px
        step = xp.clip(xp.stack(steps, axis=1), -limit, limit)
        st.positions[batch] = xp.clip(st.positions[batch] + step, self.pos_lo, self.pos_hi)

    def apply_object(self, direction: Any, step: Any) -> None:
        st = self.state
        update = (step * direction).astype(st.obj.dtype)
        if self.opt.batch_mode == "sparse":
            st.obj += update
        else:
            st.obj_update += update

    # -- one epoch ---------------------------------------------------------------------------

    def run_epoch(self, iteration: int, batches: list[np.ndarray]) -> float:
        xp, st, opt = self.xp, self.state, self.opt
        self.error_sum = xp.zeros((), dtype=xp.float64)
        start_obj = st.obj.copy() if opt.momentum else None
        if opt.batch_mode == "compact":
            st.obj_update = xp.zeros_like(st.obj)
        update_probe = iteration >= opt.probe_update_start
        self.illum = self.illumination()
        self.preconditioner = self.inverse_illumination(self.illum)
        correct = opt.position_correction and iteration >= opt.position_correction_start
        for batch in batches:
            self.run_batch(xp.asarray(batch), update_probe, correct)
        if opt.batch_mode == "compact":
            st.obj += st.obj_update
        error = float(self.error_sum) / self.data.total_counts
        if opt.momentum:
            self.apply_momentum(st.obj - start_obj, error)
        if correct:
            # A common shift of all positions only translates the object: pin it.
            drift = xp.mean(st.positions - st.start_positions, axis=0)
            st.positions -= drift
        self.end_of_epoch_constraints(update_probe)
        return error

    def apply_momentum(self, epoch_update: Any, error: float) -> None:
        """Heavy-ball extrapolation of the epoch's object update while the error falls."""
        st, opt = self.state, self.opt
        improving = len(st.errors) > 0 and error < st.errors[-1]
        if st.velocity is None or not improving:
            st.velocity = epoch_update if improving else self.xp.zeros_like(epoch_update)
            return
        st.velocity = opt.momentum_coefficient * st.velocity + epoch_update
        st.obj += opt.momentum_coefficient * st.velocity

    def end_of_epoch_constraints(self, probe_updated: bool) -> None:
        """Remove the ambiguities the data cannot fix once the probe moves.

        Orthogonal probe modes; the far-field centroid of the probe pinned to the initial
        one (a ramp ``exp(i k r)`` on the probe and ``exp(-i k r)`` on the object give the
        same data, and left alone the pair drifts into a linear phase ramp on the object);
        the probe's real-space centroid pinned too (probe and object translated together give
        the same data, and the object would leave the field's registration: measured
        0.75 px on the test scans with a probe from the data); object modulus ~1 where well
        lit (the scale ambiguity).
        """
        xp, st = self.xp, self.state
        if not probe_updated:
            return
        st.probe = orthogonalize_modes(st.probe)
        self.pin_probe_centroid()
        self.pin_probe_center()
        lit = self.illum > 0.5 * xp.max(self.illum)
        scale = float(xp.mean(xp.abs(st.obj[lit])))
        if scale > 0:
            st.obj /= scale
            st.probe *= scale

    def pin_probe_centroid(self) -> None:
        """Move the probe's far-field centroid back to the reference, ramping the object."""
        xp, st = self.xp, self.state
        drift = _far_field_centroid(self.fft.forward(st.probe)) - st.probe_centroid
        n = self.n_frame
        k_frame = [xp.exp(-2j * xp.pi * drift[a] * xp.arange(n) / n).astype(self.dtype)
                   for a in (0, 1)]
        st.probe *= k_frame[0][:, None] * k_frame[1][None, :]
        k_obj = [xp.exp(2j * xp.pi * drift[a] * xp.arange(self.grid.shape[a]) / n)
                 .astype(self.dtype) for a in (0, 1)]
        st.obj *= k_obj[0][:, None] * k_obj[1][None, :]

    def inverse_illumination(self, illum: Any) -> Any:
        """Preconditioner ``1 / sqrt(D^2 + (delta max D)^2)`` ``[H, W]`` of this epoch.

        ``D`` is the whole scan's illumination, not the batch's: with the batch's, every sparse
        batch would make a full Newton step, and the object would keep the noise of the last
        pattern seen at each pixel instead of averaging the overlapping ones (measured:
        relative error 0.0080 vs 0.0064 on the 32^2-frame test scan).
        """
        xp = self.xp
        floor = (self.opt.preconditioner_delta * xp.max(illum)) ** 2
        return (1.0 / xp.sqrt(illum * illum + floor)).astype(self.real_dtype)

    def pin_probe_center(self) -> None:
        """Translate probe and object together so the probe's centroid stays put."""
        st = self.state
        shift = st.probe_center - _intensity_centroid(st.probe)
        if float(self.xp.max(self.xp.abs(shift))) < 1e-3:
            return  # below any effect on the data; spares two object-sized FFTs
        st.probe = _fourier_shift(st.probe, shift, self.fft)
        st.obj = _fourier_shift(st.obj, shift, self.fft)

    def illumination(self) -> Any:
        """``sum_j sum_k |P_k(r - r_j)|^2`` ``[H, W]`` (integer windows, unshifted probe).

        Every window adds the same weight, so a loop of slice additions over the positions
        (host copy of the starts, once per epoch) beats scattering n copies of it.
        """
        xp, st, n = self.xp, self.state, self.n_frame
        starts, _ = self.windows(xp.arange(st.positions.shape[0]), ramps=False)
        weight = _power(st.probe, axis=0).astype(self.real_dtype)
        illum = xp.zeros(self.grid.shape, dtype=self.real_dtype)
        for row, col in to_numpy(starts).tolist():
            illum[row:row + n, col:col + n] += weight
        return illum


def _far_field_centroid(spectrum: Any) -> Any:
    """Circular centroid ``[2]`` (row, col), frequency-index units, of ``sum_k |spectrum_k|^2``.

    The frequency axis is periodic, so the centroid is the phase of the first Fourier
    coefficient of the marginal power (well defined wherever the power is not uniform).
    """
    xp = get_array_module(spectrum)
    power = xp.sum(spectrum.real**2 + spectrum.imag**2, axis=0, dtype=xp.float64)
    n = power.shape[-1]
    phasor = xp.exp(2j * xp.pi * xp.arange(n) / n)
    rows = xp.angle(xp.sum(power.sum(1) * phasor)) * n / (2 * xp.pi)
    cols = xp.angle(xp.sum(power.sum(0) * phasor)) * n / (2 * xp.pi)
    return xp.stack([rows, cols])


def _intensity_centroid(modes: Any) -> Any:
    """Centroid ``[2]`` (row, col) of ``sum_k |modes_k|^2`` ([K, N, N]), pixels from index 0."""
    xp = get_array_module(modes)
    power = xp.sum(_power(modes, axis=0), axis=None, dtype=xp.float64)
    weight = _power(modes, axis=0).astype(xp.float64)
    rows = xp.sum(weight.sum(1) * xp.arange(weight.shape[0])) / power
    cols = xp.sum(weight.sum(0) * xp.arange(weight.shape[1])) / power
    return xp.stack([rows, cols])


def _fourier_shift(image: Any, shift: Any, fft: Fft2) -> Any:
    """``image`` ([..., H, W]) circularly shifted by ``shift`` ([2], pixels): out[i] = in[i - s]."""
    xp = get_array_module(image)
    ramps = [xp.exp(-2j * xp.pi * shift[a] * xp.fft.fftfreq(image.shape[a - 2]))
             .astype(image.dtype) for a in (0, 1)]
    spectrum = fft.forward(image)
    spectrum *= ramps[0][:, None] * ramps[1][None, :]
    return fft.inverse(spectrum, overwrite=True).astype(image.dtype)


def _central_gradient(image: Any) -> tuple[Any, Any]:
    """Central differences along rows and columns ``[H, W]`` (zero on the border)."""
    xp = get_array_module(image)
    grad_r, grad_c = xp.zeros_like(image), xp.zeros_like(image)
    grad_r[1:-1] = 0.5 * (image[2:] - image[:-2])
    grad_c[:, 1:-1] = 0.5 * (image[:, 2:] - image[:, :-2])
    return grad_r, grad_c


def _real_dtype(dtype: str) -> str:
    """Real dtype matching the complex ``dtype``."""
    return "float32" if dtype == "complex64" else "float64"


def reconstruct(counts: Any, positions_px: Any, field_shape: tuple[int, int],
                options: PtychoConfig | None = None, *, probe: Any | None = None,
                mask: Any | None = None, xp: types.ModuleType | None = None,
                callback: Callback | None = None, seed: int = 0, dtype: str = "complex64",
                fft_workers: int | None = None) -> LsqmlResult:
    """Reconstruct the object and probe of one ptychography scan with LSQ-ML.

    Parameters
    ----------
    counts : array, float32, [n, N, N]
        Photon counts, DC at ``N // 2`` (NumPy or CuPy).
    positions_px : array, float, [n, 2]
        (row, col) probe offsets from the field center ``(m - 1) / 2``, object pixels.
    field_shape : (nv, nu)
        Projection grid the positions refer to.
    options : PtychoConfig, optional
        The ``ptycho`` config section (checked here); default its defaults.
        ``projection_shape`` and ``initial_probe`` are the stage's business.
    probe : array, complex, [N, N] or [K, N, N], optional
        Initial probe (e.g. from the CXI file); rescaled to the data's mean total counts.
        None: :func:`hpc_adept.ptycho.probe.probe_from_data`.
    mask : array, bool, [N, N], optional
        True = bad pixel (DC at ``N // 2``); those pixels never constrain the far field.
    xp : module, optional
        Array module to run on; default: the module of ``counts``.
    callback : callable, optional
        ``callback(iteration, fourier_error)`` after every epoch; a true return value stops.
    seed : int
        Seed of the batch assignment (the stage derives one per scan).
    dtype : {'complex64', 'complex128'}
        Complex working precision.
    fft_workers : int or None
        Threads per FFT with ``options.fft_library == 'scipy'``; None = 1.

    Returns
    -------
    LsqmlResult
        Object ``[H, W]``, probe ``[K, N, N]`` and the rest, arrays on ``xp``.
    """
    options = options or PtychoConfig()
    options.check()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be complex64 or complex128, got {dtype!r}")
    xp = xp or get_array_module(counts)
    data = _prepare_data(counts, mask, xp, _real_dtype(dtype))
    positions = np.array(to_numpy(positions_px), dtype=np.float64)  # a copy: refined in place
    if positions.shape != (data.amplitude.shape[0], 2):
        raise ValueError(f"positions_px must be [{data.amplitude.shape[0]}, 2], "
                         f"got {positions.shape}")
    padding = options.padding_px + (2 if options.position_correction else 0)
    grid = make_object_grid(positions, tuple(field_shape), data.amplitude.shape[-1], padding)
    state = _State(obj=xp.ones(grid.shape, dtype=dtype),
                   probe=_initial_probe(probe, data, options.probe_modes, dtype, xp),
                   positions=xp.array(positions), start_positions=xp.array(positions))
    fft = make_fft2(xp, fft_workers, options.fft_library)
    state.probe_centroid = _far_field_centroid(fft.forward(state.probe))
    state.probe_center = _intensity_centroid(state.probe)
    engine = _Engine(data, state, grid, options, fft, xp, dtype)
    rng = np.random.default_rng(seed)
    plan = plan_batches(positions, options.batch_size, options.batch_mode, rng)
    for iteration in range(options.iterations):
        error = engine.run_epoch(iteration, plan.epoch(rng))
        state.errors.append(error)
        if callback is not None and callback(iteration, error):
            break
    return LsqmlResult(object=state.obj, probe=state.probe,
                       positions_px=np.asarray(to_numpy(state.positions)),
                       fourier_error=np.asarray(state.errors, dtype=np.float64),
                       iterations=len(state.errors), grid=grid,
                       illumination=engine.illumination())

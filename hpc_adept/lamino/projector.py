"""Laminography forward projector and its exact adjoint, differentiable in torch.

Design (see REFERENCE.md, "Laminographic FBP and the missing cone"): rotating about z
maps the geometry of angle theta onto the one of theta = 0, d = Rz(theta) d0,
u = Rz(theta) u0, v = Rz(theta) v0 with d0 = (0, -cos a, sin a), u0 = (1, 0, 0),
v0 = (0, sin a, cos a). So the projection at theta is

    g_theta = P0[f_theta],    f_theta(x, y, z) = f(Rz(theta) (x, y), z),

an in-plane rotation of every z slice (``grid_sample`` with the z slices as channels,
bilinear, a 2-D grid per angle) followed by ONE oblique projection P0 that is the same
for every angle. P0 acts on each x column separately (u0 = x) as a 2-D parallel
projection in the (y, z) plane, a fixed sparse matrix M of shape [nv, nz * ny_s]
(Joseph-style linear interpolation). Angles are processed in chunks laid side by side
along the sampled image width (on CPU also the z slices, in groups), so memory is
O(volume + projections + one chunk), and no 3-D sampling grid is ever built.

The adjoint applies M^T (as an ELLPACK gather through ``embedding_bag``, faster than a
CSR product for a matrix with at most two entries per row) and then the adjoint of
``grid_sample``, i.e. its input gradient, which scatter-adds into the volume. Both
operators are linear, so the autograd wrappers save nothing: the backward of
``project`` is ``backproject`` and vice versa.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hpc_adept.lamino.geometry import Geometry, GeometryError

#: Default byte budget of the per-chunk intermediate (the rotated z slices of one slice
#: group for a chunk of angles), by device type; override per call with
#: ``max_chunk_bytes``. On CPU it stays under glibc's largest dynamic mmap threshold
#: (32 MiB) so that chunk buffers are recycled from the heap instead of being
#: page-faulted in afresh for every chunk (which cost more than the arithmetic); on GPUs
#: larger chunks are faster.
MAX_CHUNK_BYTES: dict[str, int] = {"cpu": 32 * 2**20, "cuda": 1024 * 2**20}
_OTHER_DEVICE_CHUNK_BYTES = 256 * 2**20

#: On CPU, ``grid_sample`` sees the z slices in batch entries of this many channels:
#: its CPU backward runs in parallel over the batch only, and few channels per entry
#: keep the gathered (and scattered) input planes in cache.
CPU_SLICES_PER_BATCH: int = 8

#: On CPU, z slices are processed in groups of this many (rounded to a multiple of
#: CPU_SLICES_PER_BATCH), so that a chunk holds many angles within its byte budget.
CPU_SLICES_PER_GROUP: int = 32

_FLOAT_DTYPES = (torch.float32, torch.float64)

#: Implementations of the same operator: ``torch`` (this module: ``grid_sample`` and a
#: sparse product, any device) and ``triton`` (:mod:`hpc_adept.lamino.fused`: one fused
#: kernel per direction; compiled on GPUs, run by Triton's interpreter on CPU tensors,
#: which is for tests only).
KERNELS: tuple[str, ...] = ("torch", "triton")
_default_kernel: str = "torch"

# grid_sampler_2d_backward(grad_output, input, grid, interpolation, padding, align_corners,
# output_mask) is the input gradient of grid_sample without building a graph; fall back
# to autograd where a torch build lacks it.
_USE_ATEN_GRID_BACKWARD: bool = hasattr(torch.ops.aten, "grid_sampler_2d_backward")


@dataclass(frozen=True)
class _Layout:
    """How the rotated volume is sampled, grouped and laid out in memory.

    In-plane samples: rows y_j = j - y_center (j < n_rows, covering the volume's
    circumscribed circle) and detector columns ``col_start .. col_start + n_cols - 1``
    (the others see only zeros). The z slices, zero-padded to ``nz_pad``, are processed
    in groups of ``group`` slices (the last one may be shorter). Within a group,
    ``grid_sample`` sees them as [n_b, batch, ny, nx] (entries of ``batch`` slices, all
    with the same grid), so its rotated output [n_b, batch, n_rows, W] is the row-major
    matrix [n_slices * n_rows, W] with row ``k * n_rows + j``, and the scatter of the
    adjoint writes disjoint slices from each batch entry.
    """

    n_rows: int
    y_center: float
    col_start: int
    n_cols: int
    nz_pad: int
    batch: int
    group: int

    def groups(self) -> list[tuple[int, int]]:
        """Slice ranges (k0, k1) of the groups, covering 0 .. nz_pad."""
        return [(k0, min(k0 + self.group, self.nz_pad))
                for k0 in range(0, self.nz_pad, self.group)]


def _layout(geometry: Geometry, device: torch.device) -> _Layout:
    """Choose the in-plane samples and the slice grouping for ``geometry`` on ``device``."""
    nz, ny, nx = geometry.volume_shape
    nu = geometry.detector_shape[1]
    # bilinear interpolation with zero padding reaches (n + 1) / 2 voxels from the center
    radius = math.hypot((nx + 1) / 2, (ny + 1) / 2)
    col_start = max(0, math.floor((nu - 1) / 2 - radius) + 1)
    col_stop = min(nu, math.ceil((nu - 1) / 2 + radius))
    n_rows = 2 * math.ceil(radius) + 1
    if n_rows % 2 != ny % 2:
        # same parity as ny: at theta = 0 the samples hit voxel centers exactly
        n_rows += 1
    if device.type == "cpu":
        batch = max(1, min(CPU_SLICES_PER_BATCH, nz))
        nz_pad = math.ceil(nz / batch) * batch
        group = min(nz_pad, max(1, CPU_SLICES_PER_GROUP // batch) * batch)
    else:  # GPUs parallelise over every output sample: all slices at once
        batch = group = nz_pad = nz
    return _Layout(n_rows, (n_rows - 1) / 2, col_start, col_stop - col_start, nz_pad,
                   batch, group)


def _linear_taps(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights of linear interpolation at fractional positions ``pos``.

    Returns
    -------
    index : np.ndarray, int64, shape [2, *pos.shape]
        floor(pos) and floor(pos) + 1.
    weight : np.ndarray, float64, shape [2, *pos.shape]
        1 - frac and frac.
    """
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    return np.stack([lo, lo + 1]), np.stack([1.0 - frac, frac])


def _oblique_entries(
    tilt_deg: float, nz: int, nv: int, layout: _Layout, z_offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nonzero entries of the fixed oblique projection P0 (Joseph interpolation).

    P0 integrates the rotated volume along d0 = (0, -cos a, sin a): detector row r
    (offset v_r = r - (nv - 1) / 2) sees the line {v_r v0 + s d0}. On it,
    z = v_r / cos a - y tan a and y = v_r / sin a - z cot a. We step along the axis the
    ray is closer to (one sample per voxel plane, linear interpolation along the other
    axis, weight = path length per step), so every voxel plane is sampled once per ray.
    Samples outside the volume read zero. Slice k sits at height
    ``z = k - (nz - 1) / 2 + z_offset``; the taps of each slice do not depend on the other
    slices, so slabs of a volume project to parts that sum to the whole.

    Returns
    -------
    rows, cols, vals : np.ndarray, shape [nnz]
        int64 detector rows, int64 columns of the [nz * n_rows] rotated-chunk matrix
        (see :class:`_Layout`), float64 weights (voxel units).
    """
    a = math.radians(90.0 - tilt_deg)
    sin_a, cos_a = math.sin(a), math.cos(a)
    v = (np.arange(nv, dtype=np.float64) - (nv - 1) / 2)[:, None]
    y = np.arange(layout.n_rows, dtype=np.float64) - layout.y_center
    z = np.arange(nz, dtype=np.float64) - (nz - 1) / 2 + z_offset
    if cos_a >= sin_a:  # step along y, interpolate between z slices: taps over k
        k, w = _linear_taps(v / cos_a - y * (sin_a / cos_a) - z_offset + (nz - 1) / 2)
        j = np.broadcast_to(np.arange(layout.n_rows), k.shape)
        w, valid = w / cos_a, (k >= 0) & (k < nz)
    else:  # step along z, interpolate between sample rows: taps over j
        j, w = _linear_taps(v / sin_a - z * (cos_a / sin_a) + layout.y_center)
        k = np.broadcast_to(np.arange(nz), j.shape)
        w, valid = w / sin_a, (j >= 0) & (j < layout.n_rows)
    r = np.broadcast_to(np.arange(nv)[:, None], k.shape)
    valid &= w != 0.0
    r, k, j, w = r[valid], k[valid], j[valid], w[valid]
    return r, k * layout.n_rows + j, w


@dataclass(frozen=True)
class _Oblique:
    """P0 on one device/dtype, split by slice group.

    ``matrices[g]`` is the sparse CSR block [nv, (k1 - k0) * n_rows] of M for slices
    k0 .. k1 - 1 of group g (forward). ``t_index`` [nz_pad * n_rows, K] int64 and
    ``t_weight`` [nz_pad * n_rows, K] are M^T in ELLPACK form (adjoint): for each column
    of M its K (<= 2 in practice) rows and weights, padded with row index nv (a zero row
    appended to the input) and weight 0; group g owns rows k0 * n_rows .. k1 * n_rows.
    """

    matrices: tuple[torch.Tensor, ...]
    t_index: torch.Tensor
    t_weight: torch.Tensor


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int],
         device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Sparse CSR tensor on ``device`` from COO entries without duplicates."""
    order = np.lexsort((cols, rows))
    crow = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=crow[1:])
    with warnings.catch_warnings():
        # beta-state and invariant-check notices of torch.sparse: not actionable here
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support.*")
        warnings.filterwarnings("ignore", message=".*[Ss]parse invariant checks.*")
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow),
            torch.from_numpy(cols[order]),
            torch.from_numpy(vals[order]).to(dtype),
            size=shape,
            check_invariants=True,
        ).to(device)


def _ell_transpose(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, n_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """ELLPACK of the transpose: per column, its rows and weights in slots 0 .. count - 1.

    Returns
    -------
    index : np.ndarray, int64, [n_cols, K]
        Row indices, padded with ``n_rows`` (points at an appended zero row).
    weight : np.ndarray, float64, [n_cols, K]
        Matching weights, padded with 0.
    """
    count = np.bincount(cols, minlength=n_cols)
    order = np.argsort(cols, kind="stable")
    sorted_cols = cols[order]
    slot = np.arange(cols.size) - (np.cumsum(count) - count)[sorted_cols]
    width = max(1, int(count.max(initial=0)))
    index = np.full((n_cols, width), n_rows, dtype=np.int64)
    weight = np.zeros((n_cols, width), dtype=np.float64)
    index[sorted_cols, slot] = rows[order]
    weight[sorted_cols, slot] = vals[order]
    return index, weight


@functools.lru_cache(maxsize=32)
def _oblique_operator(
    tilt_deg: float,
    nz: int,
    nv: int,
    layout: _Layout,
    device: torch.device,
    dtype: torch.dtype,
    z_offset: float = 0.0,
) -> _Oblique:
    """Build (once per geometry, layout, device and dtype) the sparse operator P0."""
    rows, cols, vals = _oblique_entries(tilt_deg, nz, nv, layout, z_offset)
    index, weight = _ell_transpose(rows, cols, vals, nv, layout.nz_pad * layout.n_rows)
    matrices = []
    for k0, k1 in layout.groups():
        lo, hi = k0 * layout.n_rows, k1 * layout.n_rows
        sel = (cols >= lo) & (cols < hi)
        matrices.append(
            _csr(rows[sel], cols[sel] - lo, vals[sel], (nv, hi - lo), device, dtype)
        )
    return _Oblique(
        tuple(matrices),
        torch.from_numpy(index).to(device),
        torch.from_numpy(weight).to(device=device, dtype=dtype),
    )


def _rotation_grid(
    theta_rad: np.ndarray,
    geometry: Geometry,
    layout: _Layout,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Sampling grid of the in-plane rotation for a chunk of angles.

    For angle t, detector column c (x_c = c - (nu - 1) / 2) and sample row j
    (y_j = j - y_center), the rotated volume f_t(x_c, y_j) = f(R(t) (x_c, y_j)) samples the
    volume at x = cos t x_c - sin t y_j, y = sin t x_c + cos t y_j (voxels from the
    center), which ``grid_sample`` (align_corners=False) wants as 2 x / nx, 2 y / ny.
    Only the columns ``layout.col_start + [0, n_cols)`` are sampled.

    Returns
    -------
    torch.Tensor, ``dtype``, shape [1, n_rows, n_chunk * n_cols, 2]
        Angles side by side along the width: column ``i * n_cols + c`` is angle i,
        detector column ``col_start + c``.
    """
    _, ny, nx = geometry.volume_shape
    nu = geometry.detector_shape[1]
    f64 = {"dtype": torch.float64, "device": device}
    # trig on the host in float64 so that every device gets the same grid
    cos_t = torch.as_tensor(np.cos(theta_rad), **f64)[None, :, None]
    sin_t = torch.as_tensor(np.sin(theta_rad), **f64)[None, :, None]
    cols = torch.arange(layout.col_start, layout.col_start + layout.n_cols, **f64)
    x_c = (cols - (nu - 1) / 2)[None, None, :]
    y_j = (torch.arange(layout.n_rows, **f64) - layout.y_center)[:, None, None]
    x = cos_t * x_c - sin_t * y_j
    y = sin_t * x_c + cos_t * y_j
    grid = torch.stack([x * (2.0 / nx), y * (2.0 / ny)], dim=-1)
    return grid.reshape(1, layout.n_rows, -1, 2).to(dtype)


def _grid_sample_adjoint(
    grad_output: torch.Tensor, grid: torch.Tensor, input_shape: tuple[int, ...]
) -> torch.Tensor:
    """Adjoint of bilinear, zero-padded ``grid_sample``: scatter-add into ``input_shape``."""
    if _USE_ATEN_GRID_BACKWARD:
        # the input's values are not needed for its own gradient: pass a stride-0 zero
        shape_only = grad_output.new_zeros(()).expand(input_shape)
        grad_input, _ = torch.ops.aten.grid_sampler_2d_backward(
            grad_output, shape_only, grid, 0, 0, False, [True, False]
        )
        return grad_input
    with torch.enable_grad():
        dummy = grad_output.new_zeros(input_shape, requires_grad=True)
        out = F.grid_sample(dummy, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        (grad_input,) = torch.autograd.grad(out, dummy, grad_output)
    return grad_input


def _angle_chunks(geometry: Geometry, layout: _Layout, itemsize: int, max_chunk_bytes: int):
    """Yield (start, stop) angle ranges whose rotated slice group fits the byte budget."""
    per_angle = layout.group * layout.n_rows * layout.n_cols * itemsize
    size = max(1, min(geometry.n_angles, max_chunk_bytes // per_angle))
    for start in range(0, geometry.n_angles, size):
        yield start, min(start + size, geometry.n_angles)


def _padded_slices(volume: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """The volume, contiguous and zero-padded along z to [nz_pad, ny, nx]."""
    volume = volume.contiguous()
    if layout.nz_pad > volume.shape[0]:
        volume = F.pad(volume, (0, 0, 0, 0, 0, layout.nz_pad - volume.shape[0]))
    return volume


def _rotate(slices: torch.Tensor, grid: torch.Tensor, batch: int) -> torch.Tensor:
    """In-plane rotation of slices [n, ny, nx] -> matrix [n * n_rows, W]."""
    n, ny, nx = slices.shape
    image = slices.view(n // batch, batch, ny, nx)
    out = F.grid_sample(image, grid.expand(n // batch, -1, -1, -1), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out.view(-1, grid.shape[2])


def _rotate_adjoint(
    rotated: torch.Tensor, grid: torch.Tensor, batch: int, slice_shape: tuple[int, int, int]
) -> torch.Tensor:
    """Adjoint of :func:`_rotate`: matrix [n * n_rows, W] -> slices [n, ny, nx]."""
    n, ny, nx = slice_shape
    grad_out = rotated.view(n // batch, batch, grid.shape[1], grid.shape[2])
    grid = grid.expand(n // batch, -1, -1, -1)
    return _grid_sample_adjoint(grad_out, grid, (n // batch, batch, ny, nx)).view(n, ny, nx)


def _project_impl(volume: torch.Tensor, geometry: Geometry, max_chunk_bytes: int) -> torch.Tensor:
    """Forward projection without autograd; see :func:`project`."""
    nz = geometry.volume_shape[0]
    nv = geometry.detector_shape[0]
    device, dtype = volume.device, volume.dtype
    layout = _layout(geometry, device)
    cols = slice(layout.col_start, layout.col_start + layout.n_cols)
    op = _oblique_operator(geometry.tilt_deg, nz, nv, layout, device, dtype,
                           geometry.z_offset)
    theta = geometry.angles_rad
    slices = _padded_slices(volume, layout)
    # columns outside the volume's in-plane circle stay zero
    out = volume.new_zeros(geometry.projection_shape)
    for start, stop in _angle_chunks(geometry, layout, volume.element_size(), max_chunk_bytes):
        grid = _rotation_grid(theta[start:stop], geometry, layout, device, dtype)
        proj = None
        for (k0, k1), matrix in zip(layout.groups(), op.matrices, strict=True):
            part = matrix @ _rotate(slices[k0:k1], grid, layout.batch)
            proj = part if proj is None else proj.add_(part)
        out[start:stop, :, cols] = proj.view(nv, stop - start, layout.n_cols).transpose(0, 1)
    return out


def _backproject_impl(
    projections: torch.Tensor, geometry: Geometry, max_chunk_bytes: int
) -> torch.Tensor:
    """Exact adjoint of :func:`_project_impl` without autograd; see :func:`backproject`."""
    nz, ny, nx = geometry.volume_shape
    nv = geometry.detector_shape[0]
    device, dtype = projections.device, projections.dtype
    layout = _layout(geometry, device)
    cols = slice(layout.col_start, layout.col_start + layout.n_cols)
    op = _oblique_operator(geometry.tilt_deg, nz, nv, layout, device, dtype,
                           geometry.z_offset)
    theta = geometry.angles_rad
    volume = projections.new_zeros((layout.nz_pad, ny, nx))
    itemsize = projections.element_size()
    for start, stop in _angle_chunks(geometry, layout, itemsize, max_chunk_bytes):
        width = (stop - start) * layout.n_cols
        # [nv + 1, width]: the chunk as a matrix, plus the zero row the ELL padding uses
        stacked = projections.new_zeros(nv + 1, width)
        stacked[:nv].view(nv, stop - start, layout.n_cols).copy_(
            projections[start:stop, :, cols].transpose(0, 1)
        )
        grid = _rotation_grid(theta[start:stop], geometry, layout, device, dtype)
        for k0, k1 in layout.groups():
            rows = slice(k0 * layout.n_rows, k1 * layout.n_rows)
            rotated = F.embedding_bag(op.t_index[rows], stacked,
                                      per_sample_weights=op.t_weight[rows], mode="sum")
            volume[k0:k1] += _rotate_adjoint(rotated, grid, layout.batch, (k1 - k0, ny, nx))
    return volume[:nz]


class _Project(torch.autograd.Function):
    """volume -> projections; backward = backproject (itself differentiable)."""

    @staticmethod
    def forward(ctx, volume, geometry, max_chunk_bytes, kernel):  # noqa: D102
        ctx.geometry = geometry
        ctx.max_chunk_bytes = max_chunk_bytes
        ctx.kernel = kernel
        if kernel == "triton":
            from hpc_adept.lamino.fused import project_fused

            return project_fused(volume, geometry)
        return _project_impl(volume, geometry, max_chunk_bytes)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        grad_volume = _Backproject.apply(grad.contiguous(), ctx.geometry, ctx.max_chunk_bytes,
                                         ctx.kernel)
        return grad_volume, None, None, None


class _Backproject(torch.autograd.Function):
    """projections -> volume; backward = project (itself differentiable)."""

    @staticmethod
    def forward(ctx, projections, geometry, max_chunk_bytes, kernel):  # noqa: D102
        ctx.geometry = geometry
        ctx.max_chunk_bytes = max_chunk_bytes
        ctx.kernel = kernel
        if kernel == "triton":
            from hpc_adept.lamino.fused import backproject_fused

            return backproject_fused(projections, geometry)
        return _backproject_impl(projections, geometry, max_chunk_bytes)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        grad_proj = _Project.apply(grad.contiguous(), ctx.geometry, ctx.max_chunk_bytes,
                                   ctx.kernel)
        return grad_proj, None, None, None


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


def _check_budget(max_chunk_bytes: int | None, device: torch.device) -> int:
    """Return the chunk byte budget, the module default for ``device`` when None."""
    if max_chunk_bytes is None:
        return MAX_CHUNK_BYTES.get(device.type, _OTHER_DEVICE_CHUNK_BYTES)
    if isinstance(max_chunk_bytes, bool) or not isinstance(max_chunk_bytes, int) \
            or max_chunk_bytes < 1:
        raise ValueError(f"max_chunk_bytes must be a positive int, got {max_chunk_bytes!r}")
    return max_chunk_bytes


def set_default_kernel(kernel: str) -> None:
    """Choose the implementation :func:`project` and :func:`backproject` use by default
    (for CUDA tensors: a ``triton`` default leaves CPU tensors to ``torch``).

    Parameters
    ----------
    kernel : {'torch', 'triton'}
        See :data:`KERNELS`. ``triton`` needs Triton (``pip install hpc_adept[triton]``;
        CUDA builds of torch ship it).

    Raises
    ------
    ValueError
        Unknown name, or ``triton`` without Triton.
    """
    global _default_kernel
    _default_kernel = _check_kernel(kernel, torch.empty(0))


def default_kernel() -> str:
    """The implementation used when a call names none (``torch`` unless set)."""
    return _default_kernel


def _check_kernel(kernel: str | None, tensor: torch.Tensor) -> str:
    if kernel is None:
        # the process default (runtime.projector) is for GPU work: CPU tensors, such as the
        # simulator's float64 projections, keep the torch kernel
        return "torch" if _default_kernel == "triton" and not tensor.is_cuda \
            else _default_kernel
    if kernel not in KERNELS:
        raise ValueError(f"projector kernel must be one of {', '.join(KERNELS)}, "
                         f"got {kernel!r}")
    if kernel == "triton":
        from hpc_adept.lamino.fused import available

        if not available():
            raise ValueError("the triton projector kernel needs Triton: "
                             "pip install 'hpc_adept[triton]'")
    return kernel


def project(
    volume: torch.Tensor, geometry: Geometry, *, max_chunk_bytes: int | None = None,
    kernel: str | None = None,
) -> torch.Tensor:
    """Laminographic forward projection (line integrals), differentiable.

    Parameters
    ----------
    volume : torch.Tensor, float32 or float64, shape [nz, ny, nx]
        Per-voxel values (e.g. phase per voxel), on any device.
    geometry : Geometry
        Angles, tilt and shapes; ``geometry.volume_shape`` must equal ``volume.shape``.
    max_chunk_bytes : int, optional
        Byte budget of the per-chunk intermediate, the rotated slices of one slice group
        for a chunk of angles, [n_slices, ny_s, n_chunk * nu'] in the input's dtype
        (ny_s, nu' <= in-plane diagonal of the volume); default
        ``MAX_CHUNK_BYTES[device type]``. At least one angle is processed at a time.
        The ``triton`` kernel has no intermediate and ignores it.
    kernel : {'torch', 'triton'}, optional
        Implementation (:data:`KERNELS`); default :func:`default_kernel` for CUDA tensors
        and ``torch`` for others (``triton`` runs CPU tensors only in Triton's interpreter,
        for tests, when named here). Both compute the same matrix (to rounding) and its
        exact adjoint.

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
    _check_input(volume, geometry.volume_shape, "volume", "volume_shape")
    return _Project.apply(volume, geometry, _check_budget(max_chunk_bytes, volume.device),
                          _check_kernel(kernel, volume))


def backproject(
    projections: torch.Tensor, geometry: Geometry, *, max_chunk_bytes: int | None = None,
    kernel: str | None = None,
) -> torch.Tensor:
    """Exact adjoint of :func:`project` (unfiltered backprojection), differentiable.

    Parameters
    ----------
    projections : torch.Tensor, float32 or float64, shape [n_angles, nv, nu]
        Projection stack, on any device.
    geometry : Geometry
        Must match ``projections.shape == geometry.projection_shape``.
    max_chunk_bytes, kernel : optional
        As for :func:`project`.

    Returns
    -------
    torch.Tensor, same dtype and device, shape [nz, ny, nx]
        ``A^T g`` with A the matrix of :func:`project`, summed over all angles
        (no angular weighting).

    Raises
    ------
    TypeError
        ``projections`` is not a float32/float64 tensor.
    GeometryError (a ValueError)
        ``projections.shape`` differs from ``geometry.projection_shape``.
    """
    _check_input(projections, geometry.projection_shape, "projections", "projection shape")
    return _Backproject.apply(
        projections, geometry, _check_budget(max_chunk_bytes, projections.device),
        _check_kernel(kernel, projections),
    )

"""The ``torch`` kernel of the laminography projector and its exact adjoint.

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
``grid_sample``, i.e. its input gradient, which scatter-adds into the volume.

These functions take checked inputs and build no autograd graph; the operator
(:class:`hpc_adept.lamino.LaminoOperator`) checks, chooses the kernel and makes them
differentiable. The slice layout and the sparse matrix M come from
:mod:`hpc_adept.lamino.oblique`, shared with the ``triton`` kernel.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hpc_adept.lamino.geometry import Geometry
from hpc_adept.lamino.oblique import Layout, ell_transpose, oblique_entries, sample_layout

#: Default byte budget of the per-chunk intermediate (the rotated z slices of one slice
#: group for a chunk of angles), by device type; override per call with
#: ``max_chunk_bytes``. On CPU it stays under glibc's largest dynamic mmap threshold
#: (32 MiB) so that chunk buffers are recycled from the heap instead of being
#: page-faulted in afresh for every chunk (which cost more than the arithmetic); on GPUs
#: larger chunks are faster.
MAX_CHUNK_BYTES: dict[str, int] = {"cpu": 32 * 2**20, "cuda": 1024 * 2**20}
_OTHER_DEVICE_CHUNK_BYTES = 256 * 2**20


def check_chunk_bytes(max_chunk_bytes: int | None) -> int | None:
    """Return ``max_chunk_bytes`` (None: the device default) or raise ValueError."""
    if max_chunk_bytes is None:
        return None
    if isinstance(max_chunk_bytes, bool) or not isinstance(max_chunk_bytes, int) \
            or max_chunk_bytes < 1:
        raise ValueError(f"max_chunk_bytes must be a positive int, got {max_chunk_bytes!r}")
    return max_chunk_bytes


def chunk_budget(max_chunk_bytes: int | None, device: torch.device) -> int:
    """Byte budget of one chunk: ``max_chunk_bytes``, or the default for ``device``'s type
    (:data:`MAX_CHUNK_BYTES`) when None."""
    if max_chunk_bytes is None:
        return MAX_CHUNK_BYTES.get(device.type, _OTHER_DEVICE_CHUNK_BYTES)
    return max_chunk_bytes

# grid_sampler_2d_backward(grad_output, input, grid, interpolation, padding, align_corners,
# output_mask) is the input gradient of grid_sample without building a graph; fall back
# to autograd where a torch build lacks it.
_USE_ATEN_GRID_BACKWARD: bool = hasattr(torch.ops.aten, "grid_sampler_2d_backward")


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


@functools.lru_cache(maxsize=32)
def _oblique_operator(
    tilt_deg: float,
    nz: int,
    nv: int,
    layout: Layout,
    device: torch.device,
    dtype: torch.dtype,
    z_offset: float = 0.0,
) -> _Oblique:
    """Build (once per geometry, layout, device and dtype) the sparse operator P0."""
    rows, cols, vals = oblique_entries(tilt_deg, nz, nv, layout, z_offset)
    index, weight = ell_transpose(rows, cols, vals, nv, layout.nz_pad * layout.n_rows)
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
    layout: Layout,
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


#: Bytes of rotation grids kept for reuse, by device type: a training projects the same
#: geometries every step, so each chunk's grid is built (and copied to the device) once.
#: Least recently used grids go first; beyond the budget they are rebuilt per call.
GRID_CACHE_BYTES: dict[str, int] = {"cpu": 256 * 2**20, "cuda": 2048 * 2**20}


class _GridCache:
    """Rotation grids by (geometry, chunk, layout, device, dtype), bounded in bytes per
    device type (thread-safe: autograd may project on its device thread)."""

    def __init__(self) -> None:
        self._grids: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, geometry: Geometry, start: int, stop: int, layout: Layout,
            device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The grid of angles ``start .. stop - 1`` of ``geometry`` (see
        :func:`_rotation_grid`), from the cache or built and kept."""
        key = (geometry, start, stop, layout, device, dtype)
        with self._lock:
            grid = self._grids.get(key)
            if grid is not None:
                self._grids.move_to_end(key)
                return grid
        with torch.inference_mode(False):  # a normal tensor, usable in any later mode
            grid = _rotation_grid(geometry.angles_rad[start:stop], geometry, layout, device,
                                  dtype)
        self._keep(key, grid, device.type)
        return grid

    def _keep(self, key: tuple, grid: torch.Tensor, device_type: str) -> None:
        budget = GRID_CACHE_BYTES.get(device_type, 0)
        size = grid.numel() * grid.element_size()
        if size > budget:
            return
        with self._lock:
            self._grids[key] = grid
            while self._bytes(device_type) > budget:
                oldest = next(k for k in self._grids if k[4].type == device_type)
                del self._grids[oldest]

    def _bytes(self, device_type: str) -> int:
        return sum(g.numel() * g.element_size() for k, g in self._grids.items()
                   if k[4].type == device_type)

    def clear(self) -> None:
        """Forget every grid (frees their memory)."""
        with self._lock:
            self._grids.clear()


_GRIDS = _GridCache()


def clear_grid_cache() -> None:
    """Free the cached rotation grids and oblique matrices of both kernels (e.g. before a
    stage that needs the device memory)."""
    _GRIDS.clear()
    _oblique_operator.cache_clear()
    from hpc_adept.lamino import fused  # its tables: built only where triton ran

    fused.clear_tables()


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


def _angle_chunks(geometry: Geometry, layout: Layout, itemsize: int, max_chunk_bytes: int):
    """Yield (start, stop) angle ranges whose rotated slice group fits the byte budget."""
    per_angle = layout.group * layout.n_rows * layout.n_cols * itemsize
    size = max(1, min(geometry.n_angles, max_chunk_bytes // per_angle))
    for start in range(0, geometry.n_angles, size):
        yield start, min(start + size, geometry.n_angles)


def _padded_slices(volume: torch.Tensor, layout: Layout) -> torch.Tensor:
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


def project_torch(volume: torch.Tensor, geometry: Geometry, max_chunk_bytes: int
                  ) -> torch.Tensor:
    """Forward projection ``[nz, ny, nx] -> [n_angles, nv, nu]``, no autograd, no checks.

    ``max_chunk_bytes`` bounds the per-chunk intermediate (see :func:`chunk_budget`); the
    checked, differentiable form is :class:`hpc_adept.lamino.LaminoOperator`.
    """
    nz = geometry.volume_shape[0]
    nv = geometry.detector_shape[0]
    device, dtype = volume.device, volume.dtype
    layout = sample_layout(geometry, device)
    cols = slice(layout.col_start, layout.col_start + layout.n_cols)
    op = _oblique_operator(geometry.tilt_deg, nz, nv, layout, device, dtype,
                           geometry.z_offset)
    slices = _padded_slices(volume, layout)
    # columns outside the volume's in-plane circle stay zero
    out = volume.new_zeros(geometry.projection_shape)
    for start, stop in _angle_chunks(geometry, layout, volume.element_size(), max_chunk_bytes):
        grid = _GRIDS.get(geometry, start, stop, layout, device, dtype)
        proj = None
        for (k0, k1), matrix in zip(layout.groups(), op.matrices, strict=True):
            part = matrix @ _rotate(slices[k0:k1], grid, layout.batch)
            proj = part if proj is None else proj.add_(part)
        out[start:stop, :, cols] = proj.view(nv, stop - start, layout.n_cols).transpose(0, 1)
    return out


def backproject_torch(
    projections: torch.Tensor, geometry: Geometry, max_chunk_bytes: int
) -> torch.Tensor:
    """Exact adjoint of :func:`project_torch`: ``[n_angles, nv, nu] -> [nz, ny, nx]``."""
    nz, ny, nx = geometry.volume_shape
    nv = geometry.detector_shape[0]
    device, dtype = projections.device, projections.dtype
    layout = sample_layout(geometry, device)
    cols = slice(layout.col_start, layout.col_start + layout.n_cols)
    op = _oblique_operator(geometry.tilt_deg, nz, nv, layout, device, dtype,
                           geometry.z_offset)
    volume = projections.new_zeros((layout.nz_pad, ny, nx))
    itemsize = projections.element_size()
    for start, stop in _angle_chunks(geometry, layout, itemsize, max_chunk_bytes):
        width = (stop - start) * layout.n_cols
        # [nv + 1, width]: the chunk as a matrix, plus the zero row the ELL padding uses
        stacked = projections.new_zeros(nv + 1, width)
        stacked[:nv].view(nv, stop - start, layout.n_cols).copy_(
            projections[start:stop, :, cols].transpose(0, 1)
        )
        grid = _GRIDS.get(geometry, start, stop, layout, device, dtype)
        for k0, k1 in layout.groups():
            rows = slice(k0 * layout.n_rows, k1 * layout.n_rows)
            rotated = F.embedding_bag(op.t_index[rows], stacked,
                                      per_sample_weights=op.t_weight[rows], mode="sum")
            volume[k0:k1] += _rotate_adjoint(rotated, grid, layout.batch, (k1 - k0, ny, nx))
    return volume[:nz]



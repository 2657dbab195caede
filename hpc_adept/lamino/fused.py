"""Fused Triton kernels of the laminography projector and its exact adjoint.

They compute the same linear operator as :mod:`hpc_adept.lamino.projector` (the matrix
``M R_theta`` of its module docstring: in-plane bilinear rotation of every z slice, then
the fixed oblique Joseph projection ``M``), but in one pass each, with no intermediate in
memory:

* forward: one program per (angle, detector row) and block of detector columns walks the
  row's nonzeros ``(k, j, w)`` of ``M`` and accumulates ``w`` times the bilinear sample of
  slice ``k`` at the rotated position of (column, sample row ``j``);
* adjoint: one program per z slice and block of voxels gathers, for every angle, the
  (column, sample row) pairs whose bilinear footprint covers the voxel (at most 3 x 3 of
  them, found by rotating the voxel back) and the <= K detector rows of ``M^T`` of each,
  with the same weight formula as the forward. A gather, not a scatter: no atomics, and
  the result does not depend on the order of the angles' programs.

The reads of the volume (forward) and of the projections (adjoint) are the only large
memory traffic, so on a GPU the kernels are bound by cached gathers, not by DRAM traffic
of intermediates (see ``profiling/roofline.py``).

On CUDA tensors the kernels are compiled by Triton. On CPU tensors they run in Triton's
interpreter (NumPy, one program at a time): exact, but far too slow for anything beyond
tests; that is how the test suite checks them on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import math
import os
import re
import sys
from typing import Any

import numpy as np
import torch

from hpc_adept.lamino.geometry import Geometry
from hpc_adept.lamino.oblique import ell_transpose, oblique_entries, sample_layout

#: Detector columns per forward program and voxels per adjoint program.
FORWARD_BLOCK: int = 128
ADJOINT_BLOCK: int = 128
#: No fused multiply-adds: the compiler would contract the forward's and the adjoint's
#: sample positions differently (it hoists different products out of their loops), and the
#: adjoint would no longer be the exact transpose (weights off by up to ~6e-5 in float32).
_LAUNCH_OPTIONS: dict[str, Any] = {"enable_fp_fusion": False}

#: Nonzeros of a row of M per forward loop step (compiled; see INTERPRETER_ENTRIES).
FORWARD_ENTRIES: int = 16
#: The interpreter runs one program at a time in NumPy: fewer, larger programs are faster.
INTERPRETER_BLOCK: int = 1024
INTERPRETER_ENTRIES: int = 64


#: Oldest Triton with what the kernels use (``triton.knobs``).
MIN_TRITON: tuple[int, int] = (3, 4)


def available() -> bool:
    """Whether Triton >= :data:`MIN_TRITON` is installed (the ``triton`` extra; CUDA builds
    of torch ship it).

    Does not import it: the first import fixes Triton's mode (see :func:`_kernels`).
    """
    if importlib.util.find_spec("triton") is None:
        return False
    for dist in ("triton", "pytorch-triton"):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
        return tuple(parts) >= MIN_TRITON
    return False


def _kernels(on_cpu: bool) -> tuple[Any, Any]:
    """(forward, adjoint) kernels in the process's Triton mode.

    Triton fixes its mode (compiler or interpreter) when it is first imported. On a
    machine without a GPU the compiler cannot run, so the interpreter is switched on here
    if Triton is not imported yet. CPU tensors need the interpreter.
    """
    if "triton" not in sys.modules and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from triton import knobs

    from hpc_adept.lamino import _fused_kernels as bodies

    if on_cpu and not knobs.runtime.interpret:
        raise RuntimeError("the fused projector runs CPU tensors only in Triton's "
                           "interpreter: set TRITON_INTERPRET=1 before Triton is imported")
    return bodies.project_body, bodies.backproject_body


@functools.lru_cache(maxsize=32)
def _matrix_tables(tilt_deg: float, nz: int, ny: int, nx: int, nv: int, nu: int,
                   z_offset: float, device: torch.device, dtype: torch.dtype
                   ) -> dict[str, Any]:
    """Sample layout, ``M`` in CSR and ``M^T`` in ELLPACK on ``device``: the same for every
    angle, so built once per shape, tilt and slab (like the torch kernel's operator)."""
    # the GPU layout: every slice at once, no padding (the kernels need no grouping)
    layout = sample_layout(Geometry([0.0], tilt_deg, (nz, ny, nx), (nv, nu), z_offset),
                           torch.device("cuda"))
    rows, cols, vals = oblique_entries(tilt_deg, nz, nv, layout, z_offset)
    order = np.lexsort((cols, rows))
    crow = np.zeros(nv + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=nv), out=crow[1:])
    t_index, t_weight = ell_transpose(rows, cols, vals, nv, nz * layout.n_rows)
    on = {"device": device}
    return {
        "layout": layout,
        # centers (n - 1) / 2 of the detector width, volume height y and width x (exact)
        "halves": ((nu - 1) / 2, (ny - 1) / 2, (nx - 1) / 2),
        "crow": torch.from_numpy(crow.astype(np.int32)).to(**on),
        "k": torch.from_numpy((cols[order] // layout.n_rows).astype(np.int32)).to(**on),
        "j": torch.from_numpy((cols[order] % layout.n_rows).astype(np.int32)).to(**on),
        "w": torch.from_numpy(vals[order]).to(device=device, dtype=dtype),
        "t_index": torch.from_numpy(t_index.astype(np.int32)).to(**on),
        "t_weight": torch.from_numpy(t_weight).to(device=device, dtype=dtype),
    }


@functools.lru_cache(maxsize=256)
def _trig_tables(angles_deg: tuple[float, ...], device: torch.device, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles (computed in float64 on the host, as the torch kernel)."""
    theta = np.radians(np.asarray(angles_deg, dtype=np.float64))
    return (torch.from_numpy(np.cos(theta)).to(device=device, dtype=dtype),
            torch.from_numpy(np.sin(theta)).to(device=device, dtype=dtype))


def clear_tables() -> None:
    """Free the cached matrix and angle tables (device memory for the next stage)."""
    _matrix_tables.cache_clear()
    _trig_tables.cache_clear()


def _tables(geometry: Geometry, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Everything a launch needs for ``geometry``: :func:`_matrix_tables` + cos, sin."""
    cos, sin = _trig_tables(tuple(geometry.angles_deg), device, dtype)
    return {**_matrix_tables(geometry.tilt_deg, *geometry.volume_shape,
                             *geometry.detector_shape, geometry.z_offset, device, dtype),
            "cos": cos, "sin": sin}


def _block(tensor: torch.Tensor, gpu_block: int, extent: int) -> int:
    """Programs' block size: ``gpu_block`` when compiled, else one block covering
    ``extent`` (up to :data:`INTERPRETER_BLOCK`): the interpreter pays per program."""
    if tensor.is_cuda:
        return gpu_block
    return min(INTERPRETER_BLOCK, 1 << max(0, extent - 1).bit_length())


def _launch(x: torch.Tensor, geometry: Geometry) -> tuple[dict[str, Any], Any, Any]:
    """Tables (on ``x``'s device and dtype) and the (forward, adjoint) kernels for ``x``."""
    return (_tables(geometry, x.device, x.dtype), *_kernels(not x.is_cuda))


def _on_device(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it ``x``'s."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def project_fused(volume: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Forward projection of ``volume`` [nz, ny, nx] -> [n_angles, nv, nu], no autograd.

    Same operator as :func:`hpc_adept.lamino.projector.project_torch`; argument checks
    are left to :class:`hpc_adept.lamino.LaminoOperator`.
    """
    volume = volume.contiguous()
    tab, forward, _ = _launch(volume, geometry)
    layout = tab["layout"]
    _, ny, nx = geometry.volume_shape
    nv, nu = geometry.detector_shape
    out = volume.new_zeros(geometry.projection_shape)
    block = _block(volume, FORWARD_BLOCK, layout.n_cols)
    grid = (geometry.n_angles * nv, math.ceil(layout.n_cols / block))
    half_u, half_y, half_x = tab["halves"]
    with _on_device(volume):
        forward[grid](volume, out, tab["cos"], tab["sin"], tab["crow"], tab["k"], tab["j"],
                      tab["w"], nv, nu, ny, nx, layout.y_center, layout.col_start,
                      layout.n_cols, half_u, half_y, half_x,
                      BLOCK_E=FORWARD_ENTRIES if volume.is_cuda else INTERPRETER_ENTRIES,
                      BLOCK=block, **_LAUNCH_OPTIONS)
    return out


def backproject_fused(projections: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Exact adjoint of :func:`project_fused`: [n_angles, nv, nu] -> [nz, ny, nx]."""
    projections = projections.contiguous()
    tab, _, adjoint = _launch(projections, geometry)
    layout = tab["layout"]
    nz, ny, nx = geometry.volume_shape
    nv, nu = geometry.detector_shape
    volume = projections.new_empty(geometry.volume_shape)
    block = _block(projections, ADJOINT_BLOCK, ny * nx)
    # voxel blocks on grid axis 0 (up to 2^31 - 1; axes 1 and 2 stop at 65535)
    grid = (math.ceil(ny * nx / block), nz)
    half_u, half_y, half_x = tab["halves"]
    with _on_device(projections):
        adjoint[grid](projections, volume, tab["cos"], tab["sin"], tab["t_index"],
                      tab["t_weight"], geometry.n_angles, nv, nu, ny, nx, layout.n_rows,
                      layout.y_center, layout.col_start, layout.n_cols, half_u, half_y,
                      half_x, K=int(tab["t_index"].shape[1]), BLOCK=block,
                      **_LAUNCH_OPTIONS)
    return volume


def _signatures(dtype: str) -> tuple[dict[str, str], dict[str, str]]:
    """Triton signatures of (forward, adjoint) for element type ``fp32`` or ``fp64``,
    as :func:`project_fused` and :func:`backproject_fused` launch them."""
    data = f"*{dtype}"
    shape = {name: "i32" for name in ("nv", "nu", "ny", "nx")}
    centers = {"half_u": "fp32", "half_y": "fp32", "half_x": "fp32"}
    forward = {"vol_ptr": data, "out_ptr": data, "cos_ptr": data, "sin_ptr": data,
               "crow_ptr": "*i32", "k_ptr": "*i32", "j_ptr": "*i32", "w_ptr": data,
               **shape, "y_center": "fp32", "col_start": "i32", "n_cols": "i32",
               **centers, "BLOCK_E": "constexpr", "BLOCK": "constexpr"}
    adjoint = {"proj_ptr": data, "vol_ptr": data, "cos_ptr": data, "sin_ptr": data,
               "t_index_ptr": "*i32", "t_weight_ptr": data, "n_angles": "i32", **shape,
               "n_rows": "i32", "y_center": "fp32", "col_start": "i32", "n_cols": "i32",
               **centers, "K": "constexpr", "BLOCK": "constexpr"}
    return forward, adjoint


def compile_for(capability: int, dtype: str = "fp32", ell_width: int = 2
                ) -> dict[str, dict[str, int]]:
    """Compile both kernels ahead of time for a CUDA compute capability; no GPU needed.

    Checks that the kernels build for a GPU (e.g. 90 = H100, 80 = A100) on any machine,
    with the compiler Triton ships. Needs Triton in compiler mode (not interpreted).

    Parameters
    ----------
    capability : int
        Compute capability as major * 10 + minor.
    dtype : {'fp32', 'fp64'}
        Element type of the volume and projections.
    ell_width : int
        K, the nonzeros per column of M^T (2 for every geometry in practice).

    Returns
    -------
    dict
        Per kernel (``forward``, ``adjoint``): ``cubin_bytes``, the size of its machine
        code, and ``fused_float_ops``, the floating-point fused multiply-adds in its PTX
        (none expected, see :data:`_LAUNCH_OPTIONS`).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hpc_adept.lamino import _fused_kernels as bodies

    target = GPUTarget("cuda", capability, 32)
    sig_forward, sig_adjoint = _signatures(dtype)
    built = {}
    for name, fn, sig, constants in (
        ("forward", bodies.project_body, sig_forward,
         {"BLOCK_E": FORWARD_ENTRIES, "BLOCK": FORWARD_BLOCK}),
        ("adjoint", bodies.backproject_body, sig_adjoint,
         {"K": ell_width, "BLOCK": ADJOINT_BLOCK}),
    ):
        kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constants),
                                target=target, options=_LAUNCH_OPTIONS)
        built[name] = {"cubin_bytes": len(kernel.asm["cubin"]),
                       "fused_float_ops": len(re.findall(r"\bfma\.rn\.f(?:32|64)\b",
                                                         kernel.asm["ptx"]))}
    return built

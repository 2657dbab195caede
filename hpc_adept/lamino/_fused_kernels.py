"""Triton kernel bodies of :mod:`hpc_adept.lamino.fused` (imported only when Triton is).

Kept apart so that importing :mod:`hpc_adept.lamino.fused` needs no Triton (and so that
it decides Triton's mode before Triton is imported). Both bodies
compute the sample position of (angle t, column c, sample row j) with the same formula,
so that the adjoint's bilinear weights are bit-for-bit the forward's (launched without
fused multiply-adds, which the compiler would contract differently in the two).
"""

import triton
import triton.language as tl


@triton.jit
def project_body(vol_ptr, out_ptr, cos_ptr, sin_ptr, crow_ptr, k_ptr, j_ptr, w_ptr,
                 nv, nu, ny, nx, y_center, col_start, n_cols, half_u, half_y, half_x,
                 BLOCK_E: tl.constexpr, BLOCK: tl.constexpr):
    """Program (t * nv + r, column block): out[t, r, cols] of one detector row.

    Walks the row's nonzeros (k, j, w) of M, BLOCK_E at a time: a [BLOCK_E, BLOCK] tile
    of bilinear samples, summed over the entries.
    """
    pid = tl.program_id(0)
    t = pid // nv
    r = pid % nv
    c = col_start + tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    c_ok = c < col_start + n_cols
    cos_t = tl.load(cos_ptr + t)
    sin_t = tl.load(sin_ptr + t)
    x_c = (c.to(cos_t.dtype) - half_u)[None, :]
    acc = tl.zeros((BLOCK,), dtype=cos_t.dtype)
    e_start = tl.load(crow_ptr + r)
    e_stop = tl.load(crow_ptr + r + 1)
    for e0 in range(e_start, e_stop, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        e_ok = e < e_stop
        k = tl.load(k_ptr + e, mask=e_ok, other=0)
        y_j = (tl.load(j_ptr + e, mask=e_ok, other=0).to(cos_t.dtype) - y_center)[:, None]
        w = tl.load(w_ptr + e, mask=e_ok, other=0.0)
        px = cos_t * x_c - sin_t * y_j + half_x
        py = sin_t * x_c + cos_t * y_j + half_y
        x0 = tl.floor(px)
        y0 = tl.floor(py)
        ix0 = x0.to(tl.int32)
        iy0 = y0.to(tl.int32)
        base = vol_ptr + (k.to(tl.int64) * ny * nx)[:, None]
        tile_ok = e_ok[:, None] & c_ok[None, :]
        sample = tl.zeros((BLOCK_E, BLOCK), dtype=cos_t.dtype)
        for dy in tl.static_range(2):
            iy = iy0 + dy
            wy = 1.0 - tl.abs(py - (y0 + dy))
            y_ok = tile_ok & (iy >= 0) & (iy < ny)
            for dx in tl.static_range(2):
                ix = ix0 + dx
                wx = 1.0 - tl.abs(px - (x0 + dx))
                ok = y_ok & (ix >= 0) & (ix < nx)
                value = tl.load(base + iy * nx + ix, mask=ok, other=0.0)
                sample += wx * wy * value
        acc += tl.sum(w[:, None] * sample, axis=0)
    tl.store(out_ptr + (t * nv + r).to(tl.int64) * nu + c, acc, mask=c_ok)


@triton.jit
def backproject_body(proj_ptr, vol_ptr, cos_ptr, sin_ptr, t_index_ptr, t_weight_ptr,
                     n_angles, nv, nu, ny, nx, n_rows, y_center, col_start, n_cols,
                     half_u, half_y, half_x, K: tl.constexpr,
                     BLOCK: tl.constexpr):
    """Program (voxel block, z slice k): the adjoint's value at BLOCK voxels of slice k.

    For every angle, the forward samples (c, j) within one voxel of a voxel in x and y
    lie in a 3 x 3 box around the voxel rotated back; each contributes its bilinear
    weight (the forward's formula) times the <= K detector rows of column (k, j) of M.
    """
    k = tl.program_id(1)
    v = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v_ok = v < ny * nx
    iy = v // nx
    ix = v % nx
    dtype = tl.load(cos_ptr).dtype
    fx = ix.to(dtype)
    fy = iy.to(dtype)
    xf = fx - half_x
    yf = fy - half_y
    acc = tl.zeros((BLOCK,), dtype=dtype)
    for t in range(n_angles):
        cos_t = tl.load(cos_ptr + t)
        sin_t = tl.load(sin_ptr + t)
        # the voxel rotated back: (column, sample row) of the forward sample at its center
        c_mid = cos_t * xf + sin_t * yf + half_u
        j_mid = cos_t * yf - sin_t * xf + y_center
        # samples within one voxel in x and y lie within |cos| + |sin| of it
        # (open interval of width 2 * reach <= 2.83: three integers at most, from its ceil)
        reach = tl.abs(cos_t) + tl.abs(sin_t)
        c_lo = tl.ceil(c_mid - reach).to(tl.int32)
        j_lo = tl.ceil(j_mid - reach).to(tl.int32)
        row_base = proj_ptr + tl.cast(t, tl.int64) * nv * nu
        for dc in tl.static_range(3):
            c = c_lo + dc
            x_c = c.to(dtype) - half_u
            c_ok = v_ok & (c >= col_start) & (c < col_start + n_cols)
            for dj in tl.static_range(3):
                j = j_lo + dj
                y_j = j.to(dtype) - y_center
                # the forward's sample position, same formula as in project_body
                px = cos_t * x_c - sin_t * y_j + half_x
                py = sin_t * x_c + cos_t * y_j + half_y
                wx = tl.maximum(1.0 - tl.abs(px - fx), 0.0)
                wy = tl.maximum(1.0 - tl.abs(py - fy), 0.0)
                weight = wx * wy
                ok = c_ok & (j >= 0) & (j < n_rows) & (weight > 0.0)
                column = (k * n_rows + j).to(tl.int64) * K
                for q in tl.static_range(K):
                    r = tl.load(t_index_ptr + column + q, mask=ok, other=nv)
                    w = tl.load(t_weight_ptr + column + q, mask=ok, other=0.0)
                    hit = ok & (r < nv)
                    g = tl.load(row_base + r * nu + c, mask=hit, other=0.0)
                    acc += weight * w * g
    tl.store(vol_ptr + k.to(tl.int64) * ny * nx + v, acc, mask=v_ok)

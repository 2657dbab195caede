"""A procedural Manhattan IC phantom (for tests and quick demos).

The volume holds ``n_layers`` metal layers stacked along z. Layer 0 carries wires
along x, layer 1 along y, and so on alternately; every layer has straight wires
of a few voxels' width on parallel tracks, broken into runs of random lengths.
Where a wire of one layer crosses a wire of the next layer, a square via (the
narrower wire's width) fills the dielectric gap between them with probability
``via_probability``. Everything is drawn from ``numpy.random.default_rng(seed)``,
so a seed gives the same volume on every platform.

:func:`procedural_circuit` draws the same volume and labels its circuit: every wire run and
every via gets an id; a net is a set of wires joined by vias (union of the wires each via
connects), so nets come from the design, not from the voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class _Track:
    """A wire track: centre index across the wires, width in voxels."""

    centre: int
    width: int


def _layer_bands(nz: int, n_layers: int) -> list[tuple[int, int]]:
    """Half-open z ranges ``[z0, z1)`` of the metal of each layer.

    The stack starts 10 % above the bottom and ends 5 % below the top; each layer
    is about half of its pitch thick, leaving the rest as a via gap.
    """
    bottom = int(round(0.10 * nz))
    top = nz - int(round(0.05 * nz))
    pitch = (top - bottom) / n_layers
    thick = max(1, int(round(0.5 * pitch)))
    bands = []
    for k in range(n_layers):
        z0 = bottom + int(round(k * pitch))
        bands.append((z0, min(nz, z0 + thick)))
    return bands


def _tracks(rng: np.random.Generator, extent: int, w_lo: int, w_hi: int) -> list[_Track]:
    """Parallel tracks across an axis of length ``extent`` with random widths and gaps."""
    tracks = []
    pos = int(rng.integers(0, max(1, w_hi)))
    while True:
        w = int(rng.integers(w_lo, w_hi + 1))
        if pos + w > extent:
            return tracks
        tracks.append(_Track(pos + w // 2, w))
        pos += w + max(1, w_lo) + int(rng.integers(0, 2 * w_hi + 1))


def _runs(rng: np.random.Generator, length: int, fill: float) -> list[tuple[int, int]]:
    """Random ``[a, b)`` wire runs along a track, covering about ``fill`` of it."""
    runs = []
    mean_run = max(2.0, 0.3 * length)
    mean_gap = mean_run * (1.0 - fill) / max(fill, 1e-3)
    pos = int(rng.integers(0, max(1, int(mean_gap) + 1)))
    while pos < length:
        run = max(2, int(rng.exponential(mean_run)))
        runs.append((pos, min(length, pos + run)))
        pos += run + max(1, int(rng.exponential(mean_gap)))
    return runs


def _layer_map(
    rng: np.random.Generator,
    ny: int,
    nx: int,
    along_x: bool,
    widths: tuple[int, int],
    fill: float,
    first_id: int = 1,
) -> tuple[np.ndarray, list[_Track]]:
    """2D wire map ``[ny, nx]`` int32 of one layer (wire id of each run, numbered from
    ``first_id``; 0 = no wire) and its tracks."""
    ids = np.zeros((ny, nx), np.int32)
    across, length = (ny, nx) if along_x else (nx, ny)
    tracks = _tracks(rng, across, *widths)
    wire = first_id
    for t in tracks:
        lo = t.centre - t.width // 2
        for a, b in _runs(rng, length, fill):
            if along_x:
                ids[lo : lo + t.width, a:b] = wire
            else:
                ids[a:b, lo : lo + t.width] = wire
            wire += 1
    return ids, tracks


@dataclass
class _Drawing:
    """A procedural phantom as drawn: wire ids ``[nz, ny, nx]`` int32 (0: none), via ids
    ``[nz, ny, nx]`` int32 (0: none), the metal bands, and per via id (index ``id - 1``)
    the two wires it joins and its gap (lower layer index)."""

    wires: np.ndarray
    vias: np.ndarray
    bands: list[tuple[int, int]]
    via_wires: list[tuple[int, int]] = field(default_factory=list)
    via_gap: list[int] = field(default_factory=list)


def _width_range(voxel_size_m: float, wire_width_nm: tuple[float, float]) -> tuple[int, int]:
    d_nm = voxel_size_m * 1e9
    lo = max(1, int(round(wire_width_nm[0] / d_nm)))
    hi = max(lo, int(round(wire_width_nm[1] / d_nm)))
    return lo, hi


def procedural_phantom(
    shape: Sequence[int],
    voxel_size_m: float = 27.2e-9,
    seed: int = 0,
    *,
    n_layers: int | None = None,
    wire_width_nm: tuple[float, float] = (70.0, 140.0),
    fill: float = 0.5,
    via_probability: float = 0.5,
) -> np.ndarray:
    """Procedural Manhattan multilayer interconnect.

    Parameters
    ----------
    shape : (nz, ny, nx)
        Volume shape (z = sample normal).
    voxel_size_m : float
        Voxel edge, metres; sets the wire widths in voxels.
    seed : int
        Random seed; the same seed gives the same volume.
    n_layers : int, optional
        Metal layers; default ``clip(nz // 8, 1, 6)``.
    wire_width_nm : (min, max)
        Wire width range, nm (at least one voxel).
    fill : float
        Approximate fraction of each track covered by wire, in (0, 1].
    via_probability : float
        Probability of a via at each crossing of wires of adjacent layers.

    Returns
    -------
    ndarray, float32, [nz, ny, nx]
        Occupancy: 1 for metal, 0 for dielectric.
    """
    drawing = _draw(shape, voxel_size_m, seed, n_layers, wire_width_nm, fill, via_probability)
    return ((drawing.wires > 0) | (drawing.vias > 0)).astype(np.float32)


def _draw(shape: Sequence[int], voxel_size_m: float, seed: int, n_layers: int | None,
          wire_width_nm: tuple[float, float], fill: float, via_probability: float
          ) -> _Drawing:
    """Draw the phantom (see :func:`procedural_phantom` for the parameters)."""
    nz, ny, nx = (int(n) for n in shape)
    if min(nz, ny, nx) < 1:
        raise ValueError(f"shape must be positive, got {tuple(shape)}")
    if n_layers is None:
        n_layers = int(np.clip(nz // 8, 1, 6))
    if n_layers < 1 or n_layers > nz:
        raise ValueError(f"n_layers must be in [1, nz={nz}], got {n_layers}")
    rng = np.random.default_rng(seed)
    widths = _width_range(voxel_size_m, wire_width_nm)
    bands = _layer_bands(nz, n_layers)
    drawing = _Drawing(np.zeros((nz, ny, nx), np.int32), np.zeros((nz, ny, nx), np.int32),
                       bands)
    layers = []
    for k, (z0, z1) in enumerate(bands):
        ids, tracks = _layer_map(rng, ny, nx, k % 2 == 0, widths, fill,
                                 first_id=int(drawing.wires.max()) + 1)
        # where bands overlap (a very thin volume), the later layer's wire wins
        region = drawing.wires[z0:z1]
        region[:] = np.where(ids > 0, ids, region)
        layers.append((ids, tracks))
    for k in range(n_layers - 1):
        _add_vias(rng, drawing, k, layers[k], layers[k + 1], k % 2 == 0, via_probability)
    return drawing


def _add_vias(
    rng: np.random.Generator,
    drawing: _Drawing,
    k: int,
    lower: tuple[np.ndarray, list[_Track]],
    upper: tuple[np.ndarray, list[_Track]],
    lower_along_x: bool,
    probability: float,
) -> None:
    """Square vias in the gap above layer ``k`` at crossings of wires of layers ``k`` and
    ``k + 1`` (recorded in ``drawing``)."""
    z0, z1 = drawing.bands[k][1], drawing.bands[k + 1][0]
    (ids_lo, tr_lo), (ids_hi, tr_hi) = lower, upper
    if z1 <= z0 or not tr_lo or not tr_hi:
        return
    h_tracks, v_tracks = (tr_lo, tr_hi) if lower_along_x else (tr_hi, tr_lo)
    ys = np.array([t.centre for t in h_tracks])
    xs = np.array([t.centre for t in v_tracks])
    both = (ids_lo[np.ix_(ys, xs)] > 0) & (ids_hi[np.ix_(ys, xs)] > 0)
    chosen = both & (rng.random(both.shape) < probability)
    ny, nx = ids_lo.shape
    for a, b in zip(*np.nonzero(chosen), strict=True):
        w = min(h_tracks[a].width, v_tracks[b].width)
        y0 = max(0, ys[a] - w // 2)
        x0 = max(0, xs[b] - w // 2)
        drawing.vias[z0:z1, y0 : min(ny, y0 + w), x0 : min(nx, x0 + w)] = (
            len(drawing.via_wires) + 1)
        drawing.via_wires.append((int(ids_lo[ys[a], xs[b]]), int(ids_hi[ys[a], xs[b]])))
        drawing.via_gap.append(k)


@dataclass(frozen=True, eq=False)
class ProceduralCircuit:
    """The circuit truth of a procedural phantom (same voxels as
    :func:`procedural_phantom`).

    Attributes
    ----------
    nets : ndarray, int32, [nz, ny, nx]
        Net id of the metal at each voxel (1..n, ``net_names[id - 1]``), 0: dielectric.
    vias : ndarray, int32, [nz, ny, nx]
        Via id at each voxel (1..m), 0 elsewhere.
    layers : dict of str to (start, stop)
        Slices of every metal layer (``metal1``, ...) and cut layer (``via1`` between
        ``metal1`` and ``metal2``, ...).
    cut_layers : tuple of str
        The names in ``layers`` that are cut layers.
    net_names : tuple of str
        ``net1``, ``net2``, ...
    via_layers : tuple of str
        The cut layer of each via id (index ``id - 1``).
    """

    nets: np.ndarray
    vias: np.ndarray
    layers: dict[str, tuple[int, int]]
    cut_layers: tuple[str, ...]
    net_names: tuple[str, ...]
    via_layers: tuple[str, ...]


def _wire_nets(n_wires: int, via_wires: list[tuple[int, int]]) -> np.ndarray:
    """``[n_wires + 1]`` net id (1..n, by first wire) of every wire id (index 0: none):
    wires joined by a via share a net."""
    parent = np.arange(n_wires + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for a, b in via_wires:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(n_wires + 1)])
    _, net = np.unique(roots[1:], return_inverse=True)
    return np.concatenate([[0], net + 1]).astype(np.int32)


def procedural_circuit(
    shape: Sequence[int],
    voxel_size_m: float = 27.2e-9,
    seed: int = 0,
    *,
    n_layers: int | None = None,
    wire_width_nm: tuple[float, float] = (70.0, 140.0),
    fill: float = 0.5,
    via_probability: float = 0.5,
) -> ProceduralCircuit:
    """The nets, vias and layer slices of :func:`procedural_phantom` with the same
    arguments (the same draw)."""
    d = _draw(shape, voxel_size_m, seed, n_layers, wire_width_nm, fill, via_probability)
    wire_net = _wire_nets(int(d.wires.max()), d.via_wires)
    via_net = np.concatenate([[0], wire_net[[a for a, _ in d.via_wires]]]).astype(np.int32)
    nets = np.where(d.vias > 0, via_net[d.vias], wire_net[d.wires]).astype(np.int32)
    layers = {f"metal{k + 1}": band for k, band in enumerate(d.bands)}
    cuts = {f"via{k + 1}": (d.bands[k][1], d.bands[k + 1][0])
            for k in range(len(d.bands) - 1) if d.bands[k + 1][0] > d.bands[k][1]}
    n_nets = int(wire_net.max())
    return ProceduralCircuit(
        nets=nets, vias=d.vias, layers={**layers, **cuts}, cut_layers=tuple(cuts),
        net_names=tuple(f"net{i}" for i in range(1, n_nets + 1)),
        via_layers=tuple(f"via{k + 1}" for k in d.via_gap))

"""The circuit in a binarised reconstruction: opens, shorts, missing and spurious structures,
variation of information, via recall and precision (kernels, no MPI).

Definitions (issue 20), on a boolean metal volume ``[nz, ny, nx]``:

- **Components**: the 3-D connected components of the reconstructed metal
  (``evaluate.circuit_connectivity``: 6 = faces, the default, as current needs a face;
  18 or 26 add edges and corners). Components smaller than
  ``evaluate.circuit_min_component_voxels`` are specks and take no part in anything below.
- **Segments**: the true metal of one net inside the volume may be several pieces (it leaves
  the crop and comes back): a segment is one connected piece of one net's voxels. Judging
  segments, not nets, means a crop never counts an open that the crop itself made.
- A component and a segment **touch** when they share at least
  ``evaluate.circuit_min_overlap_voxels`` voxels.
- **Open**: a segment touched by two or more components (``opens`` counts such segments,
  ``open_pieces`` the pieces beyond the first).
- **Short**: a component touching segments of two or more different nets (``shorts`` counts
  such components, ``shorted_net_pairs`` the distinct pairs of nets they join).
- **Missing**: a segment touched by no component. **Spurious**: a component touching no
  segment.
- **Variation of information** (bits) between the true net labels and the components over
  the voxels that are metal in either (background is one more label on both sides):
  ``split = H(components | nets)`` (one net cut into several components), ``merge =
  H(nets | components)`` (several nets in one component); VI is their sum.
- **Vias**, per cut layer: a true via is **recovered** when at least
  ``evaluate.via_min_fraction`` of its voxels are reconstructed metal; recall = recovered /
  vias. Precision: of the components of the reconstructed metal inside the cut layer's z
  range (specks left out), the share that touch a true via of that layer.
- **Per metal layer**: the same opens and shorts, with segments and components taken inside
  the layer's z range only.

Without labels (a dense reconstruction as the reference) the reference's own components
play the nets (:func:`reference_labels`); there are no via figures then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hpc_adept.config import EvaluateConfig

_STRUCTURES = {6: 1, 18: 2, 26: 3}
# The settings' one home is the config section; its defaults when none is given.
_DEFAULT = EvaluateConfig()


@dataclass(frozen=True)
class Connectivity:
    """Opens, shorts, missing and spurious structures of one volume or layer."""

    segments: int
    components: int
    opens: int
    open_pieces: int
    shorts: int
    shorted_net_pairs: int
    missing: int
    spurious: int


@dataclass(frozen=True)
class ViaScore:
    """Via recovery of one cut layer."""

    vias: int
    recovered: int
    recall: float
    predicted: int
    precision: float


def components(metal: np.ndarray, criteria: EvaluateConfig) -> np.ndarray:
    """int32 labels ``[nz, ny, nx]`` of the connected components of ``metal`` (0 =
    background), specks removed and the rest numbered 1..n."""
    structure = ndimage.generate_binary_structure(3, _STRUCTURES[criteria.circuit_connectivity])
    labels, n = ndimage.label(np.asarray(metal, dtype=bool), structure=structure)
    if n == 0:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= criteria.circuit_min_component_voxels
    keep[0] = False
    renumber = np.zeros(n + 1, dtype=np.int32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return renumber[labels]


def segments(net_labels: np.ndarray, criteria: EvaluateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Connected pieces of every net: int32 segment labels ``[nz, ny, nx]`` (0 = no metal)
    and ``[n_segments + 1]`` the net id of each segment (index 0: background)."""
    structure = ndimage.generate_binary_structure(3, _STRUCTURES[criteria.circuit_connectivity])
    out = np.zeros(net_labels.shape, dtype=np.int32)
    owners = [0]
    for box_index, box in enumerate(ndimage.find_objects(net_labels), start=1):
        if box is None:
            continue
        pieces, n = ndimage.label(net_labels[box] == box_index, structure=structure)
        region = out[box]
        region[pieces > 0] = pieces[pieces > 0] + len(owners) - 1
        owners += [box_index] * n
    return out, np.asarray(owners, dtype=np.int64)


def _touching_pairs(a: np.ndarray, b: np.ndarray, min_overlap: int) -> np.ndarray:
    """``[k, 2]`` label pairs (a, b), both non-zero, sharing at least ``min_overlap``
    voxels."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), dtype=np.int64)
    pairs, counts = np.unique(np.stack([a[both], b[both]], axis=1).astype(np.int64),
                              axis=0, return_counts=True)
    return pairs[counts >= min_overlap]


def connectivity_errors(metal: np.ndarray, net_labels: np.ndarray,
                        criteria: EvaluateConfig = _DEFAULT) -> Connectivity:
    """Opens, shorts, missing and spurious structures of ``metal`` against ``net_labels``.

    Parameters
    ----------
    metal : ndarray of bool, [nz, ny, nx]
        The binarised reconstruction.
    net_labels : ndarray of int, [nz, ny, nx]
        One id > 0 per true net, 0 where there is no metal.
    criteria : EvaluateConfig
        The ``evaluate`` section: ``circuit_connectivity``, ``circuit_min_component_voxels``,
        ``circuit_min_overlap_voxels`` (and ``via_min_fraction`` for the vias); every
        function here takes it (default: the section's defaults).
    """
    if metal.shape != net_labels.shape:
        raise ValueError(f"shapes differ: {metal.shape} vs {net_labels.shape}")
    comp = components(metal, criteria)
    seg, owner = segments(np.asarray(net_labels), criteria)
    pairs = _touching_pairs(seg, comp, criteria.circuit_min_overlap_voxels)
    n_seg, n_comp = len(owner) - 1, int(comp.max())
    per_segment = np.bincount(pairs[:, 0], minlength=n_seg + 1)[1:]
    net_pairs = np.unique(np.stack([owner[pairs[:, 0]], pairs[:, 1]], axis=1), axis=0)
    nets_per_component = np.bincount(net_pairs[:, 1], minlength=n_comp + 1)[1:]
    joined = set()
    for c in np.flatnonzero(nets_per_component >= 2) + 1:
        nets = sorted(net_pairs[net_pairs[:, 1] == c, 0].tolist())
        joined |= {(p, q) for i, p in enumerate(nets) for q in nets[i + 1:]}
    return Connectivity(
        segments=n_seg, components=n_comp,
        opens=int((per_segment >= 2).sum()),
        open_pieces=int(np.maximum(per_segment - 1, 0).sum()),
        shorts=int((nets_per_component >= 2).sum()),
        shorted_net_pairs=len(joined),
        missing=int((per_segment == 0).sum()),
        spurious=int((nets_per_component == 0).sum()),
    )


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def variation_of_information(metal: np.ndarray, net_labels: np.ndarray,
                             criteria: EvaluateConfig = _DEFAULT
                             ) -> tuple[float, float]:
    """``(split, merge)`` in bits over the voxels that are metal in either labelling."""
    comp = components(metal, criteria)
    truth = np.asarray(net_labels)
    either = (comp > 0) | (truth > 0)
    if not either.any():
        return 0.0, 0.0
    joint = np.unique(np.stack([truth[either], comp[either]], axis=1).astype(np.int64),
                      axis=0, return_counts=True)[1]
    h_joint = _entropy_bits(joint)
    h_truth = _entropy_bits(np.unique(truth[either], return_counts=True)[1])
    h_comp = _entropy_bits(np.unique(comp[either], return_counts=True)[1])
    return max(h_joint - h_truth, 0.0), max(h_joint - h_comp, 0.0)


def via_scores(metal: np.ndarray, via_labels: np.ndarray, z_range: tuple[int, int],
               criteria: EvaluateConfig = _DEFAULT) -> ViaScore:
    """Recall and precision of the vias of one cut layer.

    Parameters
    ----------
    metal : ndarray of bool, [nz, ny, nx]
    via_labels : ndarray of int, [nz, ny, nx]
        One id > 0 per via instance of this cut layer (others 0).
    z_range : (start, stop)
        The cut layer's slices.
    """
    ids, sizes = np.unique(via_labels[via_labels > 0], return_counts=True)
    metal_in = np.bincount(via_labels[metal & (via_labels > 0)].ravel(),
                           minlength=int(ids.max(initial=0)) + 1)[ids]
    recovered = int((metal_in >= criteria.via_min_fraction * sizes).sum())
    z0, z1 = z_range
    comp = components(metal[z0:z1], criteria)
    n_pred = int(comp.max())
    hits = _touching_pairs(comp, via_labels[z0:z1], criteria.circuit_min_overlap_voxels)
    matched = len(np.unique(hits[:, 0]))
    return ViaScore(vias=len(ids), recovered=recovered,
                    recall=recovered / len(ids) if len(ids) else float("nan"),
                    predicted=n_pred,
                    precision=matched / n_pred if n_pred else float("nan"))


def layer_errors(metal: np.ndarray, net_labels: np.ndarray,
                 layers: Mapping[str, tuple[int, int]],
                 criteria: EvaluateConfig = _DEFAULT) -> dict[str, Connectivity]:
    """:func:`connectivity_errors` inside each metal layer's z range ``(start, stop)``."""
    return {name: connectivity_errors(metal[z0:z1], net_labels[z0:z1], criteria)
            for name, (z0, z1) in layers.items()}


def reference_labels(reference_metal: np.ndarray,
                     criteria: EvaluateConfig = _DEFAULT) -> np.ndarray:
    """Net labels of a reference without labels: its own connected components."""
    return components(reference_metal, criteria)


def _layer_vias(vias: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``vias`` with every id outside ``ids`` set to 0."""
    return np.where(np.isin(vias, ids), vias, 0)


def circuit_figures(metal: np.ndarray, nets: np.ndarray,
                    vias: np.ndarray | None = None,
                    metal_layers: Mapping[str, tuple[int, int]] | None = None,
                    cut_layers: Mapping[str, tuple[tuple[int, int], np.ndarray]] | None = None,
                    criteria: EvaluateConfig = _DEFAULT) -> dict:
    """Every circuit figure of one binarised volume, as plain values.

    Parameters
    ----------
    metal : ndarray of bool, [nz, ny, nx]
    nets : ndarray of int, [nz, ny, nx]
        True net labels (or :func:`reference_labels`).
    vias : ndarray of int, [nz, ny, nx], optional
        Via instance labels.
    metal_layers : dict of str to (start, stop), optional
        Slices of each metal layer (per-layer opens and shorts).
    cut_layers : dict of str to ((start, stop), ids), optional
        Slices and via ids (int array) of each cut layer (via recall and precision).

    Returns
    -------
    dict
        The :class:`Connectivity` fields, ``vi_split_bits``, ``vi_merge_bits``, and
        ``vias`` / ``layers``: per cut layer the :class:`ViaScore` fields, per metal layer
        the :class:`Connectivity` fields (NaN where undefined).
    """
    split, merge = variation_of_information(metal, nets, criteria)
    out = {**dataclasses.asdict(connectivity_errors(metal, nets, criteria)),
           "vi_split_bits": split, "vi_merge_bits": merge}
    out["layers"] = {name: dataclasses.asdict(e) for name, e in
                     layer_errors(metal, nets, metal_layers or {}, criteria).items()}
    out["vias"] = {}
    for name, (z_range, ids) in (cut_layers or {}).items():
        if vias is not None and len(ids):
            score = via_scores(metal, _layer_vias(vias, ids), z_range, criteria)
            out["vias"][name] = dataclasses.asdict(score)
    return out


def _centre(mask: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) voxel nearest the centroid of the largest connected piece of ``mask``."""
    pieces, n = ndimage.label(mask)
    if n > 1:
        mask = pieces == 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
    points = np.argwhere(mask)
    nearest = np.argmin(((points - points.mean(axis=0)) ** 2).sum(axis=1))
    return tuple(int(v) for v in points[nearest])


def error_sites(metal: np.ndarray, nets: np.ndarray, vias: np.ndarray | None = None,
                via_ids: np.ndarray | None = None,
                criteria: EvaluateConfig = _DEFAULT) -> dict[str, list[tuple[int, int, int]]]:
    """Where the errors are, for pictures: ``(z, y, x)`` voxels.

    ``opens``: per open segment, the largest gap (its true voxels left dielectric);
    ``shorts``: per shorting component, the largest piece of it outside the true metal
    (the bridge), else its centre; ``missed_vias``: the centre of each via of ``via_ids``
    (default: all) that is not recovered.
    """
    comp = components(metal, criteria)
    seg, owner = segments(np.asarray(nets), criteria)
    pairs = _touching_pairs(seg, comp, criteria.circuit_min_overlap_voxels)
    per_segment = np.bincount(pairs[:, 0], minlength=len(owner))
    sites: dict[str, list[tuple[int, int, int]]] = {"opens": [], "shorts": [],
                                                   "missed_vias": []}
    for s in np.flatnonzero(per_segment >= 2):
        gap = (seg == s) & ~metal
        sites["opens"].append(_centre(gap if gap.any() else seg == s))
    net_pairs = np.unique(np.stack([owner[pairs[:, 0]], pairs[:, 1]], axis=1), axis=0)
    for c in np.flatnonzero(np.bincount(net_pairs[:, 1], minlength=1) >= 2):
        bridge = (comp == c) & (nets == 0)
        sites["shorts"].append(_centre(bridge if bridge.any() else comp == c))
    if vias is not None:
        wanted = None if via_ids is None else set(np.asarray(via_ids).tolist())
        for via_id, box in enumerate(ndimage.find_objects(vias), start=1):
            if box is None or (wanted is not None and via_id not in wanted):
                continue
            voxels = vias[box] == via_id
            if metal[box][voxels].sum() < criteria.via_min_fraction * voxels.sum():
                z, y, x = _centre(voxels)
                sites["missed_vias"].append((z + box[0].start, y + box[1].start,
                                             x + box[2].start))
    return sites

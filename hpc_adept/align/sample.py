"""Which projection-matching method the data need: ``align.sample`` resolved.

An isolated sample (a crop in vacuum) is aligned with the region-only method; a region of
an extended sample (a chip far wider than the region) with the widened-volume method, blind
to each projection's phase offset and ramp (docs/extended_samples.md, "Alignment"). ``auto``
applies the test of ``recon.sample: auto`` to the border of eight evenly spaced projections
(:func:`hpc_adept.lamino.region.looks_isolated`) of ``projections.h5``; the stage stores
the kind it decided in ``aligned.h5`` (root attribute ``sample``), and ``recon.sample:
auto`` follows it there: the centre crop can cut away the empty border that made a sample
look isolated, so the two stages would otherwise decide from different windows.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hpc_adept.config import AlignConfig
from hpc_adept.lamino.region import looks_isolated

# The extended method's optical-flow eigenvalue floor under ``flow_eigen_floor: auto``
# (measured on 14 crops at 40 x 56 x 56 and two more: docs/extended_samples.md).
EXTENDED_EIGEN_FLOOR = 0.1
# ... and on the levels before the last under ``coarse_flow_eigen_floor: auto`` (the same
# crops: it holds the runaways of one-way wiring where they start).
EXTENDED_COARSE_EIGEN_FLOOR = 0.3


def method_for(options: AlignConfig, extended: bool) -> AlignConfig:
    """``options`` with ``sample`` fixed to the kind given and the settings it governs
    resolved: for an isolated sample the region only (``lateral_margin`` 0), for an
    extended one ``lateral_margin`` as set; ``fit_phase_plane: auto`` becomes on for an
    extended sample and off for an isolated one, ``flow_eigen_floor: auto``
    :data:`EXTENDED_EIGEN_FLOOR` and 0, ``coarse_flow_eigen_floor: auto``
    :data:`EXTENDED_COARSE_EIGEN_FLOOR` (at least the last level's) and the last level's
    (all kept where set)."""
    plane, floor = options.fit_phase_plane, options.flow_eigen_floor
    if floor == "auto":
        floor = EXTENDED_EIGEN_FLOOR if extended else 0.0
    coarse = options.coarse_flow_eigen_floor
    if coarse == "auto":
        coarse = max(EXTENDED_COARSE_EIGEN_FLOOR, floor) if extended else floor
    return dataclasses.replace(
        options,
        sample="extended" if extended else "isolated",
        lateral_margin=options.lateral_margin if extended else 0,
        fit_phase_plane=extended if plane == "auto" else plane,
        flow_eigen_floor=floor, coarse_flow_eigen_floor=coarse)


def resolve_sample(options: AlignConfig, looked_at: np.ndarray | None = None
                   ) -> AlignConfig:
    """:func:`method_for` the kind ``options.sample`` names or, under ``auto``, the kind
    that ``looked_at`` shows: the projections that ``recon.sample: auto`` reads
    (:func:`~hpc_adept.lamino.region.sample_indices`), ``[k, nv, nu]`` float; extended
    unless their border is empty (:func:`~hpc_adept.lamino.region.looks_isolated`)."""
    if options.sample != "auto":
        return method_for(options, options.sample == "extended")
    if looked_at is None:
        raise ValueError("resolve_sample: align.sample is auto and no projections given")
    return method_for(options, not looks_isolated(np.asarray(looked_at, dtype=np.float64)))

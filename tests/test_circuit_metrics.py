"""Circuit metrics with exact answers (issue 20): opens, shorts, missing/spurious structures,
variation of information, via recall and precision."""

from __future__ import annotations

import numpy as np
import pytest

from hpc_adept.config import EvaluateConfig
from hpc_adept.errors import ConfigError
from hpc_adept.metrics.circuit import (
    connectivity_errors,
    layer_errors,
    reference_labels,
    variation_of_information,
    via_scores,
)

SHAPE = (12, 24, 40)
METAL1, CUT1, METAL2 = (1, 4), (4, 6), (6, 9)


def _circuit() -> tuple[np.ndarray, np.ndarray, dict]:
    """Three nets: two parallel metal1 wires (nets 1, 2), net 1 going up to a metal2 wire by
    two vias (via ids 1, 2); three more vias (3-5) on net 2's wire going up to metal2 stubs;
    net 3 a metal2 wire of its own."""
    nets = np.zeros(SHAPE, dtype=np.int32)
    vias = np.zeros(SHAPE, dtype=np.int32)
    nets[1:4, 4:7, 2:38] = 1  # metal1 wire of net 1
    nets[1:4, 14:17, 2:38] = 2  # metal1 wire of net 2
    nets[6:9, 4:7, 2:20] = 1  # metal2 wire of net 1
    nets[6:9, 9:12, 2:38] = 3  # metal2 wire of net 3
    for via_id, x in ((1, 5), (2, 15)):
        nets[4:6, 4:7, x:x + 3] = 1
        vias[4:6, 4:7, x:x + 3] = via_id
    for via_id, x in ((3, 5), (4, 20), (5, 30)):
        nets[4:9, 14:17, x:x + 3] = 2
        vias[4:6, 14:17, x:x + 3] = via_id
    return nets, vias, {"metal1": METAL1, "metal2": METAL2}


def test_a_perfect_reconstruction_has_no_errors():
    nets, vias, layers = _circuit()
    metal = nets > 0
    errors = connectivity_errors(metal, nets)
    assert (errors.opens, errors.shorts, errors.missing, errors.spurious) == (0, 0, 0, 0)
    assert errors.segments == 3 and errors.components == 3
    assert variation_of_information(metal, nets)[0] == 0.0
    score = via_scores(metal, vias, CUT1)
    assert (score.vias, score.recovered, score.recall, score.precision) == (5, 5, 1.0, 1.0)
    assert all(e.opens == 0 and e.shorts == 0 for e in layer_errors(metal, nets, layers).values())


def test_a_two_voxel_gap_is_one_open():
    nets, _, layers = _circuit()
    metal = nets > 0
    metal[1:4, 14:17, 25:27] = False  # cut net 2's wire
    errors = connectivity_errors(metal, nets)
    assert (errors.opens, errors.open_pieces, errors.shorts) == (1, 1, 0)
    per_layer = layer_errors(metal, nets, layers)
    assert per_layer["metal1"].opens == 1 and per_layer["metal2"].opens == 0


def test_a_bridge_is_one_short():
    nets, _, layers = _circuit()
    metal = nets > 0
    metal[2, 7:14, 30] = True  # bridge the two metal1 wires
    errors = connectivity_errors(metal, nets)
    assert (errors.shorts, errors.shorted_net_pairs, errors.opens) == (1, 1, 0)
    assert layer_errors(metal, nets, layers)["metal1"].shorts == 1
    split, merge = variation_of_information(metal, nets)
    assert split == 0.0 and merge > 0.0


def test_removing_one_via_lowers_the_recall_by_one_over_the_vias():
    nets, vias, _ = _circuit()
    metal = nets > 0
    full = via_scores(metal, vias, CUT1)
    metal[vias == 4] = False
    fewer = via_scores(metal, vias, CUT1)
    assert fewer.recovered == full.recovered - 1
    assert fewer.recall == pytest.approx(full.recall - 1 / full.vias, abs=0)
    assert fewer.precision == 1.0


def test_missing_spurious_and_specks():
    nets, _, _ = _circuit()
    metal = nets > 0
    metal[nets == 3] = False  # net 3 gone
    metal[10, 20:23, 30:33] = True  # a spurious 9-voxel blob
    metal[10, 0, 0] = True  # a 1-voxel speck: ignored
    errors = connectivity_errors(metal, nets)
    assert (errors.missing, errors.spurious) == (1, 1)


def test_a_net_the_crop_cuts_in_two_is_no_open():
    nets = np.zeros((4, 10, 20), dtype=np.int32)
    nets[1:3, 2:4, 0:20] = 1
    nets[1:3, 6:8, 0:20] = 1  # the same net, joined outside the crop
    errors = connectivity_errors(nets > 0, nets)
    assert (errors.segments, errors.opens, errors.shorts) == (2, 0, 0)


def test_variation_of_information_of_a_split_in_halves_is_one_bit():
    nets = np.zeros((4, 6, 40), dtype=np.int32)
    nets[1:3, 2:4, 0:40] = 7
    metal = nets > 0
    metal[:, :, 20] = False  # two pieces of 19 and 20 columns: nearly one bit
    split, merge = variation_of_information(metal, nets)
    n0, n1, n_gap = 4 * 20, 4 * 19, 4
    p = np.array([n0, n1, n_gap]) / (n0 + n1 + n_gap)
    assert split == pytest.approx(float(-(p * np.log2(p)).sum()), rel=1e-12)
    assert merge == pytest.approx(0.0, abs=1e-12)


def test_reference_labels_make_a_dense_reference_its_own_truth():
    nets, _, _ = _circuit()
    reference = nets > 0
    labels = reference_labels(reference)
    assert connectivity_errors(reference, labels).opens == 0
    cut = reference.copy()
    cut[1:4, 14:17, 25:27] = False
    assert connectivity_errors(cut, labels).opens == 1


def test_criteria_are_checked():
    with pytest.raises(ConfigError, match="circuit_connectivity"):
        EvaluateConfig(circuit_connectivity=8).check()
    with pytest.raises(ConfigError, match="via_min_fraction"):
        EvaluateConfig(via_min_fraction=0.0).check()
    with pytest.raises(ConfigError, match="circuit_min_overlap_voxels"):
        EvaluateConfig(circuit_min_overlap_voxels=0).check()


def test_the_criteria_are_the_evaluate_section():
    nets, _, _ = _circuit()
    metal = nets > 0
    metal[1:4, 14:17, 25:27] = False  # a gap of two columns ...
    metal[1, 14, 25] = metal[2, 15, 26] = True  # ... crossed by two voxels meeting at a corner
    assert connectivity_errors(metal, nets, EvaluateConfig()).opens == 1
    assert connectivity_errors(metal, nets, EvaluateConfig(circuit_connectivity=18)).opens == 1
    assert connectivity_errors(metal, nets, EvaluateConfig(circuit_connectivity=26)).opens == 0

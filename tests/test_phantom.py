"""Tests of hpc_adept.phantom: LEF/DEF readers, rasteriser, procedural phantom, materials.

Tests marked by the ``ic_data`` fixture read the real gcd/Nangate45 layout from
``<repo>/../shared/data/ic`` and are skipped when it is absent; the others use
small LEF/DEF files written here.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from hpc_adept.phantom import (
    KIND_SPECIAL_WIRE,
    KIND_WIRE,
    Layout,
    RoutingLayer,
    Technology,
    copper_delta_contrast,
    ground_truth_volume,
    layer_z_ranges,
    load_layout,
    make_phantom,
    phase_per_voxel,
    procedural_phantom,
    rasterise_boxes,
    rasterise_layout,
    read_def,
    read_lef,
    wavelength_m,
)

IC_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ic"
DEF_PATH = IC_DIR / "gcd_nangate45.def"
LEF_PATH = IC_DIR / "Nangate45_tech.lef"
VOXEL = 27.2e-9
D_UM = VOXEL * 1e6

# README table: layer -> (direction, width, thickness, height, signal segments)
README = {
    "metal1": ("HORIZONTAL", 0.07, 0.13, 0.37, 18),
    "metal2": ("VERTICAL", 0.07, 0.14, 0.62, 1220),
    "metal3": ("HORIZONTAL", 0.07, 0.14, 0.88, 702),
    "metal4": ("VERTICAL", 0.14, 0.28, 1.14, 7),
    "metal5": ("HORIZONTAL", 0.14, 0.28, 1.71, 1),
    "metal6": ("VERTICAL", 0.14, 0.28, 2.28, 6),
    "metal7": ("HORIZONTAL", 0.40, 0.80, 2.85, 3),
}


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ic_data():
    """(Layout, Technology) of the real layout, or skip."""
    if not (DEF_PATH.is_file() and LEF_PATH.is_file()):
        pytest.skip(f"IC layout data not found in {IC_DIR} (gcd_nangate45.def, Nangate45_tech.lef)")
    return load_layout(DEF_PATH, LEF_PATH)


SMALL_LEF = """\
VERSION 5.6 ;
UNITS
  DATABASE MICRONS 1000 ;
END UNITS
# a two-metal test stack
LAYER m1
  TYPE ROUTING ;
  DIRECTION HORIZONTAL ;
  WIDTH 0.1 ;
  THICKNESS 0.1 ;
  HEIGHT 0.2 ;
END m1
LAYER v1
  TYPE CUT ;
  WIDTH 0.1 ;
END v1
LAYER m2
  TYPE ROUTING ;
  DIRECTION VERTICAL ;
  WIDTH 0.2 ;
  THICKNESS 0.2 ;
  HEIGHT 0.5 ;
END m2
VIA v12 DEFAULT
  LAYER v1 ;
    RECT -0.05 -0.05 0.05 0.05 ;
  LAYER m1 ;
    RECT -0.1 -0.05 0.1 0.05 ;
  LAYER m2 ;
    RECT -0.1 -0.1 0.1 0.1 ;
END v12
END LIBRARY
"""

SMALL_DEF = """\
VERSION 5.8 ;
DESIGN t ;
UNITS DISTANCE MICRONS 1000 ;
DIEAREA ( 0 0 ) ( 10000 10000 ) ;
VIAS 1 ;
  - gen + VIARULE R + CUTSIZE 100 100 + LAYERS m1 v1 m2 + CUTSPACING 100 100
    + ENCLOSURE 50 0 0 50 + ROWCOL 1 2 ;
END VIAS
SPECIALNETS 1 ;
  - VDD ( * VDD ) + USE POWER
    + ROUTED m1 400 + SHAPE STRIPE ( 1000 5000 ) ( 9000 5000 )
    NEW m2 200 ( 2000 1000 ) ( * 3000 ) gen ;
END SPECIALNETS
NETS 1 ;
  - n1 ( a Z ) ( b A ) + USE SIGNAL
    + ROUTED m1 ( 1000 1000 ) ( 3000 * ) v12 ( * 4000 )
    NEW m1 ( 5000 1000 0 ) ( 6000 * 50 ) ;
END NETS
END DESIGN
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture()
def small(tmp_path):
    """(Layout, Technology, lef path, def path) of the hand-written test design."""
    lef = _write(tmp_path, "small.lef", SMALL_LEF)
    dfile = _write(tmp_path, "small.def", SMALL_DEF)
    tech = read_lef(lef)
    return read_def(dfile, tech), tech, lef, dfile


def _sorted_boxes(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


# --------------------------------------------------------------------------------------
# LEF / DEF on small hand-written files
# --------------------------------------------------------------------------------------


def test_small_lef(small):
    _, tech, _, _ = small
    assert tech.stack == ("m1", "v1", "m2")
    assert tech.routing["m2"] == RoutingLayer("m2", "VERTICAL", 0.2, 0.2, 0.5)
    assert (tech.cuts["v1"].below, tech.cuts["v1"].above) == ("m1", "m2")
    assert dict(tech.vias["v12"].shapes)["m1"] == (-0.1, -0.05, 0.1, 0.05)
    zr = layer_z_ranges(tech)
    assert zr["m1"] == pytest.approx((0.2, 0.3))
    assert zr["v1"] == pytest.approx((0.3, 0.5))
    assert zr["m2"] == pytest.approx((0.5, 0.7))


def test_small_def_geometry(small):
    layout, _, _, _ = small
    assert layout.die_area_um == (0.0, 0.0, 10.0, 10.0)
    assert layout.segment_counts() == {"m1": 2, "m2": 1}
    assert layout.segment_counts(KIND_SPECIAL_WIRE) == {"m1": 1, "m2": 1}
    assert (layout.n_vias, layout.n_special_vias) == (1, 1)
    # regular wires: default width, half-width extension unless explicit; via switches layer
    m1 = _sorted_boxes(layout.layer_boxes("m1", (KIND_WIRE,)))
    np.testing.assert_allclose(m1, [[0.95, 0.95, 3.05, 1.05], [5.0, 0.95, 6.05, 1.05]])
    m2 = layout.layer_boxes("m2", (KIND_WIRE,))
    np.testing.assert_allclose(m2, [[2.9, 0.9, 3.1, 4.1]])
    # special wires: explicit width, flush ends
    np.testing.assert_allclose(
        layout.layer_boxes("m1", (KIND_SPECIAL_WIRE,)), [[1.0, 4.8, 9.0, 5.2]]
    )
    np.testing.assert_allclose(
        layout.layer_boxes("m2", (KIND_SPECIAL_WIRE,)), [[1.9, 1.0, 2.1, 3.0]]
    )
    # the generated via at (2, 3): 2 cuts, m1 pad grown 0.05 in x, m2 pad 0.05 in y
    cuts = _sorted_boxes(layout.layer_boxes("v1"))
    np.testing.assert_allclose(
        cuts,
        [[1.85, 2.95, 1.95, 3.05], [2.05, 2.95, 2.15, 3.05], [2.95, 0.95, 3.05, 1.05]],
        atol=1e-12,
    )
    assert any(np.allclose(b, [1.8, 2.95, 2.2, 3.05]) for b in layout.layer_boxes("m1"))
    assert any(np.allclose(b, [1.85, 2.9, 2.15, 3.1]) for b in layout.layer_boxes("m2"))


def test_small_layout_raster_contract(small):
    layout, tech, _, _ = small
    d_m = 0.05e-6
    # crop from (0.9, 0.9) um: the m2 wire [2.9, 3.1] x [0.9, 4.1] is voxels i 40..43
    vol = rasterise_layout(layout, tech, (0.9, 0.9), (16, 70, 60), d_m, supersample=2)
    assert vol.dtype == np.float32 and vol.shape == (16, 70, 60)
    k = 12  # height 0.6-0.65 um: inside m2 [0.5, 0.7]
    assert np.all(vol[k, 0:64, 40:44] == 1.0)
    assert vol[k, 0:64, 39].max() == 0.0 and vol[k, 0:64, 44].max() == 0.0
    assert vol[k, 64:, 40:44].max() == 0.0
    # the via cut at (3, 1) fills the gap between m1 and m2
    np.testing.assert_array_equal(vol[6:10, 1, 41:43], 1.0)


def _malformed(tmp_path: Path, name: str, text: str, tech: Technology | None):
    path = _write(tmp_path, name, text)
    with pytest.raises(ValueError) as info:
        if tech is None:
            read_lef(path)
        else:
            read_def(path, tech)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_malformed_lef(tmp_path):
    msg = _malformed(tmp_path, "bad1.lef", SMALL_LEF.replace("WIDTH 0.2 ;", "WIDTH abc ;"), None)
    assert ":20:" in msg
    _malformed(tmp_path, "bad2.lef", SMALL_LEF.replace("END m2\n", ""), None)
    _malformed(tmp_path, "bad3.lef", SMALL_LEF[: SMALL_LEF.index("END m2")], None)


def test_malformed_def(tmp_path, small):
    _, tech, _, _ = small
    msg = _malformed(tmp_path, "bad1.def", SMALL_DEF.replace("( 3000 * )", "( 3000 x1 )"), tech)
    assert ":16:" in msg
    _malformed(tmp_path, "bad2.def", SMALL_DEF.replace(" v12 ", " nosuchvia "), tech)
    _malformed(tmp_path, "bad3.def", SMALL_DEF.replace("END NETS\nEND DESIGN\n", ""), tech)
    _malformed(tmp_path, "bad4.def", SMALL_DEF.replace("ROUTED m1 (", "ROUTED m9 ("), tech)
    _malformed(tmp_path, "bad5.def", SMALL_DEF.replace("( 6000 * 50 )", "( 6000 2000 )"), tech)
    with pytest.raises(ValueError, match="missing.def"):
        read_def(tmp_path / "missing.def", tech)


# --------------------------------------------------------------------------------------
# the real layout
# --------------------------------------------------------------------------------------


def test_lef_nangate45(ic_data):
    _, tech = ic_data
    for name, (direction, width, thickness, height, _) in README.items():
        layer = tech.routing[name]
        assert layer.direction == direction
        assert (layer.width_um, layer.thickness_um, layer.height_um) == pytest.approx(
            (width, thickness, height)
        )
    assert [c for c in tech.stack if c in tech.cuts][:6] == [f"via{i}" for i in range(1, 7)]
    assert tech.cuts["via3"].below == "metal3" and tech.cuts["via3"].above == "metal4"
    assert dict(tech.vias["via1_4"].shapes)["via1"] == pytest.approx((-0.035, -0.035, 0.035, 0.035))


def test_def_counts(ic_data):
    layout, _ = ic_data
    assert layout.die_area_um == pytest.approx((0.0, 0.0, 100.13, 100.8))
    counts = layout.segment_counts()
    for name, (*_, expected) in README.items():
        assert abs(counts.get(name, 0) - expected) <= max(1, 0.02 * expected), name
    assert abs(sum(counts.values()) - 1957) <= 20
    assert abs(layout.n_vias - 2334) <= 20
    special = layout.segment_counts(KIND_SPECIAL_WIRE)
    assert special == {"metal1": 58, "metal4": 3, "metal7": 4}
    for name, width in (("metal1", 0.17), ("metal4", 0.48), ("metal7", 1.4)):
        b = layout.layer_boxes(name, (KIND_SPECIAL_WIRE,))
        np.testing.assert_allclose(np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), width)
    # the generated power vias are expanded: via1_960x340 has 3 cuts of 0.07 um
    assert layout.via_usage["via1_960x340"] == 87
    assert (
        len(layout.layer_boxes("via1"))
        == 87 * 3 + layout.via_usage["via1_4"] + (layout.via_usage["via1_7"])
    )


def _longest_wire(layout: Layout, layer: str) -> np.ndarray:
    b = layout.layer_boxes(layer, (KIND_WIRE,))
    length = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    return b[np.argmax(length)]


@pytest.mark.parametrize("layer", list(README))
def test_raster_layer_heights(ic_data, layer):
    layout, tech = ic_data
    box = _longest_wire(layout, layer)
    cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
    n = 16
    vol = rasterise_layout(layout, tech, (cx - n / 2 * D_UM, cy - n / 2 * D_UM), (144, n, n), VOXEL)
    column = vol[:, n // 2, n // 2]
    _, _, thickness, height, _ = README[layer]
    k_mid = int((height + thickness / 2) / D_UM)
    assert column[k_mid] == 1.0
    lo = hi = k_mid
    while lo > 0 and column[lo - 1] > 0:
        lo -= 1
    while hi < len(column) - 1 and column[hi + 1] > 0:
        hi += 1
    assert abs(lo * D_UM - height) <= D_UM, (lo, hi)
    assert abs((hi + 1) * D_UM - (height + thickness)) <= D_UM, (lo, hi)


def _isolated_wire(layout: Layout, layer: str, vertical: bool) -> tuple[float, float]:
    """Centre (x, y) of a long wire with no other shape within 0.15 um of its middle um."""
    boxes = layout.layer_boxes(layer)
    for b in layout.layer_boxes(layer, (KIND_WIRE,)):
        length = (b[3] - b[1]) if vertical else (b[2] - b[0])
        if length < 1.5:
            continue
        cx, cy = 0.5 * (b[0] + b[2]), 0.5 * (b[1] + b[3])
        hx, hy = (0.15, 0.5) if vertical else (0.5, 0.15)
        hits = (
            (boxes[:, 0] < cx + hx)
            & (boxes[:, 2] > cx - hx)
            & (boxes[:, 1] < cy + hy)
            & (boxes[:, 3] > cy - hy)
        )
        if np.count_nonzero(hits) == 1:
            return cx, cy
    raise AssertionError(f"no isolated wire on {layer}")


@pytest.mark.parametrize("layer", ["metal2", "metal3"])
def test_raster_wire_width(ic_data, layer):
    layout, tech = ic_data
    vertical = tech.routing[layer].direction == "VERTICAL"
    cx, cy = _isolated_wire(layout, layer, vertical)
    n_along, n_across = 30, 10
    ny, nx = (n_along, n_across) if vertical else (n_across, n_along)
    origin = (cx - nx / 2 * D_UM, cy - ny / 2 * D_UM)
    vol = rasterise_layout(layout, tech, origin, (40, ny, nx), VOXEL)
    _, _, thickness, height, _ = README[layer]
    plane = vol[int((height + thickness / 2) / D_UM)]
    across = plane.sum(axis=1) if vertical else plane.sum(axis=0)
    expected = 0.07 / D_UM  # 2.57 voxels
    assert abs(across.mean() - expected) <= 1.0
    assert abs(across.mean() - expected) <= 0.3  # anti-aliased width is accurate
    binary = (plane >= 0.5).sum(axis=1 if vertical else 0)
    assert abs(binary.mean() - expected) <= 1.0


def test_make_phantom_layout(ic_data):
    vol = make_phantom("layout", (144, 40, 40), VOXEL, layout_def=DEF_PATH, layout_lef=LEF_PATH)
    assert vol.dtype == np.float32 and vol.shape == (144, 40, 40)
    assert 0.0 <= vol.min() and vol.max() <= 1.0 and vol.max() == 1.0
    # no metal below metal1 nor above metal7
    assert vol[: int(0.37 / D_UM) - 1].max() == 0.0
    assert vol[int(3.65 / D_UM) + 2 :].max() == 0.0


# --------------------------------------------------------------------------------------
# rasteriser
# --------------------------------------------------------------------------------------


def test_supersampling_half_voxel_and_union():
    half = rasterise_boxes(np.array([[0.0, 0.0, 0.0, 0.5, 1.0, 1.0]]), (1, 1, 2))
    np.testing.assert_array_equal(half, [[[0.5, 0.0]]])
    quarter = rasterise_boxes(np.array([[0.0, 0.5, 0.0, 0.5, 1.0, 1.0]]), (1, 1, 1))
    assert quarter[0, 0, 0] == 0.25
    overlapping = np.array([[0.0, 0.0, 0.0, 0.5, 1.0, 1.0], [0.25, 0.0, 0.0, 0.75, 1.0, 1.0]])
    np.testing.assert_array_equal(rasterise_boxes(overlapping, (1, 1, 1)), [[[0.75]]])
    twice = np.array([[0.0, 0.0, 0.0, 0.5, 1.0, 1.0]] * 3)
    np.testing.assert_array_equal(rasterise_boxes(twice, (1, 1, 1)), [[[0.5]]])
    big = rasterise_boxes(np.array([[-5.0, -5.0, -5.0, 50.0, 50.0, 50.0]]), (2, 3, 4))
    np.testing.assert_array_equal(big, 1.0)


def test_rasterise_slabs_match_and_bounds():
    rng = np.random.default_rng(1)
    lo = rng.uniform(-2, 12, (40, 3))
    boxes = np.concatenate([lo, lo + rng.uniform(0.1, 4, (40, 3))], axis=1)
    ref = rasterise_boxes(boxes, (11, 12, 13), supersample=4)
    small_slabs = rasterise_boxes(boxes, (11, 12, 13), supersample=4, max_slab_bytes=1)
    np.testing.assert_array_equal(ref, small_slabs)
    assert ref.min() >= 0.0 and ref.max() <= 1.0
    # total volume of one box inside the grid is preserved by the anti-aliasing
    one = rasterise_boxes(np.array([[1.3, 2.6, 0.4, 5.1, 4.2, 3.9]]), (5, 6, 7), supersample=8)
    assert one.sum() == pytest.approx(3.8 * 1.6 * 3.5, rel=0.05)


# --------------------------------------------------------------------------------------
# procedural phantom and materials
# --------------------------------------------------------------------------------------


def test_procedural_phantom():
    shape = (48, 40, 40)
    a = procedural_phantom(shape, VOXEL, seed=3)
    b = procedural_phantom(shape, VOXEL, seed=3)
    c = procedural_phantom(shape, VOXEL, seed=4)
    assert a.dtype == np.float32 and a.shape == shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0 and 0.01 < a.mean() < 0.5
    profile = a.mean(axis=(1, 2))
    wiring = profile > 0.05  # wire layers; via gaps are much sparser
    n_layers = int(np.count_nonzero(wiring[1:] & ~wiring[:-1]) + wiring[0])
    assert n_layers >= 3
    # wires alternate direction: layer 0 runs along x, layer 1 along y
    z = np.flatnonzero(wiring)
    first = a[z[0]]
    assert first.any(axis=1).mean() < first.any(axis=0).mean()


def test_make_phantom_procedural_and_errors():
    vol = make_phantom("procedural", (24, 20, 20), VOXEL, seed=1)
    np.testing.assert_array_equal(vol, procedural_phantom((24, 20, 20), VOXEL, seed=1))
    with pytest.raises(ValueError, match="kind"):
        make_phantom("blocks", (4, 4, 4), VOXEL)
    with pytest.raises(ValueError, match="layout_def"):
        make_phantom("layout", (4, 4, 4), VOXEL)


def test_materials():
    assert wavelength_m(6200.0) == pytest.approx(1.99974e-10, rel=1e-4)
    assert copper_delta_contrast(6200.0) == pytest.approx(3.0e-5)
    assert copper_delta_contrast(12400.0) == pytest.approx(7.5e-6)
    phi = phase_per_voxel(6200.0, VOXEL)
    assert phi == pytest.approx(0.026, rel=0.02)
    occ = np.zeros((2, 3, 4), np.float32)
    occ[1, 2, 3], occ[0, 0, 0] = 1.0, 0.5
    gt = ground_truth_volume(occ, 6200.0, VOXEL)
    assert gt.dtype == np.float32 and gt.shape == occ.shape
    assert gt[1, 2, 3] == pytest.approx(phi) and gt[0, 0, 0] == pytest.approx(phi / 2)
    with pytest.raises(ValueError):
        wavelength_m(0.0)


def test_small_layout_circuit_truth(small):
    """Issue 20: each box carries its net and via instance; the label volumes agree with the
    occupancy and the layers' slices."""
    from hpc_adept.phantom.layout import layer_slices, rasterise_circuit

    layout, tech, _, _ = small
    assert layout.net_names == ("VDD", "n1")
    d_m = 0.05e-6
    shape = (16, 70, 60)
    vol = rasterise_layout(layout, tech, (0.9, 0.9), shape, d_m, supersample=2)
    nets, vias = rasterise_circuit(layout, tech, (0.9, 0.9), shape, d_m)
    assert nets.dtype == np.int32 and vias.shape == shape
    np.testing.assert_array_equal(nets[12, 0:64, 40:44], 2)  # n1's m2 wire
    np.testing.assert_array_equal(vias[6:10, 1, 41:43], 2)  # n1's v12, the second via placed
    assert set(np.unique(vias[vias > 0]).tolist()) == {1, 2}  # VDD's generated via, then v12
    assert np.all(nets[vias > 0] > 0)
    assert np.all(nets[vol == 1.0] > 0) and np.all(vol[nets > 0] > 0)
    assert layer_slices(tech, d_m, shape[0]) == {"m1": (4, 6), "v1": (6, 10), "m2": (10, 14)}
    assert layer_slices(tech, d_m, 8) == {"m1": (4, 6), "v1": (6, 8)}
    sub = layout.select(layers=("v1",))
    assert set(sub.nets) == {"v1"} and len(sub.nets["v1"]) == len(sub.boxes["v1"])


def test_real_layout_circuit_truth(ic_data):
    from hpc_adept.phantom.layout import centred_crop_origin, rasterise_circuit

    layout, tech = ic_data
    shape, d_m = (40, 56, 56), 27.2e-9
    origin = centred_crop_origin(layout, shape, d_m)
    vol = rasterise_layout(layout, tech, origin, shape, d_m, supersample=2)
    nets, vias = rasterise_circuit(layout, tech, origin, shape, d_m)
    assert len(np.unique(nets)) > 4 and len(np.unique(vias)) > 5
    assert np.all(nets[vias > 0] > 0)
    full = vol >= 0.75
    assert np.count_nonzero(nets[full]) / np.count_nonzero(full) > 0.99


@pytest.mark.parametrize("shape, seed", [((32, 40, 40), 0), ((64, 48, 48), 3), ((24, 30, 36), 5)])
def test_procedural_circuit_labels_its_wires_and_vias(shape, seed):
    """Issue 20: the procedural phantom's nets come from its design (wires joined by vias);
    with its layers apart they are exactly the volume's face-connected pieces."""
    from scipy import ndimage

    from hpc_adept.phantom.procedural import procedural_circuit

    occ = procedural_phantom(shape, 27.2e-9, seed)
    c = procedural_circuit(shape, 27.2e-9, seed)
    np.testing.assert_array_equal(c.nets > 0, occ > 0)  # the same draw
    assert c.nets.dtype == c.vias.dtype == np.int32
    pieces, n = ndimage.label(occ > 0)
    pairs = np.unique(np.stack([c.nets[pieces > 0], pieces[pieces > 0]], axis=1), axis=0)
    assert len(pairs) == n == int(c.nets.max()) == len(c.net_names)
    assert len(c.via_layers) == int(c.vias.max()) > 0
    assert np.all(c.nets[c.vias > 0] > 0)
    for via_id, name in enumerate(c.via_layers, start=1):
        k0, k1 = c.layers[name]
        z = np.flatnonzero((c.vias == via_id).any(axis=(1, 2)))
        assert name in c.cut_layers and k0 <= z.min() and z.max() < k1
    metal = [c.layers[k] for k in c.layers if k not in c.cut_layers]
    assert all(a[1] <= b[0] for a, b in zip(metal[:-1], metal[1:], strict=True))

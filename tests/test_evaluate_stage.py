"""The evaluate stage end to end on tiny hand-made run directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage

from hpc_adept.cli import main
from hpc_adept.io import write_ground_truth, write_h5_atomic, write_volume

from .conftest import adept
from .test_metrics import blocky_occupancy, flip_voxels

SHAPE = (12, 16, 16)
VOXEL = 0.3e-6  # layer centres 0.15 ... 3.45 um: layers 9, 10, 11 lie above 2.75 um
EMPTY_LAYERS = (0, 6)
FLIPS = {2: 5, 9: 3, 6: 4}  # layer 6 is empty in the reference, hence excluded


def reference_occupancy() -> np.ndarray:
    occupancy = blocky_occupancy(SHAPE, seed=21, fraction=0.35)
    for k in EMPTY_LAYERS:
        occupancy[k] = False
    return occupancy


def write_config(work: Path, **evaluate) -> Path:
    cfg = {
        "output": {"dir": str(work / "run")},
        "recon": {"methods": ["fbp", "dip"], "volume_shape": list(SHAPE)},
        "evaluate": {"reference": str(work / "ground_truth.h5"), **evaluate},
        "runtime": {"device": "cpu", "seed": 3},
    }
    path = work / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def flipped_run(tmp_path) -> tuple[Path, dict]:
    """Reference + a reconstruction whose binarisation differs in exactly FLIPS voxels."""
    rng = np.random.default_rng(22)
    occupancy = reference_occupancy()
    ref_volume = (0.026 * occupancy + 0.001 * rng.standard_normal(SHAPE)).astype(np.float32)
    write_ground_truth(tmp_path / "ground_truth.h5", ref_volume, occupancy, VOXEL)
    estimate = flip_voxels(occupancy, FLIPS, seed=23)
    rec = (0.02 + 0.03 * estimate + 0.002 * rng.standard_normal(SHAPE)).astype(np.float32)
    write_volume(tmp_path / "run" / "volume_fbp.h5", rec, VOXEL)
    return tmp_path, {"occupancy": occupancy, "ref": ref_volume, "rec": rec}


def test_metrics_json_exact_ber_and_independent_pcc(flipped_run, capsys):
    work, arrays = flipped_run
    config = write_config(work, register=False)
    assert main(["evaluate", "-c", str(config)]) == 0
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert list(metrics) == ["fbp"]  # dip has no volume: skipped with a warning
    assert "no volume for dip" in capsys.readouterr().err
    fbp = metrics["fbp"]
    per_layer = SHAPE[1] * SHAPE[2]
    kept = [k for k in range(SHAPE[0]) if k not in EMPTY_LAYERS]
    # BER known exactly: flipped voxels over the voxels of the layers kept.
    assert fbp["ber"] == (FLIPS[2] + FLIPS[9]) / (len(kept) * per_layer)
    assert fbp["ber_all_layers"] == sum(FLIPS.values()) / (SHAPE[0] * per_layer)
    assert fbp["n_voxels"] == len(kept) * per_layer
    assert [e["index"] for e in fbp["excluded_layers"]] == list(EMPTY_LAYERS)
    assert "metal fraction" in fbp["excluded_layers"][0]["reason"]
    layers = fbp["layers"]
    assert layers["index"] == list(range(SHAPE[0]))
    assert layers["excluded"] == [k in EMPTY_LAYERS for k in range(SHAPE[0])]
    assert layers["z_um"] == pytest.approx([(k + 0.5) * 0.3 for k in range(SHAPE[0])])
    assert layers["ber"] == [FLIPS.get(k, 0) / per_layer for k in range(SHAPE[0])]
    # PCC against an independent float64 computation on the same voxels.
    ref = arrays["ref"].astype(np.float64)
    rec = arrays["rec"].astype(np.float64)
    assert fbp["pcc"] == pytest.approx(
        np.corrcoef(ref[kept].ravel(), rec[kept].ravel())[0, 1], abs=1e-12)
    assert fbp["pcc_all_layers"] == pytest.approx(
        np.corrcoef(ref.ravel(), rec.ravel())[0, 1], abs=1e-12)
    assert layers["pcc"][3] == pytest.approx(np.corrcoef(ref[3].ravel(), rec[3].ravel())[0, 1],
                                             abs=1e-12)
    # Per range (the paper's split at 2.75 um).
    assert list(fbp["ranges"]) == ["z < 2.75 um", "z >= 2.75 um"]
    below, above = fbp["ranges"].values()
    assert (below["z_min_um"], below["z_max_um"], above["z_max_um"]) == (0.0, 2.75, None)
    assert (below["n_layers"], below["n_layers_excluded"]) == (7, 2)
    assert above["n_layers"] == 3
    assert below["ber"] == FLIPS[2] / (7 * per_layer)
    assert above["ber"] == FLIPS[9] / (3 * per_layer)
    assert above["pcc"] == pytest.approx(
        np.corrcoef(ref[9:].ravel(), rec[9:].ravel())[0, 1], abs=1e-12)
    # Registration off, the affine intensity fit maps 0.03-contrast onto 0.026.
    assert fbp["registration"]["shift_voxels"] == [0.0, 0.0, 0.0]
    assert fbp["intensity_fit"]["scale"] == pytest.approx(0.026 / 0.03, rel=0.05)
    assert fbp["reference"]["source"] == "occupancy"
    assert fbp["binarization"]["separated"] is True
    for name in ("metrics_layers.png", "psd_cuts.png"):
        assert (work / "run" / "figures" / name).stat().st_size > 5000


def smooth_field(shape, seed):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), 1.5, mode="wrap")


def test_registration_of_a_shifted_larger_dense_reconstruction(tmp_path):
    """A reference without /occupancy (GMM-binarised) and a shifted, larger volume."""
    field = smooth_field((16, 22, 22), seed=24)
    # Two classes with slightly soft edges, as in a dense reconstruction.
    big = ndimage.gaussian_filter(field + 2.0 * (field > 0.08), 0.7, mode="wrap")
    true_shift = (0.0, 1.0, -0.4)
    moved = np.fft.ifftn(ndimage.fourier_shift(np.fft.fftn(big), true_shift)).real
    reference = big[2:14, 3:19, 3:19]  # 12 x 16 x 16, centre (7.5, 10.5, 10.5) of big
    volume = moved[2:14, 2:20, 1:21]  # 12 x 18 x 20, the same centre
    write_h5_atomic(tmp_path / "ground_truth.h5", {"volume": reference.astype(np.float32)},
                    attrs={"voxel_size_m": VOXEL})
    write_volume(tmp_path / "run" / "volume_fbp.h5", volume, VOXEL)
    config = write_config(tmp_path, max_shift_voxels=3, z_boundaries_um=[1.0, 2.5, 50.0])
    assert main(["evaluate", "-c", str(config)]) == 0
    fbp = json.loads((tmp_path / "run" / "metrics.json").read_text())["fbp"]
    np.testing.assert_allclose(fbp["registration"]["shift_voxels"], true_shift, atol=0.05)
    assert fbp["reference"]["source"] == "gmm"
    assert fbp["reference"]["gmm"]["separated"] is True
    assert fbp["pcc"] > 0.95 and fbp["ber"] < 0.05
    # The volume is 3.6 um high: the range above 50 um holds no layer and is left out.
    assert list(fbp["ranges"]) == ["z < 1 um", "1 <= z < 2.5 um", "2.5 <= z < 50 um"]
    assert fbp["registration"]["region_shape"][1] <= 16


def bad_input_cases():
    return {
        "missing reference": ("evaluate.reference: file not found", None),
        "unset reference": ("evaluate.reference is not set", None),
        "2-D reference": ("volume: expected 3-D", None),
        "NaN volume": ("volume: contains NaN", None),
        "no volumes": ("none of volume_fbp.h5, volume_dip.h5 found", None),
        "voxel size": ("differs from the reference", None),
        "bad boundaries": ("evaluate.z_boundaries_um must be positive and increasing", None),
    }


@pytest.mark.parametrize("case", list(bad_input_cases()))
def test_bad_inputs_exit_2_one_line_no_output(flipped_run, case, capsys):
    work, arrays = flipped_run
    needle = bad_input_cases()[case][0]
    extra: list[str] = []
    config = write_config(work)
    if case == "missing reference":
        (work / "ground_truth.h5").unlink()
    elif case == "unset reference":
        extra = ["--set", "evaluate.reference=null"]
    elif case == "2-D reference":
        write_h5_atomic(work / "ground_truth.h5", {"volume": np.ones((4, 4), np.float32)},
                        attrs={"voxel_size_m": VOXEL})
    elif case == "NaN volume":
        rec = arrays["rec"].copy()
        rec[1, 2, 3] = np.nan
        write_h5_atomic(work / "run" / "volume_fbp.h5", {"volume": rec},
                        attrs={"voxel_size_m": VOXEL})
    elif case == "no volumes":
        (work / "run" / "volume_fbp.h5").unlink()
    elif case == "voxel size":
        write_volume(work / "run" / "volume_fbp.h5", arrays["rec"], 2 * VOXEL)
    elif case == "bad boundaries":
        extra = ["--set", "evaluate.z_boundaries_um=[2.0,1.0]"]
    capsys.readouterr()
    assert main(["evaluate", "-c", str(config), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (work / "run" / "metrics.json").exists()
    assert not (work / "run" / "config.yaml").exists()
    assert not (work / "run" / "figures").exists()


@pytest.mark.mpi
def test_two_ranks_write_the_same_metrics(flipped_run):
    work, _ = flipped_run
    config = write_config(work)
    assert main(["evaluate", "-c", str(config)]) == 0
    first = (work / "run" / "metrics.json").read_text()
    (work / "run" / "metrics.json").unlink()
    two = adept("evaluate", "-c", str(config), cwd=work, n_ranks=2)
    assert two.returncode == 0, two.stderr[-2000:]
    assert (work / "run" / "metrics.json").read_text() == first


# ----------------------------------------------------------------------------- circuit

CIRCUIT_SHAPE = (24, 30, 36)
CIRCUIT_VOXEL = 27.2e-9
LAYOUT_VOXEL = 54.4e-9  # the demo's: a 48-voxel crop holds 10-18 vias


@pytest.fixture(scope="module")
def simulated_truth(tmp_path_factory) -> Path:
    """``adept simulate`` of a small procedural phantom: its ground_truth.h5 (with labels)."""
    work = tmp_path_factory.mktemp("circuit")
    cfg = {"data": {"path": str(work / "data")}, "output": {"dir": str(work / "sim")},
           # isolated: every net lies whole inside the volume (no net joined outside it)
           "simulate": {"phantom": "procedural", "sample": "isolated",
                        "volume_shape": list(CIRCUIT_SHAPE),
                        "voxel_size_m": CIRCUIT_VOXEL, "n_angles": 4, "seed": 5,
                        "scans": False, "write_projections": True},
           "runtime": {"device": "cpu"}}
    (work / "sim.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["simulate", "-c", str(work / "sim.yaml")]) == 0
    return work / "data" / "ground_truth.h5"


def _defects(nets: np.ndarray, vias: np.ndarray, metal1: tuple[int, int],
             via_id: int = 1) -> np.ndarray:
    """The true metal with via ``via_id`` removed, a 2-voxel gap in the longest metal1 wire
    and a bridge between two wires of different nets in metal1."""
    metal = nets > 0
    metal[vias == via_id] = False
    z0, z1 = metal1
    pieces, _ = ndimage.label(metal[z0:z1].any(axis=0))
    longest = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
    xs = np.flatnonzero(longest.any(axis=0))
    x = int(xs[len(xs) // 2])
    metal[z0:z1, :, x:x + 2] &= ~longest[None, :, x:x + 2]
    column = nets[z0, :, xs[0]]
    for y in np.flatnonzero((column[:-1] > 0) & (column[1:] == 0)):
        above = np.flatnonzero(column[y + 1:] > 0)
        if len(above) and column[y + 1 + above[0]] != column[y]:
            metal[z0, y + 1:y + 1 + above[0], xs[0]] = True
            break
    return metal


def _independent_count(metal: np.ndarray, nets: np.ndarray) -> dict[str, int]:
    """Opens, shorts, missing, spurious by direct loops over nets and components
    (6-connectivity, specks < 4 voxels, touching = 2 shared voxels)."""
    comp, n = ndimage.label(metal)
    sizes = np.bincount(comp.ravel())
    touching = {}  # (net, piece) -> components touching it
    for net in np.unique(nets[nets > 0]):
        pieces, n_pieces = ndimage.label(nets == net)
        for p in range(1, n_pieces + 1):
            shared = np.bincount(comp[pieces == p], minlength=n + 1)
            touching[(int(net), p)] = {c for c in range(1, n + 1)
                                       if shared[c] >= 2 and sizes[c] >= 4}
    nets_of = {c: {net for (net, _), cs in touching.items() if c in cs}
               for c in range(1, n + 1) if sizes[c] >= 4}
    return {"opens": sum(len(cs) >= 2 for cs in touching.values()),
            "missing": sum(len(cs) == 0 for cs in touching.values()),
            "shorts": sum(len(ns) >= 2 for ns in nets_of.values()),
            "spurious": sum(len(ns) == 0 for ns in nets_of.values()),
            "components": len(nets_of), "segments": len(touching)}


def test_circuit_figures_agree_with_an_independent_count(simulated_truth, tmp_path):
    from hpc_adept.io import read_ground_truth

    truth = read_ground_truth(simulated_truth)
    circuit = truth.circuit
    assert circuit is not None and int(circuit.vias.max()) >= 2
    metal = _defects(circuit.nets, circuit.vias, circuit.layers["metal1"])
    rng = np.random.default_rng(4)
    write_volume(tmp_path / "run" / "volume_fbp.h5",
                 (0.03 * metal + 0.001 * rng.standard_normal(metal.shape)).astype(np.float32),
                 CIRCUIT_VOXEL)
    # the truth itself as a reconstruction
    write_volume(tmp_path / "run" / "volume_dip.h5", truth.volume, CIRCUIT_VOXEL)
    config = write_config(tmp_path, register=False)
    config.write_text(config.read_text().replace(str(tmp_path / "ground_truth.h5"),
                                                 str(simulated_truth)))
    assert main(["evaluate", "-c", str(config)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    fbp, dip = metrics["fbp"]["circuit"], metrics["dip"]["circuit"]
    assert fbp["labels"] == "ground truth"
    expected = _independent_count(metal, circuit.nets)
    assert {k: fbp[k] for k in expected} == expected
    assert fbp["opens"] >= 1 and fbp["shorts"] >= 1  # the gap (and the via) and the bridge
    n_vias = int(circuit.vias.max())
    recovered = sum(metal[circuit.vias == v].mean() >= 0.5 for v in range(1, n_vias + 1))
    assert recovered == n_vias - 1
    assert fbp["via_recall"] == pytest.approx((n_vias - 1) / n_vias, abs=0)
    assert sum(v["vias"] for v in fbp["vias"].values()) == n_vias
    assert set(fbp["layers"]) == {k for k in circuit.layers if k not in circuit.cut_layers}
    assert fbp["layers"]["metal1"]["shorts"] >= 1
    assert len(fbp["error_sites"]["missed_vias"]) == 1
    # A perfect reconstruction: no errors, every via.
    assert (dip["opens"], dip["shorts"], dip["missing"], dip["spurious"]) == (0, 0, 0, 0)
    assert dip["via_recall"] == 1.0 and dip["vi_split_bits"] == dip["vi_merge_bits"] == 0.0
    assert all(v["recall"] == 1.0 and v["precision"] == 1.0 for v in dip["vias"].values())
    assert (tmp_path / "run" / "figures" / "circuit_errors.png").stat().st_size > 5000


@pytest.mark.parametrize("corner_um", [(45.0, 52.0), (36.0, 44.0)])  # 10 and 18 vias
def test_circuit_figures_on_layout_crops_agree_with_an_independent_count(ic_files, tmp_path,
                                                                         corner_um):
    """Crops of the real layout used nowhere else (DEF net and via ids, nets cut by the
    crop): a reconstruction with one via removed, a wire cut and two nets bridged gets the
    figures of a direct count, and the via recall of a direct count."""
    from hpc_adept.io import read_ground_truth

    cfg = {"data": {"path": str(tmp_path / "data")}, "output": {"dir": str(tmp_path / "sim")},
           "simulate": {"phantom": "layout", "layout_def": str(ic_files[0]),
                        "layout_lef": str(ic_files[1]), "crop_origin_um": list(corner_um),
                        "sample": "isolated", "volume_shape": [28, 48, 48],
                        "voxel_size_m": LAYOUT_VOXEL, "n_angles": 4, "scans": False,
                        "write_projections": True},
           "runtime": {"device": "cpu"}}
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["simulate", "-c", str(tmp_path / "sim.yaml")]) == 0
    truth = read_ground_truth(tmp_path / "data" / "ground_truth.h5")
    circuit = truth.circuit
    ids, sizes = np.unique(circuit.vias[circuit.vias > 0], return_counts=True)
    assert len(ids) >= 2
    metal = _defects(circuit.nets, circuit.vias, circuit.layers["metal1"],
                     via_id=int(ids[np.argmax(sizes)]))
    write_volume(tmp_path / "run" / "volume_fbp.h5", (0.03 * metal).astype(np.float32),
                 LAYOUT_VOXEL)
    write_volume(tmp_path / "run" / "volume_dip.h5", truth.volume, LAYOUT_VOXEL)
    config = write_config(tmp_path, register=False)
    config.write_text(config.read_text().replace(
        str(tmp_path / "ground_truth.h5"), str(tmp_path / "data" / "ground_truth.h5")))
    assert main(["evaluate", "-c", str(config)]) == 0
    fbp = json.loads((tmp_path / "run" / "metrics.json").read_text())["fbp"]["circuit"]
    expected = _independent_count(metal, circuit.nets)
    assert {k: fbp[k] for k in expected} == expected
    assert fbp["opens"] >= 1 and fbp["shorts"] >= 1
    kept = circuit.vias[truth.occupancy.astype(bool)]  # as evaluate keeps the labels
    counted = [v for v in ids if np.any(kept == v)]
    recovered = sum(metal[circuit.vias == v].mean() >= 0.5 for v in counted)
    assert sum(v["vias"] for v in fbp["vias"].values()) == len(counted)
    assert fbp["via_recall"] == pytest.approx(recovered / len(counted), abs=1e-12)
    assert recovered == len(counted) - 1


def test_circuit_without_labels_uses_the_reference_components(simulated_truth, tmp_path):
    from hpc_adept.io import read_ground_truth

    truth = read_ground_truth(simulated_truth)
    write_ground_truth(tmp_path / "ground_truth.h5", truth.volume, truth.occupancy,
                       CIRCUIT_VOXEL)  # no /circuit
    metal = _defects(truth.circuit.nets, truth.circuit.vias, truth.circuit.layers["metal1"])
    write_volume(tmp_path / "run" / "volume_fbp.h5", 0.03 * metal.astype(np.float32),
                 CIRCUIT_VOXEL)
    assert main(["evaluate", "-c", str(write_config(tmp_path, register=False))]) == 0
    fbp = json.loads((tmp_path / "run" / "metrics.json").read_text())["fbp"]["circuit"]
    assert fbp["labels"] == "reference components"
    reference, n = ndimage.label(truth.occupancy > 0)
    sizes = np.bincount(reference.ravel())
    reference[sizes[reference] < 4] = 0  # the reference's specks are no nets either
    expected = _independent_count(metal, reference)
    assert {k: fbp[k] for k in expected} == expected
    assert fbp["via_recall"] is None and fbp["vias"] == {} and fbp["layers"] == {}


def test_labels_count_only_the_reference_metal(simulated_truth, tmp_path):
    """At coarse voxels a via's labels (voxel centres inside the cut box) reach voxels that
    the binarised truth calls dielectric (less than half covered): the reference itself, as
    a reconstruction, must still keep every via and have no error."""
    import dataclasses

    from hpc_adept.io import read_ground_truth

    truth = read_ground_truth(simulated_truth)
    circuit = truth.circuit
    vias = circuit.vias.copy()
    grown = ndimage.binary_dilation(vias == 1, iterations=2) & (truth.occupancy == 0)
    assert grown.sum() > 2 * (vias == 1).sum()  # the via's labels now mostly dielectric
    vias[grown] = 1
    nets = np.where(grown, circuit.nets[vias == 1].max(), circuit.nets)
    write_ground_truth(tmp_path / "ground_truth.h5", truth.volume, truth.occupancy,
                       CIRCUIT_VOXEL,
                       circuit=dataclasses.replace(circuit, vias=vias, nets=nets))
    for method in ("fbp", "dip"):
        write_volume(tmp_path / "run" / f"volume_{method}.h5", truth.volume, CIRCUIT_VOXEL)
    assert main(["evaluate", "-c", str(write_config(tmp_path, register=False))]) == 0
    dip = json.loads((tmp_path / "run" / "metrics.json").read_text())["dip"]["circuit"]
    assert (dip["opens"], dip["shorts"], dip["missing"], dip["spurious"]) == (0, 0, 0, 0)
    assert dip["via_recall"] == 1.0
    assert sum(v["vias"] for v in dip["vias"].values()) == int(circuit.vias.max())


def test_every_method_is_judged_on_the_same_region_and_vias(simulated_truth, tmp_path):
    """A reconstruction shifted by a fraction of a voxel loses its border plane to the
    registration; the other method must then be scored on the same voxels (same vias)."""
    from hpc_adept.io import read_ground_truth

    truth = read_ground_truth(simulated_truth)
    write_ground_truth(tmp_path / "ground_truth.h5", truth.volume, truth.occupancy,
                       CIRCUIT_VOXEL, circuit=truth.circuit)
    shifted = ndimage.shift(truth.volume.astype(np.float64), (0.0, 0.3, 0.0), order=3,
                            mode="nearest").astype(np.float32)
    write_volume(tmp_path / "run" / "volume_fbp.h5", truth.volume, CIRCUIT_VOXEL)
    write_volume(tmp_path / "run" / "volume_dip.h5", shifted, CIRCUIT_VOXEL)
    assert main(["evaluate", "-c", str(write_config(tmp_path, register=True))]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    fbp, dip = metrics["fbp"], metrics["dip"]
    assert abs(dip["registration"]["shift_voxels"][1]) > 0.2
    assert fbp["registration"]["shift_voxels"] == [0.0, 0.0, 0.0]
    for key in ("region_start", "region_shape"):
        assert fbp["registration"][key] == dip["registration"][key]
    assert dip["registration"]["region_shape"][1] == truth.volume.shape[1] - 1
    assert fbp["registration"]["own_region_shape"] == list(truth.volume.shape)
    assert dip["registration"]["own_region_shape"] == dip["registration"]["region_shape"]
    count = {m: sum(v["vias"] for v in metrics[m]["circuit"]["vias"].values())
             for m in metrics}
    assert count["fbp"] == count["dip"] > 0

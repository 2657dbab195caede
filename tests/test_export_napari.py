"""The exported OME-Zarr in napari (issue 19): napari-ome-zarr's reader, napari's own
``open`` and, where Qt and a display are there, ``napari.Viewer(show=False)`` give the
volume's pyramid at its voxel size in micrometres along (z, y, x).

napari is an optional extra (``pip install -e .[napari]``, about 280 MB with its
dependencies, no Qt); every test here skips without it. The viewer test also needs a Qt
binding (``napari[pyqt5]``) and an X display for OpenGL (``xvfb-run``)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from hpc_adept.io.export import export_run, pyramid, write_ome_zarr
from hpc_adept.io.runfiles import write_volume

with warnings.catch_warnings():
    # npe2's manifest models use pydantic-1 style fields: deprecation warnings at import
    # (napari's and npe2's pytest plugins, when installed, import it before this module)
    warnings.simplefilter("ignore", DeprecationWarning)
    npe2 = pytest.importorskip("npe2")
    pytest.importorskip("napari_ome_zarr")

PLUGIN = "napari-ome-zarr"
#: Distinct sizes so that a swapped axis shows (z, y, x; micrometres).
VOXEL_UM = (0.05, 0.02, 0.025)


@pytest.fixture(autouse=True)
def _napari_plugins(tmp_path, monkeypatch):
    """The installed plugins' manifests, found as napari finds them when its first viewer
    starts; napari's settings file in tmp_path, not in the user's config folder."""
    monkeypatch.setenv("NAPARI_CONFIG", str(tmp_path / "napari" / "settings.yaml"))
    npe2.PluginManager.instance().discover()


def _volume(shape=(66, 80, 72)) -> np.ndarray:
    """Two pyramid levels: (66, 80, 72) and (33, 40, 36); a third would be < 32."""
    return np.random.default_rng(5).normal(size=shape).astype(np.float32)


def _assert_levels(levels, volume: np.ndarray) -> None:
    expected = pyramid(volume)
    assert len(levels) == len(expected) == 2
    for level, want in zip(levels, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(level), want)


def _assert_physical(layer, voxel_um) -> None:
    """A napari Image layer: multiscale, (z, y, x) in micrometres at ``voxel_um``."""
    assert layer.multiscale and layer.ndim == 3
    np.testing.assert_allclose(layer.scale, voxel_um, rtol=1e-12)
    assert tuple(layer.axis_labels) == ("z", "y", "x")
    assert [str(u) for u in layer.units] == ["micrometer"] * 3
    np.testing.assert_array_equal(layer.downsample_factors, [[1, 1, 1], [2, 2, 2]])
    # in the world, the first and last voxels' centres are (shape - 1) voxels apart
    extent = layer.extent.world
    np.testing.assert_allclose(extent[1] - extent[0],
                               (np.array(layer.data[0].shape) - 1) * voxel_um, rtol=1e-9)


def test_plugin_reader_gives_the_pyramid_with_micrometre_scale(tmp_path):
    """The reader contribution of napari-ome-zarr's manifest, through npe2 (what napari
    calls): one image layer, levels 0 and 1, the scale of level 0, axes and units."""
    volume = _volume()
    store = write_ome_zarr(tmp_path / "v.ome.zarr", volume, VOXEL_UM, "dip")
    layers = npe2.read([str(store)], stack=False, plugin_name=PLUGIN)
    assert len(layers) == 1
    data, meta, layer_type = layers[0]
    assert layer_type == "image"
    _assert_levels(data, volume)
    np.testing.assert_allclose(meta["scale"], VOXEL_UM, rtol=1e-12)
    assert tuple(meta["axis_labels"]) == ("z", "y", "x")
    assert tuple(meta["units"]) == ("micrometer",) * 3
    # the scale is not also in the affine (it would be applied twice)
    np.testing.assert_allclose(meta["affine"].affine_matrix, np.eye(4), atol=0)


def test_napari_opens_an_exported_run_at_its_voxel_size(tmp_path):
    """`adept export RUN --format ome-zarr` then napari's own ``open`` (no Qt: the viewer
    model behind ``napari.Viewer``): the DIP volume at 27.2 nm voxels."""
    from napari.components import ViewerModel

    volume = _volume()
    run = tmp_path / "run"
    run.mkdir()
    write_volume(run / "volume_dip.h5", volume, voxel_size_m=27.2e-9)
    (store,) = export_run(run, "ome-zarr")
    viewer = ViewerModel()
    (layer,) = viewer.open(str(store), plugin=PLUGIN)
    _assert_levels(layer.data, volume)
    _assert_physical(layer, (0.0272,) * 3)
    assert layer.name == "volume_dip.ome"


def test_napari_keeps_the_axis_order_of_anisotropic_voxels(tmp_path):
    from napari.components import ViewerModel

    volume = _volume()
    store = write_ome_zarr(tmp_path / "v.ome.zarr", volume, VOXEL_UM, "dip")
    viewer = ViewerModel()
    (layer,) = viewer.open(str(store), plugin=PLUGIN)
    _assert_physical(layer, VOXEL_UM)
    # the sliders step one voxel of each axis, in micrometres
    np.testing.assert_allclose([r.step for r in viewer.dims.range], VOXEL_UM, rtol=1e-12)


@pytest.mark.filterwarnings("ignore:System theme detection:UserWarning")
def test_napari_viewer_headless_opens_it(tmp_path, monkeypatch):
    """``napari.Viewer(show=False)`` with Qt's offscreen platform; OpenGL comes from an X
    display (``xvfb-run``), without one adding a layer fails inside vispy."""
    pytest.importorskip("qtpy.QtWidgets", exc_type=ImportError)
    if not os.environ.get("DISPLAY"):
        pytest.skip("napari.Viewer needs an X display for OpenGL (run under xvfb-run)")
    # offscreen: no window is shown and no xcb libraries are needed
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    import napari

    volume = _volume()
    store = write_ome_zarr(tmp_path / "v.ome.zarr", volume, VOXEL_UM, "dip")
    viewer = napari.Viewer(show=False)
    try:
        (layer,) = viewer.open(str(store), plugin=PLUGIN)
        _assert_levels(layer.data, volume)
        _assert_physical(layer, VOXEL_UM)
    finally:
        viewer.close()

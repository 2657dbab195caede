"""Volumes for viewers (issue 19, item 3): OME-Zarr (NGFF 0.4) and ImageJ TIFF, read back by
the readers napari and Fiji use (``ome-zarr``'s reader, tifffile) with the voxel size."""

from __future__ import annotations

import numpy as np
import pytest

from hpc_adept.errors import DataError
from hpc_adept.io.export import (
    export_run,
    export_volume,
    pyramid,
    write_imagej_tiff,
    write_ome_zarr,
)
from hpc_adept.io.runfiles import write_volume


def _volume(shape=(40, 70, 66)) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.normal(size=shape).astype(np.float32)


def test_pyramid_levels_are_block_means():
    volume = _volume((64, 70, 66))
    levels = pyramid(volume, min_side=16)
    assert [lv.shape for lv in levels] == [(64, 70, 66), (32, 35, 33), (16, 17, 16)]
    expected = volume[:2, :2, :2].mean()
    assert levels[1][0, 0, 0] == pytest.approx(expected, rel=1e-6)
    assert len(pyramid(_volume((8, 8, 8)))) == 1


def test_ome_zarr_opens_in_the_ngff_reader_with_micrometres(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    volume = _volume((66, 80, 72))
    store = write_ome_zarr(tmp_path / "v.ome.zarr", volume, (0.0272, 0.0272, 0.0272), "dip")
    image = list(Reader(parse_url(str(store)))())[0]
    assert len(image.data) == 2  # levels 0 and 1 (33 x 40 x 36); level 2 would be < 32
    np.testing.assert_array_equal(np.asarray(image.data[0]), volume)
    meta = image.metadata
    assert [a["name"] for a in meta["axes"]] == ["z", "y", "x"]
    assert all(a["unit"] == "micrometer" for a in meta["axes"])
    scales = [t[0]["scale"] for t in meta["coordinateTransformations"]]
    assert scales[0] == pytest.approx([0.0272] * 3) and scales[1] == pytest.approx([0.0544] * 3)
    # Level 1's voxel 0 is the mean of level 0's voxels 0 and 1: centred half a voxel on.
    assert len(meta["coordinateTransformations"][0]) == 1
    assert meta["coordinateTransformations"][1][1] == {"type": "translation",
                                                       "translation": pytest.approx([0.0136] * 3)}
    assert meta["name"] == "dip"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_imagej_tiff_has_the_voxel_size(tmp_path):
    import tifffile

    volume = _volume((12, 20, 16))
    path = write_imagej_tiff(tmp_path / "v.tif", volume, (0.05, 0.02, 0.025))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        np.testing.assert_array_equal(tif.asarray(), volume)
        meta = tif.imagej_metadata
        assert meta["spacing"] == pytest.approx(0.05) and meta["unit"] == "um"
        x_res = tif.pages[0].tags["XResolution"].value
        y_res = tif.pages[0].tags["YResolution"].value
        assert x_res[1] / x_res[0] == pytest.approx(0.025, rel=1e-6)
        assert y_res[1] / y_res[0] == pytest.approx(0.02, rel=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((3, 4)), np.full((2, 3, 4), np.nan)])
def test_bad_volumes_are_refused_and_nothing_is_written(tmp_path, bad):
    with pytest.raises(ValueError, match="export:"):
        export_volume(bad, 1e-8, tmp_path / "v.tif", "tiff")
    with pytest.raises(ValueError, match="export:"):
        export_volume(bad, 1e-8, tmp_path / "v.ome.zarr", "ome-zarr")
    assert list(tmp_path.iterdir()) == []


def test_export_run_writes_every_method(tmp_path):
    import tifffile

    run = tmp_path / "run"
    run.mkdir()
    write_volume(run / "volume_fbp.h5", _volume((8, 9, 10)), voxel_size_m=27.2e-9)
    write_volume(run / "volume_dip.h5", _volume((8, 9, 10)), voxel_size_m=27.2e-9)
    written = export_run(run, "tiff")
    assert sorted(p.name for p in written) == ["volume_dip.tif", "volume_fbp.tif"]
    with tifffile.TiffFile(written[0]) as tif:
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.0272)
    with pytest.raises(DataError, match="no volume_"):
        export_run(tmp_path, "tiff")
    (run / "volume_bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError):
        export_run(run, "ome-zarr", out_dir=tmp_path / "out")


def test_adept_export_command(tmp_path, capsys):
    """`adept export RUN --format tiff` writes RUN/export/volume_<method>.tif; a run without
    volumes is one error line, exit 2, nothing written."""
    from hpc_adept.cli import main

    run = tmp_path / "run"
    run.mkdir()
    write_volume(run / "volume_fbp.h5", _volume((8, 9, 10)), voxel_size_m=27.2e-9)
    assert main(["export", str(run), "--format", "tiff"]) == 0
    assert (run / "export" / "volume_fbp.tif").is_file()
    assert main(["export", str(run), "--format", "ome-zarr", "--out", str(tmp_path / "z")]) == 0
    assert (tmp_path / "z" / "volume_fbp.ome.zarr" / ".zattrs").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(["export", str(empty), "--format", "tiff"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no volume_" in err[0]
    assert not (empty / "export").exists()

"""Bad input to the config, the evaluation, the report and ``adept run``: one clear line.

Each case is a defect found by an audit: a value without a bound, a malformed run file or a
junk reference that gave a traceback (or ran for minutes, or ate all memory) instead of one
``adept: error: ...`` line with exit code 2, or a report note.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml

from hpc_adept.cli import main
from hpc_adept.config import Config, load_config
from hpc_adept.errors import ConfigError, DataError
from hpc_adept.io import write_ground_truth, write_h5_atomic, write_volume

from .conftest import adept

HUGE = 99999999999999999999999


# ----------------------------------------------------------------------------- config bounds


def _huge_value(tp: typing.Any, default: typing.Any) -> typing.Any:
    """A value of type ``tp`` with one integer far too large (None: not an integer key)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        return _huge_value(inner, default)
    if tp is int:
        return HUGE
    if origin is tuple and args and args[0] is int:
        if args[-1] is Ellipsis:
            values = list(default) if default else [1]
        else:
            values = [2] * len(args)
        return [HUGE, *values[1:]]
    return None


def _integer_keys() -> list[tuple[str, typing.Any]]:
    keys = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            value = _huge_value(hints[f.name], getattr(defaults, f.name))
            if value is not None:
                keys.append((f"{section.name}.{f.name}", value))
    return keys


@pytest.mark.parametrize(("key", "value"), _integer_keys(), ids=lambda v: str(v)[:30])
def test_every_integer_key_has_an_upper_bound(key, value):
    """A typo of many digits stops in the config, not in numpy or torch."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={json.dumps(value)}"])


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["simulate.seed=-1"], "simulate.seed must be in [0, 4294967295]"),
        (["runtime.seed=-1"], "runtime.seed must be in [0, 4294967295]"),
        (["runtime.seed=4294967296"], "runtime.seed must be in [0, 4294967295]"),
        ([f"simulate.n_angles={HUGE}"], "simulate.n_angles must be <= 100000"),
        (["runtime.torch_threads=99999999999999999999"],
         "runtime.torch_threads must be in [1, 4096]"),
        ([f"recon.volume_shape=[{HUGE},2,2]"], "recon.volume_shape must hold sizes <= 16384"),
        (["recon.volume_shape=[16384,16384,16384]"], "has more than 17179869184"),
        (["evaluate.max_shift_voxels=100000"], "evaluate.max_shift_voxels must be in [0, 16384]"),
        (["evaluate.gmm_samples=1"], "evaluate.gmm_samples must be in [2, 10000000]"),
        (["data.burst_frames=0"], "data.burst_frames must be > 0, got 0"),
        (["data.spec_motors=[px, px]"], "data.spec_motors must be two different column names"),
        (["recon.methods=[fbp,dip]", "recon.volume_shape=[12,24,24]", "dip.channels=[4,8]",
          "dip.strides=[64,1]"], "dip.strides [64, 1]: their product 64 shrinks"),
    ],
)
def test_out_of_range_values(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert needle in str(info.value)


def test_bounds_keep_valid_edge_values():
    cfg = load_config(None, ["simulate.seed=0", "runtime.seed=4294967295",
                             "evaluate.gmm_samples=2", "runtime.torch_threads=4096",
                             "recon.methods=[dip]", "recon.volume_shape=[12,24,25]",
                             "dip.channels=[4,8]", "dip.strides=[24,1]"])
    assert cfg.runtime.seed == 2**32 - 1
    # fbp alone: the DIP network's strides do not matter
    load_config(None, ["recon.volume_shape=[12,24,24]", "dip.channels=[4,8]",
                       "dip.strides=[64,1]"])


# ----------------------------------------------------------------------------- registration


def test_huge_max_shift_is_clamped_to_the_volume():
    """max_shift beyond the volume searches every lag, without an FFT of its size."""
    from hpc_adept.metrics import estimate_shift

    rng = np.random.default_rng(5)
    reference = rng.standard_normal((8, 9, 10))
    moving = np.roll(reference, (1, -2, 0), axis=(0, 1, 2))
    shift, _ = estimate_shift(reference, moving, max_shift=10**6, subvoxel=False)
    small, _ = estimate_shift(reference, moving, max_shift=9, subvoxel=False)
    np.testing.assert_array_equal(shift, small)


# ----------------------------------------------------------------------------- evaluation


def _evaluate_config(work: Path, **evaluate: typing.Any) -> Path:
    cfg = {"output": {"dir": str(work / "run")},
           "recon": {"methods": ["fbp"], "volume_shape": [6, 6, 6]},
           "evaluate": {"reference": str(work / "ground_truth.h5"), **evaluate},
           "runtime": {"device": "cpu"}}
    path = work / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tiny_reference_is_a_data_error_naming_the_volume(tmp_path, capsys):
    """A valid 2 x 1 x 1 reference leaves a one-voxel region: no mixture to fit."""
    occupancy = np.array([0, 1], np.uint8).reshape(2, 1, 1)
    write_ground_truth(tmp_path / "ground_truth.h5", 0.026 * occupancy.astype(np.float32),
                       occupancy, 1e-7)
    volume = np.random.default_rng(1).standard_normal((6, 6, 6)).astype(np.float32)
    write_volume(tmp_path / "run" / "volume_fbp.h5", volume, 1e-7)
    config = _evaluate_config(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # phase 2: the CLI ends the job with code 2
        main(["evaluate", "-c", str(config)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("adept: error: ")]
    assert len(errors) == 1, err  # the log lines before it are the work's progress
    assert "volume_fbp.h5" in errors[0] and "cannot fit a two-class mixture" in errors[0]
    assert not (tmp_path / "run" / "metrics.json").exists()


# ----------------------------------------------------------------------------- report


def _small_run(run: Path) -> Path:
    """A hand-made run directory with one valid file for every report section."""
    write_volume(run / "volume_fbp.h5",
                 np.random.default_rng(2).random((6, 8, 8)).astype(np.float32), 1e-7)
    (run / "config.yaml").write_text("recon: {methods: [fbp]}\n")
    times = {"count": 1, "min_s": 1.0, "mean_s": 1.5, "max_s": 2.0}
    (run / "timing.json").write_text(json.dumps({
        "n_ranks": 1, "devices": ["cpu"], "wall_s": 2.0, "run": {},
        "regions": {"recon": times}, "stages": {"recon": times}}))
    (run / "metrics.json").write_text(json.dumps({"fbp": {
        "ber": 0.1, "pcc": 0.9, "ranges": {"z < 2.75 um": {"ber": 0.1, "pcc": 0.9}}}}))
    (run / "dip_history.json").write_text(json.dumps({"loss": [3.0, 2.0, 1.0]}))
    for k in range(2):
        write_h5_atomic(run / "ptycho" / f"scan_{k:04d}.h5",
                        {"fourier_error": np.array([4.0, 2.0, 1.0])})
    return run


def _scalar_fourier_error(run: Path) -> None:
    write_h5_atomic(run / "ptycho" / "scan_0001.h5", {"fourier_error": np.float64(3.0)})


REPORT_CASES = {
    "dip loss not numbers": (lambda run: (run / "dip_history.json").write_text(
        '{"loss": "x"}'), "Unreadable dip_history.json: loss: could not convert"),
    "timing region without min_s": (lambda run: (run / "timing.json").write_text(json.dumps(
        {"regions": {"recon": {"mean_s": 1.0, "max_s": 1.0}}})),
        "Unreadable timing.json: region 'recon' lacks min_s"),
    "metrics ranges a list": (lambda run: (run / "metrics.json").write_text(json.dumps(
        {"fbp": {"ber": 0.1, "pcc": 0.9, "ranges": [1, 2]}})),
        "Unreadable metrics.json: 'ranges' is a list, not a mapping"),
    "scalar fourier_error": (_scalar_fourier_error,
                             "Unreadable ptycho/: scan_0001.h5 (fourier_error: expected a 1-D"),
    "config.yaml not UTF-8": (lambda run: (run / "config.yaml").write_bytes(b"\xff\xfe\x00a"),
                              "Unreadable config.yaml: 'utf-8' codec can't decode"),
    "timing.json not JSON": (lambda run: (run / "timing.json").write_text("{"),
                             "Unreadable timing.json: Expecting property name"),
}


@pytest.mark.parametrize("case", list(REPORT_CASES))
def test_report_notes_a_malformed_file_and_writes_the_rest(tmp_path, case, caplog):
    from hpc_adept.report.document import write_report

    corrupt, needle = REPORT_CASES[case]
    run = _small_run(tmp_path / "run")
    corrupt(run)
    html_path, md_path = write_report(run)
    markdown = md_path.read_text()
    assert needle in markdown, markdown
    assert "unreadable" in caplog.text
    # The other sections are still there: the reconstructions' figure at least.
    assert "report_orthoslices.png" in markdown
    assert html_path.stat().st_size > 10_000


def test_report_into_an_unwritable_directory_is_a_data_error(tmp_path, monkeypatch):
    """Checked before any figure is drawn; a directory in place of report.html too."""
    from hpc_adept.report import document

    run = _small_run(tmp_path / "run")
    real_access = os.access
    monkeypatch.setattr(document.os, "access", lambda path, mode: (
        Path(path) != run and real_access(path, mode)))  # a read-only run directory
    with pytest.raises(DataError, match=r"report: .*run is not a writable directory"):
        document.write_report(run)
    assert not (run / "figures").exists()
    monkeypatch.undo()
    (run / "report.html").mkdir()  # even root cannot replace a directory by a file
    with pytest.raises(DataError, match=r"report: cannot write .*report\.html"):
        document.write_report(run)


def test_report_cli_on_a_read_only_run_directory(tmp_path):
    """The command line: one line, exit 2 (as root the directory stays writable)."""
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    run = _small_run(tmp_path / "run")
    run.chmod(0o555)
    try:
        result = adept("report", str(run), cwd=tmp_path)
    finally:
        run.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("adept: error: report: ")


# ----------------------------------------------------------------------------- adept run


@pytest.mark.parametrize("text", ['{"ptycho": 5}', '{"ptycho": {"settings": 3}}', "[1, 2]",
                                  "{", '{"ptycho": "x"}'])
def test_malformed_pipeline_state_means_not_up_to_date(tmp_path, text, caplog):
    from hpc_adept.pipeline import STATE_FILE, _read_state, up_to_date
    from hpc_adept.stages.registry import run_stages

    run = tmp_path / "run"
    run.mkdir()
    (run / "projections.h5").write_bytes(b"")  # the ptycho stage's output exists
    (run / STATE_FILE).write_text(text)
    cfg = load_config(None, [f"output.dir={run}"])
    ptycho = run_stages()[0]
    assert up_to_date(ptycho, cfg, _read_state(run)) == (False, "no record of a finished run")
    assert "run: ignoring" in caplog.text
    # also when handed the raw content (what the file held)
    try:
        raw = json.loads(text)
    except ValueError:
        raw = {}
    if isinstance(raw, dict):
        assert up_to_date(ptycho, cfg, raw)[0] is False


def _junk(path: Path) -> None:
    path.write_text("not HDF5\n")


def _flat(path: Path) -> None:
    write_h5_atomic(path, {"volume": np.ones((4, 4), np.float32)},
                    attrs={"voxel_size_m": 1e-7})


def _nan(path: Path) -> None:
    volume = np.random.default_rng(3).random((4, 4, 4)).astype(np.float32)
    volume[1, 2, 3] = np.nan
    write_h5_atomic(path, {"volume": volume}, attrs={"voxel_size_m": 1e-7})


@pytest.mark.parametrize(("make", "needle"), [
    (_junk, "ref.h5: not a readable HDF5 file"),
    (_flat, "volume: expected 3-D"),
    (_nan, "volume: contains NaN"),
])
def test_run_checks_the_reference_before_the_first_stage(tmp_path, make, needle):
    """A bad reference stops ``adept run`` in its plan, not after ptycho, align, recon."""
    from hpc_adept.stages.registry import TABLE

    make(tmp_path / "ref.h5")
    cfg = load_config(None, [f"output.dir={tmp_path / 'run'}",
                             f"evaluate.reference={tmp_path / 'ref.h5'}"])
    with pytest.raises(DataError) as info:
        TABLE["run"].plan(cfg)  # data.path is unset: the ptycho plan would fail next (ConfigError)
    assert needle in str(info.value)

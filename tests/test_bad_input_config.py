"""Bad input to the config, the evaluation, the report and ``adept run``: one clear line.

Each case is a defect found by an audit: a value without a bound, a malformed run file or a
junk reference that gave a traceback (or ran for minutes, or ate all memory) instead of one
``adept: error: ...`` line with exit code 2, or a report note.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml

from hpc_adept.cli import main
from hpc_adept.config import Config, load_config
from hpc_adept.errors import ConfigError
from hpc_adept.io import write_ground_truth, write_volume

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

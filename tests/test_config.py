"""Config loading, overrides and strict validation."""

from __future__ import annotations

import pytest
import yaml

from hpc_adept.config import Config, load_config
from hpc_adept.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_roundtrip(tmp_path):
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.simulate.tilt_deg == 61.0
    again = load_config(write(tmp_path, cfg.to_yaml()))
    assert again == cfg


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "dip:\n  iterations: 7\nsimulate:\n  volume_shape: [4, 5, 6]\n")
    cfg = load_config(path, ["dip.iterations=50", "recon.methods=[fbp]",
                             "simulate.photons_per_pattern=1e5", "evaluate.reference=x.h5"])
    assert cfg.dip.iterations == 50
    assert cfg.simulate.volume_shape == (4, 5, 6)
    assert cfg.recon.methods == ("fbp",)
    assert cfg.simulate.photons_per_pattern == 1e5
    assert cfg.evaluate.reference == "x.h5"


def test_frozen():
    cfg = load_config(None)
    with pytest.raises(AttributeError):
        cfg.dip.iterations = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        ("dip:\n  iteratons: 5\n", [],
         "unknown config key dip.iteratons (did you mean dip.iterations?)"),
        ("bogus:\n  a: 1\n", [], "unknown config key bogus"),
        ("", ["dip.iterations=many"], "dip.iterations must be an integer"),
        ("", ["dip.iterations=2.5"], "dip.iterations must be an integer"),
        ("", ["dip.iterations=0"], "dip.iterations must be > 0"),
        ("", ["simulate.tilt_deg=120"], "simulate.tilt_deg must be in (0, 90]"),
        ("", ["simulate.volume_shape=[1,2]"], "simulate.volume_shape must be a list of 3"),
        ("", ["recon.methods=[fbp,sirt]"], "recon.methods[1] must be one of"),
        ("", ["runtime.device=tpu"], "runtime.device must be one of"),
        ("", ["runtime.projector=astra"], "runtime.projector must be one of"),
        ("", ["runtime.device=cpu", "runtime.projector=triton"],
         "runtime.projector: triton runs on GPUs only"),
        ("", ["align.enabled=yes please"], "align.enabled must be true or false"),
        ("", ["simulate.frame_size=63"], "simulate.frame_size must be even"),
        ("", ["noequals"], "--set expects dotted.key=value"),
        # the LSQ-ML engine's keys (they were options of the kernel before issue 17)
        ("", ["ptycho.momentum_coefficient=1.0"],
         "ptycho.momentum_coefficient must be in [0, 1), got 1.0"),
        ("", ["ptycho.trim_fraction=0.5"], "ptycho.trim_fraction must be in [0, 0.5)"),
        ("", ["ptycho.padding_px=-1"], "ptycho.padding_px must be >= 0"),
        ("", ["ptycho.probe_update_start=-2"], "ptycho.probe_update_start must be >= 0"),
        ("", ["ptycho.step_scale=0"], "ptycho.step_scale must be > 0"),
        ("", ["ptycho.position_step_limit_px=-0.1"], "ptycho.position_step_limit_px must be > 0"),
        ("", ["ptycho.fft_library=fftw"], "ptycho.fft_library must be one of 'torch', 'scipy'"),
        ("", ["ptycho.phase_reference=mean"],
         "ptycho.phase_reference must be one of 'auto', 'vacuum', 'plane'"),
        ("ptycho:\n  phase_reference: 1\n", [], "ptycho.phase_reference must be one of"),
        ("dip: [1, 2]\n", [], "dip must be a mapping"),
        ("dip:\n  iterations: [\n", [], "is not valid YAML"),
        ("- 1\n- 2\n", [], "must hold a mapping of sections"),
    ],
)
def test_bad_configs_give_one_line(tmp_path, text, overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), overrides)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_to_yaml_is_plain():
    data = yaml.safe_load(load_config(None).to_yaml())
    assert data["simulate"]["volume_shape"] == [144, 160, 160]
    assert set(data) == {"data", "output", "simulate", "ptycho", "align", "recon", "dip",
                         "evaluate", "runtime"}


def test_sections_built_in_python_are_checked_too():
    """A section made in Python (kernels, benchmarks) skips the YAML coercion; check() still
    refuses a value outside a key's choices, in the same words."""
    from hpc_adept.config import PtychoConfig

    with pytest.raises(ConfigError, match=r"ptycho.batch_mode must be one of 'sparse', "
                                          r"'compact', got 'dense'"):
        PtychoConfig(batch_mode="dense").check()  # type: ignore[arg-type]
    PtychoConfig(fft_library="scipy", momentum_coefficient=0.0, trim_fraction=0.0).check()

"""The ablation-study driver: variants run, evaluated and tabulated side by side."""

from __future__ import annotations

import json
import sys

import yaml

from .conftest import REPO, run_cmd

sys.path.insert(0, str(REPO / "profiling"))
import ablation  # noqa: E402

BASE = {
    "data": {"path": "data"},
    "output": {"dir": "run"},
    # the quality ordering of the variants is for the region alone in vacuum
    "simulate": {"phantom": "procedural", "sample": "isolated",
                 "volume_shape": [12, 20, 20], "n_angles": 16,
                 "scans": False, "write_projections": True, "projection_noise": 0.02},
    "recon": {"methods": ["fbp"], "volume_shape": [12, 20, 20], "input": "projections"},
    "dip": {"iterations": 3, "channels": [4, 8], "strides": [2, 1], "in_channels": 4},
    "evaluate": {"z_boundaries_um": [0.15]},
    "runtime": {"device": "cpu"},
}


def test_table_lists_every_variant_and_range():
    metrics = {"fbp": {"ber": 0.1, "pcc": 0.8,
                       "ranges": {"low": {"ber": 0.05, "pcc": 0.9},
                                  "high": {"ber": None, "pcc": None}}}}
    text, rows = ablation.table([("dense FBP", metrics)])
    assert rows == [{"variant": "dense FBP", "method": "fbp", "ber": 0.1, "pcc": 0.8,
                     "ber low": 0.05, "pcc low": 0.9, "ber high": None, "pcc high": None}]
    assert text.splitlines()[0] == "| variant | method | BER | PCC | BER low | PCC low | " \
                                   "BER high | PCC high |"
    assert "| dense FBP | FBP | 0.1000 | 0.8000 | 0.0500 | 0.9000 | - | - |" in text


def test_study_runs_variants_and_reuses_finished_ones(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    study = {"config": "base.yaml", "output": "abl", "variants": [
        {"name": "dense FBP", "set": {"simulate.n_angles": 16}},
        {"name": "1/4 FBP", "set": {"simulate.n_angles": 4}},
        {"name": "1/4 DIP", "set": {"simulate.n_angles": 4, "recon.methods": ["dip"]}}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    script = str(REPO / "profiling" / "ablation.py")
    result = run_cmd([script, "s.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert [(r["variant"], r["method"]) for r in rows] == [
        ("dense FBP", "fbp"), ("1/4 FBP", "fbp"), ("1/4 DIP", "dip")]
    assert all(0 <= r["ber"] <= 1 and -1 <= r["pcc"] <= 1 for r in rows)
    # More angles, better FBP.
    assert rows[0]["pcc"] > rows[1]["pcc"]
    assert (tmp_path / "abl" / "ablation.png").stat().st_size > 5000
    assert len(list((tmp_path / "abl" / "data").iterdir())) == 2  # one dataset per n_angles
    again = run_cmd([script, "s.yaml"], cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("reusing") == 3


def test_shipped_studies_give_valid_configs():
    """Every variant of the studies in jobs/configs loads into a valid config."""
    from hpc_adept.config import load_config

    for name in ("ablations.yaml", "ablation_seeds.yaml", "ablations_extended.yaml"):
        study = ablation.load_study(REPO / "jobs" / "configs" / name)
        for variant in study["variants"]:
            cfg = load_config(REPO / study["config"], ablation._sets(variant["set"]))
            for key, value in variant["set"].items():
                section, field = key.split(".")
                got = getattr(getattr(cfg, section), field)
                assert (list(got) if isinstance(got, tuple) else got) == value, (name, key)


def test_table_has_circuit_columns_when_evaluated():
    metrics = {"fbp": {"ber": 0.1, "pcc": 0.8, "ranges": {},
                       "circuit": {"via_recall": 0.9, "opens": 4, "shorts": 1}},
               "dip": {"ber": 0.2, "pcc": 0.9, "ranges": {},
                       "circuit": {"via_recall": None, "opens": 0, "shorts": 2}}}
    text, rows = ablation.table([("1/8", metrics)])
    assert text.splitlines()[0] == "| variant | method | BER | PCC | via recall | opens | shorts |"
    assert "| 1/8 | FBP | 0.1000 | 0.8000 | 0.9000 | 4 | 1 |" in text
    assert "| 1/8 | DIP | 0.2000 | 0.9000 | - | 0 | 2 |" in text
    assert rows[0]["via recall"] == 0.9 and rows[1]["shorts"] == 2

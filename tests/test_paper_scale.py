"""profiling/paper_scale.py: the scaled config, the Table-1 comparison, a smoke run."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from .conftest import IC_DEF, REPO, run_cmd

sys.path.insert(0, str(REPO / "profiling"))
import paper_scale  # noqa: E402


def _paper() -> dict:
    return yaml.safe_load((REPO / "jobs" / "configs" / "paper.yaml").read_text())


def test_paper_config_is_the_papers_problem():
    cfg = _paper()
    sim = cfg["simulate"]
    assert sim["n_angles"] == 125 and sim["volume_shape"] == [144, 160, 160]
    assert sim["frame_size"] == 512 and sim["projection_shape"] == [256, 256]
    assert sim["voxel_size_m"] == pytest.approx(27.2e-9) and sim["tilt_deg"] == 61.0
    assert cfg["ptycho"]["iterations"] == 100 and cfg["dip"]["iterations"] == 1500
    assert cfg["recon"]["methods"] == ["fbp", "dip"]


def test_scaled_config_scales_every_pixel_count(tmp_path):
    cfg = paper_scale.scaled_config(_paper(), 0.25, 16, 7, 9, tmp_path, "cpu", "volume")
    sim = cfg["simulate"]
    assert sim["volume_shape"] == cfg["recon"]["volume_shape"] == [36, 40, 40]
    assert sim["frame_size"] == 128 and sim["projection_shape"] == [64, 64]
    assert cfg["align"]["crop_shape"] == [64, 64] and sim["probe_diameter_px"] == 14
    assert sim["n_angles"] == 16 and cfg["ptycho"]["iterations"] == 7
    assert cfg["dip"] == {**_paper()["dip"], "iterations": 9, "decomposition": "volume"}
    assert cfg["output"]["dir"] == str(tmp_path / "run")
    assert cfg["evaluate"]["reference"] == str(tmp_path / "dataset" / "ground_truth.h5")
    full = paper_scale.scaled_config(_paper(), 1.0, None, 100, 1500, tmp_path, "cuda", "angles")
    assert full["simulate"]["volume_shape"] == [144, 160, 160]


def test_table_compares_with_the_paper_only_when_comparable():
    times = {"ptycho": 80.0, "align": 100.0, "recon": 300.0, "recon/dip": 290.0}
    rows = paper_scale.breakdown(times, 500.0)
    assert rows[0] == ("(1) iterative update: LSQ-ML", pytest.approx(160.2), 80.0)
    assert rows[1][2] == 400.0 and rows[2][2] == 480.0
    meta = {"problem": "p", "device": "cuda:0", "ranks": 1, "decomposition": "angles",
            "simulate_s": 1.0, "comparable": True}
    text = paper_scale.render(rows, meta)
    assert "| (1) iterative update: LSQ-ML | 160 | 80.0 | 2.0x |" in text
    assert "goal: data computation <= 600 s on one GPU: met (480 s)" in text
    reduced = paper_scale.render(rows, {**meta, "comparable": False})
    assert "NOT a comparison" in reduced and "2.0x" not in reduced and "goal" not in reduced


@pytest.mark.slow
def test_smoke_run_prints_the_breakdown(tmp_path):
    if not IC_DEF.is_file():
        pytest.skip("real IC layout not found (the paper config uses it)")
    args = ["profiling/paper_scale.py", "--scale", "0.25", "--angles", "6",
            "--lsqml-iterations", "3", "--dip-iterations", "3", "--device", "cpu",
            "--workdir", str(tmp_path)]
    result = run_cmd([*args, "--simulate-only"], cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "simulated the dataset" in result.stdout
    assert not (tmp_path / "run" / "timing.json").exists()
    result = run_cmd(args, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "reusing the dataset" in result.stdout
    assert "| (1) iterative update: LSQ-ML | 160 |" in result.stdout
    assert "|   recon/dip | - |" in result.stdout
    saved = json.loads((tmp_path / "paper_scale.json").read_text())
    assert saved["comparable"] is False and saved["timing"]["n_ranks"] == 1
    assert (tmp_path / "run" / "report.html").is_file()


def test_every_run_starts_from_a_clean_run_directory(tmp_path, monkeypatch, capsys):
    """An earlier run's per-scan results and checkpoints are gone before `adept run` (they
    would be reused and the stages timed at a fraction of their cost); the dataset stays."""
    seen = []

    def fake_job(args: list[str], ranks: int, log) -> float:
        run = tmp_path / "run"
        if args[0] == "simulate":
            (tmp_path / "dataset").mkdir(exist_ok=True)
        else:
            seen.append(sorted(p.name for p in run.iterdir()))
            (run / "ptycho").mkdir()
            (run / "ptycho" / "scan_000.h5").write_text("result")
            (run / "checkpoints").mkdir()
            (run / "timing.json").write_text(json.dumps(
                {"stages": {"ptycho": {"max_s": 2.0}}, "devices": ["cpu"], "n_ranks": 1}))
        return 1.0

    monkeypatch.setattr(paper_scale, "_job", fake_job)
    argv = ["paper_scale.py", "--scale", "0.25", "--angles", "4", "--device", "cpu",
            "--workdir", str(tmp_path)]
    for _ in range(2):
        monkeypatch.setattr(sys, "argv", argv)
        assert paper_scale.main() == 0
    assert seen == [[], []]
    out = capsys.readouterr().out
    assert "simulated the dataset" in out and "reusing the dataset" in out
    assert "simulate (not in Table 1) dataset reused" in out

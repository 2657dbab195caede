"""Scaling-study driver and the run comparison in profiling/."""

from __future__ import annotations

import csv
import sys

import pytest
import yaml

from .conftest import REPO, run_cmd

sys.path.insert(0, str(REPO / "profiling"))
import compare_runs  # noqa: E402
import scaling  # noqa: E402

CONFIG = {
    "data": {"path": "dataset"},
    "output": {"dir": "run"},
    "simulate": {"phantom": "procedural", "volume_shape": [16, 20, 20], "n_angles": 4,
                 "frame_size": 32, "seed": 2, "write_projections": False},
    "ptycho": {"iterations": 3},
    "runtime": {"device": "cpu"},
}


def _timing(stages: dict[str, float], wall: float) -> dict:
    return {"wall_s": wall, "n_ranks": 1,
            "stages": {k: {"max_s": v, "mean_s": v} for k, v in stages.items()}}


def test_tabulate_strong_and_weak():
    records = [
        {"problem": "p", "ranks": 1, "repeat": 0, "timing": _timing({"dip": 10.0}, 12.0)},
        {"problem": "p", "ranks": 1, "repeat": 1, "timing": _timing({"dip": 12.0}, 14.0)},
        {"problem": "p", "ranks": 2, "repeat": 0, "timing": _timing({"dip": 5.5}, 7.0)},
    ]
    rows = {(r["stage"], r["ranks"]): r for r in scaling.tabulate(records, "strong")}
    assert rows[("dip", 1)]["median_s"] == pytest.approx(11.0)
    assert rows[("dip", 1)]["min_s"] == pytest.approx(10.0)
    assert rows[("dip", 2)]["speedup"] == pytest.approx(2.0)
    assert rows[("dip", 2)]["efficiency"] == pytest.approx(1.0)
    assert rows[("total", 2)]["speedup"] == pytest.approx(13.0 / 7.0)
    weak = {(r["stage"], r["ranks"]): r for r in scaling.tabulate(records, "weak")}
    assert weak[("dip", 2)]["efficiency"] == pytest.approx(2.0)  # t(1) / t(2)


def test_bad_study_file_is_one_line(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"config": "c.yaml", "rank": [1]}))
    with pytest.raises(SystemExit, match=r"unknown keys \['rank'\]"):
        scaling.load_study(tmp_path / "s.yaml")


@pytest.mark.mpi
def test_study_runs_from_one_command(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    study = {"config": "c.yaml", "command": "ptycho", "prepare": ["simulate"],
             "ranks": [1, 2], "repeats": 1, "output": "study",
             "problems": [{"name": "tiny", "set": {"ptycho.iterations": 2}}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    result = run_cmd([str(REPO / "profiling" / "scaling.py"), "s.yaml"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with (tmp_path / "study" / "scaling.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["stage"], r["ranks"]) for r in rows} == {
        ("ptycho", "1"), ("ptycho", "2"), ("total", "1"), ("total", "2")}
    assert all(float(r["median_s"]) > 0 for r in rows)
    assert (tmp_path / "study" / "scaling.png").stat().st_size > 10_000
    assert "| tiny | ptycho | 2 |" in (tmp_path / "study" / "scaling.md").read_text()
    for ranks in (1, 2):
        timing = tmp_path / "study" / "tiny" / f"r{ranks}" / "rep0" / "timing.json"
        assert yaml.safe_load(timing.read_text())["n_ranks"] == ranks
    # The two runs side by side.
    out = tmp_path / "table.md"
    compare_runs.main([f"one={tmp_path / 'study/tiny/r1/rep0'}",
                       f"two={tmp_path / 'study/tiny/r2/rep0'}", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("| stage | one | two |")
    assert "| ranks | 1 | 2 |" in text

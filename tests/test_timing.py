"""Stage timers: reduction over ranks, the no-op when disabled, timing.json from the CLI."""

from __future__ import annotations

import json

import pytest
import yaml

from hpc_adept import timing

from .conftest import adept


def test_reduce_records_statistics():
    per_rank = [
        {"ptycho": {"count": 1, "host_s": 4.0}, "ptycho/lsqml": {"count": 3, "host_s": 3.0}},
        {"ptycho": {"count": 1, "host_s": 2.0}},
    ]
    out = timing.reduce_records(per_rank, wall_s=8.0)
    assert out["ptycho"] == pytest.approx(
        {"count": 1.0, "min_s": 2.0, "mean_s": 3.0, "max_s": 4.0,
         "imbalance": 4.0 / 3.0 - 1.0, "share": 3.0 / 8.0})
    # A rank that never entered a region counts zero seconds there.
    assert out["ptycho/lsqml"]["min_s"] == 0.0
    assert out["ptycho/lsqml"]["mean_s"] == pytest.approx(1.5)
    assert out["ptycho/lsqml"]["count"] == pytest.approx(1.5)


def test_regions_accumulate_and_disabled_is_free():
    recorder = timing.RECORDER
    recorder.reset()
    timing.enable(False)
    first = timing.region("a")
    assert first is timing.region("b")  # one shared no-op object, nothing recorded
    with first:
        pass
    assert recorder.records == {}
    timing.enable(True)
    try:
        for _ in range(3):
            with timing.region("stage/part"):
                sum(range(1000))
        summary = recorder.local_summary()
        assert summary["stage/part"]["count"] == 3
        assert summary["stage/part"]["host_s"] > 0
    finally:
        timing.enable(False)
        recorder.reset()


CONFIG = {
    "data": {"path": "dataset"},
    "output": {"dir": "run"},
    "simulate": {"phantom": "procedural", "volume_shape": [16, 20, 20], "n_angles": 4,
                 "frame_size": 32, "seed": 2, "write_projections": False},
    "ptycho": {"iterations": 3},
    "recon": {"volume_shape": [16, 20, 20]},
    "runtime": {"device": "cpu"},
}


@pytest.mark.mpi
def test_timing_json_over_two_ranks_and_commands(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    assert adept("simulate", "-c", "c.yaml", cwd=tmp_path).returncode == 0
    result = adept("ptycho", "-c", "c.yaml", cwd=tmp_path, n_ranks=2)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads((tmp_path / "run" / "timing.json").read_text())
    assert doc["n_ranks"] == 2 and doc["run"]["n_ranks"] == 2
    stage = doc["stages"]["ptycho"]
    assert 0 < stage["min_s"] <= stage["mean_s"] <= stage["max_s"] <= doc["wall_s"]
    lsqml = doc["regions"]["ptycho/lsqml"]
    assert lsqml["count"] == pytest.approx(2.0)  # four scans over two ranks, on average
    assert lsqml["mean_s"] < stage["mean_s"]
    assert len(doc["run"]["config_sha256"]) == 64
    assert "torch" in doc["versions"] and doc["devices"] == ["cpu"]
    # A later command adds its stage and keeps the earlier one.
    result = adept("recon", "-c", "c.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads((tmp_path / "run" / "timing.json").read_text())
    assert set(doc["stages"]) == {"ptycho", "recon"}
    assert set(doc["commands"]) == {"ptycho", "recon"}
    assert doc["regions"]["ptycho/lsqml"] == lsqml
    assert doc["regions"]["recon"]["n_ranks"] == 1
    # Timing off: no file is touched.
    (tmp_path / "run" / "timing.json").unlink()
    result = adept("recon", "-c", "c.yaml", "--set", "runtime.timing=false", cwd=tmp_path)
    assert result.returncode == 0 and not (tmp_path / "run" / "timing.json").exists()


def test_wall_times_cover_the_stages_after_reruns_and_commands_run_alone(tmp_path):
    """A rerun of `adept run` that skips finished stages, and a stage run alone afterwards,
    leave wall times that still add up to the stages in the file."""
    import time

    from hpc_adept.parallel.context import SERIAL

    def invocation(command: str, stage_s: dict[str, float], overhead_s: float) -> dict:
        timing.RECORDER.reset()
        timing.enable(True)
        start = time.perf_counter()
        for stage, seconds in stage_s.items():
            with timing.region(stage):
                time.sleep(seconds)
        time.sleep(overhead_s)
        return timing.write_timing(tmp_path, SERIAL, command, time.perf_counter() - start)

    def check(doc: dict, stages: set[str]) -> None:
        assert set(doc["stages"]) == stages
        stage_sum = sum(s["max_s"] for s in doc["stages"].values())
        assert stage_sum <= doc["wall_s"] <= stage_sum + 0.05, doc["commands"]
        assert doc["wall_s"] == pytest.approx(sum(c["wall_s"] for c in doc["commands"].values()))

    try:
        check(invocation("run", {"ptycho": 0.05, "align": 0.05}, 0.01), {"ptycho", "align"})
        doc = invocation("run", {"align": 0.02}, 0.01)  # ptycho skipped
        check(doc, {"ptycho", "align"})
        assert doc["commands"]["run"]["wall_s"] == pytest.approx(0.08, abs=0.02)
        check(invocation("run", {}, 0.0), {"ptycho", "align"})  # everything skipped
        doc = invocation("align", {"align": 0.04}, 0.0)  # the stage alone, again
        check(doc, {"ptycho", "align"})
        assert set(doc["commands"]) == {"run", "align"}
        assert doc["commands"]["run"]["wall_s"] == pytest.approx(0.05, abs=0.02)
    finally:
        timing.RECORDER.reset()
        timing.enable(False)

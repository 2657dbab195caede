"""profiling/bench_dip.py speed: every configuration runs and the ratios are printed."""

from __future__ import annotations

import re

import pytest

from .conftest import mpiexec_path, run_cmd


def test_speed_runs_all_configurations_side_by_side():
    if mpiexec_path() is None:
        pytest.skip("mpiexec not available")
    out = run_cmd(["profiling/bench_dip.py", "speed", "--shape", "16", "24", "24", "--angles",
                   "4", "--iterations", "1", "--warmup", "1", "--in-channels", "4",
                   "--channels", "4", "8", "--strides", "2", "2"], timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    times = dict(re.findall(r"^\s*(.+?):\s+([0-9.]+) ms/iteration", out.stdout, re.M))
    assert set(times) == {"1 rank x 1 thread", "1 rank x 2 threads",
                          "1 rank x 1 thread, memory to OS", "2 ranks x 1 thread, angles split",
                          "2 ranks x 1 thread, volume split"}
    assert all(float(t) > 0 for t in times.values())
    for how in ("angles", "volume"):
        assert re.search(rf"^{how} split: strong-scaling efficiency 1 -> 2 ranks \(1 thread "
                         rf"each\) [0-9.]+", out.stdout, re.M)
    assert re.search(r"1 rank [0-9.]+x faster than returning it to the OS", out.stdout)

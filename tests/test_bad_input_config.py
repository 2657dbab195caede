"""Bad input to the config, the evaluation, the report and ``adept run``: one clear line.

Each case is a defect found by an audit: a value without a bound, a malformed run file or a
junk reference that gave a traceback (or ran for minutes, or ate all memory) instead of one
``adept: error: ...`` line with exit code 2, or a report note.
"""

from __future__ import annotations

import numpy as np

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

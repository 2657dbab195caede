"""The README's Python example runs as written and does what its comments say."""

from __future__ import annotations

import re

import numpy as np
import torch

from .conftest import REPO


def _python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_python_example_runs():
    blocks = _python_blocks()
    assert len(blocks) == 1
    names: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), names)  # noqa: S102 - our own README
    projections, volume, adjoint, estimate = (names[k] for k in (
        "projections", "volume", "adjoint", "estimate"))
    assert projections.shape == (90, 32, 48) and estimate.shape == volume.shape
    y = torch.randn_like(projections)
    x = torch.randn_like(volume)
    op = names["op"]
    lhs = float(torch.sum(op.forward(x) * y))
    rhs = float(torch.sum(x * op.adjoint(y)))
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    energy = float(torch.sum(projections * projections))  # <Ax, Ax> = <x, A^T A x>
    assert abs(energy - float(torch.sum(volume * adjoint))) <= 1e-10 * energy
    inside = np.corrcoef(estimate.numpy().ravel(), volume.numpy().ravel())[0, 1]
    assert inside > 0.5  # FBP finds the line
    half = names["first_half"]
    assert half.range_shape == (45, 32, 48)
    torch.testing.assert_close(half.forward(volume), projections[:45])

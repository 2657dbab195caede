"""The DIP loss curve: total loss, data term and TV per iteration, with rollbacks marked."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpc_adept.report.figures import pyplot, save_figure


def save_loss_curve(path: str | Path, history: Mapping[str, Any]) -> Path:
    """Save the loss history of a DIP run (``dip_history.json`` content) as a PNG.

    Parameters
    ----------
    path : str or Path
        PNG file (written atomically).
    history : mapping
        ``iteration``, ``loss``, ``data``, ``tv`` (lists of equal length); optional
        ``rollbacks`` ([iteration, rolled back to] pairs) and ``best_iteration``.
    """
    plt = pyplot()
    it = np.asarray(history["iteration"], dtype=float)
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for key, style in (("loss", "-"), ("data", "--"), ("tv", ":")):
        values = np.asarray(history.get(key, []), dtype=float)
        if values.size == it.size and np.any(values > 0):
            ax.semilogy(it, np.where(values > 0, values, np.nan), style, label=key, lw=1.2)
    for i, (at, _) in enumerate(history.get("rollbacks", [])):
        ax.axvline(at, color="tab:red", lw=0.8, alpha=0.6,
                   label="rollback" if i == 0 else None)
    best = history.get("best_iteration")
    if best is not None and best >= 0:
        ax.axvline(best, color="tab:green", lw=0.8, ls="--", label=f"best (it {best})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("DIP loss", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)

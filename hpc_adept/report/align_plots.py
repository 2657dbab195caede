"""Figures of the alignment stage: shifts per angle and convergence per iteration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hpc_adept.report.figures import pyplot, save_figure


def plot_shifts(path: str | Path, angles_deg: np.ndarray, shifts_px: np.ndarray,
                reference_px: np.ndarray | None = None, title: str = "",
                intermediate: Mapping[str, np.ndarray] | None = None) -> Path:
    """Row and column shift of every projection against its rotation angle (PNG, atomic).

    Parameters
    ----------
    angles_deg : ndarray [n_angles], degrees
    shifts_px : ndarray [n_angles, 2], pixels (row, col)
    reference_px : ndarray [n_angles, 2], optional
        Known shifts to draw beside the estimates (tests, benchmarks).
    intermediate : mapping of label -> ndarray [n_angles, 2], optional
        Earlier estimates (e.g. at the end of each binning level), drawn faintly.
    """
    plt = pyplot()
    order = np.argsort(angles_deg)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharex=True)
    for axis, (ax, name) in enumerate(zip(axes, ("row (v)", "column (u)"), strict=True)):
        for label, earlier in (intermediate or {}).items():
            ax.plot(angles_deg[order], earlier[order, axis], "-", lw=0.6, alpha=0.5,
                    label=label)
        ax.plot(angles_deg[order], shifts_px[order, axis], ".-", ms=3, lw=0.8,
                label="estimated")
        if reference_px is not None:
            ax.plot(angles_deg[order], reference_px[order, axis], "x", ms=3, label="reference")
        if reference_px is not None or intermediate:
            ax.legend(fontsize=7)
        ax.set_xlabel("rotation angle [deg]")
        ax.set_ylabel(f"{name} shift [px]")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "alignment shifts (measured[r, c] = ideal[r - s_r, c - s_c])",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_convergence(path: str | Path, history: Sequence[dict], title: str = "") -> Path:
    """Residual RMS and largest shift update per iteration, levels marked (PNG, atomic).

    Parameters
    ----------
    history : sequence of dict
        Entries of :attr:`hpc_adept.align.AlignResult.history` (``level``,
        ``residual_rms``, ``max_update_px``, ``rms_update_px``).
    """
    plt = pyplot()
    steps = np.arange(len(history))
    levels = np.array([h["level"] for h in history])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].semilogy(steps, [h["residual_rms"] for h in history], ".-", ms=3)
    axes[0].set_ylabel("filtered residual RMS [rad]")
    axes[1].semilogy(steps, [max(h["max_update_px"], 1e-6) for h in history], ".-", ms=3,
                     label="largest update")
    axes[1].semilogy(steps, [max(h["rms_update_px"], 1e-6) for h in history], ".-", ms=3,
                     label="RMS update")
    axes[1].set_ylabel("shift update [px]")
    axes[1].legend(fontsize=8)
    for ax in axes:
        for k in np.flatnonzero(np.diff(levels)) + 0.5:
            ax.axvline(k, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("iteration (all levels; dashed: next binning level)")
        ax.grid(alpha=0.3)
    binning = [int(b) for b in dict.fromkeys(levels)]
    fig.suptitle(title or f"projection matching, binning levels {binning}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)

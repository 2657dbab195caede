"""Figures of the evaluation: per-layer BER / PCC against height, and PSD cuts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpc_adept.report.figures import pyplot, save_figure

__all__ = ["save_layer_metrics", "save_psd_cuts"]


def save_layer_metrics(path: str | Path, per_method: Mapping[str, Mapping[str, Any]],
                       z_boundaries_um: Sequence[float] = ()) -> Path:
    """BER and PCC of every z layer against height, all methods on one figure.

    Parameters
    ----------
    path : str or Path
        PNG file (written atomically).
    per_method : mapping of method -> mapping
        ``z_um`` [nz] layer heights (um), ``ber`` [nz], ``pcc`` [nz] (NaN = undefined),
        ``excluded`` [nz] bool (layers left out of the scores, shaded grey).
    z_boundaries_um : sequence of float
        Range boundaries, drawn as dashed lines.
    """
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True)
    shaded = False
    for name, layers in per_method.items():
        z = np.asarray(layers["z_um"], float)
        excluded = np.asarray(layers["excluded"], bool)
        for ax, key in zip(axes, ("ber", "pcc"), strict=True):
            values = np.asarray(layers[key], float).copy()
            values[excluded] = np.nan  # gaps where a layer is not scored
            ax.plot(z, values, marker=".", markersize=3, linewidth=1, label=name.upper())
        if not shaded:  # the exclusion comes from the reference: shade it once
            step = float(np.median(np.diff(z))) if len(z) > 1 else 1.0
            for ax in axes:
                for zk in z[excluded]:
                    ax.axvspan(zk - step / 2, zk + step / 2, color="0.85", linewidth=0)
            shaded = True
    for ax in axes:
        for boundary in z_boundaries_um:
            ax.axvline(boundary, color="k", linestyle="--", linewidth=0.8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("BER")
    axes[1].set_ylabel("PCC")
    axes[1].set_xlabel("z (um above the reference's bottom face)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("Per-layer scores against the reference (grey: excluded layers)",
                      fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_psd_cuts(path: str | Path, cuts: Mapping[str, Any]) -> Path:
    """Log PSD cuts side by side: kx-ky (top row) and ky-kz (bottom row) per volume.

    Parameters
    ----------
    path : str or Path
        PNG file (written atomically).
    cuts : mapping of name -> :class:`~hpc_adept.metrics.PsdCuts`
        One column each, in order (e.g. the reference, then every method). Each panel is
        shown relative to its own maximum, over 6 decades.
    """
    plt = pyplot()
    names = list(cuts)
    fig, axes = plt.subplots(2, len(names), figsize=(3.0 * len(names), 5.8), squeeze=False)
    for col, name in enumerate(names):
        cut = cuts[name]
        kx, ky, kz = (np.asarray(a) * 1e-6 for a in (cut.kx, cut.ky, cut.kz))  # 1/um
        panels = [(cut.kx_ky, (kx[0], kx[-1], ky[0], ky[-1]), "kx (1/um)", "ky (1/um)"),
                  (cut.ky_kz, (ky[0], ky[-1], kz[0], kz[-1]), "ky (1/um)", "kz (1/um)")]
        for row, (image, extent, xlabel, ylabel) in enumerate(panels):
            ax = axes[row, col]
            top = float(image.max())
            ax.imshow(image - top, origin="lower", extent=extent, aspect="auto",
                      cmap="magma", vmin=-6.0, vmax=0.0, interpolation="nearest")
            ax.set_title(f"{name}: {'kx-ky' if row == 0 else 'ky-kz'}", fontsize=8)
            ax.set_xlabel(xlabel, fontsize=7)
            ax.set_ylabel(ylabel, fontsize=7)
            ax.tick_params(labelsize=6)
    fig.suptitle("log10 power spectral density (relative to each panel's maximum)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)

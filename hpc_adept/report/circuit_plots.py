"""The circuit errors of each reconstruction marked on xy slices (headless matplotlib)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpc_adept.report.figures import pyplot, save_figure

__all__ = ["CIRCUIT_MARKERS", "error_slices", "save_circuit_errors"]

# kind of error -> (marker, colour, legend label)
CIRCUIT_MARKERS = {
    "missed_vias": ("o", "tab:red", "missed via"),
    "opens": ("x", "tab:orange", "open (gap)"),
    "shorts": ("+", "magenta", "short (bridge)"),
}


def error_slices(sites: Mapping[str, Sequence[Sequence[int]]], count: int) -> list[int]:
    """The ``count`` z slices holding the most error sites (ascending), at least one."""
    per_z = Counter(int(p[0]) for kind in CIRCUIT_MARKERS for p in sites.get(kind, ()))
    return sorted(z for z, _ in per_z.most_common(count))


def _layer_of(z: int, layers: Mapping[str, tuple[int, int]]) -> str:
    names = [name for name, (k0, k1) in layers.items() if k0 <= z < k1]
    return f" ({names[0]})" if names else ""


def _panel(ax: Any, method: str, z: int, panel: Mapping[str, Any]) -> None:
    """One xy slice: reconstructed metal grey, the true metal's outline blue, markers."""
    ax.imshow(np.asarray(panel["metal"][z], float), cmap="gray_r", vmin=0, vmax=2,
              interpolation="nearest")
    truth = np.asarray(panel["truth"][z], float)
    if truth.any() and not truth.all():
        ax.contour(truth, levels=[0.5], colors="tab:blue", linewidths=0.6)
    for kind, (marker, colour, _) in CIRCUIT_MARKERS.items():
        pts = [p for p in panel["sites"].get(kind, ()) if int(p[0]) == z]
        if pts:
            style = ({"facecolors": "none", "edgecolors": colour} if marker == "o"
                     else {"c": colour})
            ax.scatter([p[2] for p in pts], [p[1] for p in pts], marker=marker, s=60,
                       linewidths=1.5, **style)
    z_ref = z + int(panel.get("z0", 0))
    ax.set_title(f"{method.upper()} z = {z_ref}{_layer_of(z, panel.get('layers', {}))}",
                 fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def save_circuit_errors(path: str | Path, panels: Mapping[str, Mapping[str, Any]],
                        per_method: int = 3) -> Path | None:
    """Missed vias, opens and shorts of each method on the xy slices where they occur.

    Parameters
    ----------
    path : str or Path
        PNG file (written atomically).
    panels : mapping of method -> mapping
        ``metal`` [nz, ny, nx] bool (the binarised reconstruction), ``truth`` [nz, ny, nx]
        bool (the true metal), ``sites`` (``{kind: [(z, y, x), ...]}``, kinds of
        :data:`CIRCUIT_MARKERS`), optional ``layers`` (``{name: (start, stop)}``), all in
        voxels of the region shown, and optional ``z0`` (the region's first slice in the
        reference, for the titles).
    per_method : int
        Most slices shown per method (those with the most errors).

    Returns
    -------
    Path or None
        The figure, or None when no method has an error to show (nothing is written).
    """
    rows = [(m, error_slices(p["sites"], per_method)) for m, p in panels.items()]
    rows = [(m, zs) for m, zs in rows if zs]
    if not rows:
        return None
    plt = pyplot()
    n_cols = max(len(zs) for _, zs in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(3.0 * n_cols, 3.0 * len(rows)),
                             squeeze=False)
    for (method, zs), ax_row in zip(rows, axes, strict=True):
        for ax, z in zip(ax_row, zs, strict=False):
            _panel(ax, method, z, panels[method])
        for ax in ax_row[len(zs):]:
            ax.axis("off")
    handles = [plt.Line2D([], [], marker=m, color=c, linestyle="none", label=label,
                          markerfacecolor="none") for m, c, label in CIRCUIT_MARKERS.values()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, path)

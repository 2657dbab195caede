"""Headless figures of volumes: orthoslices side by side with one colour scale."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpc_adept.io import atomic_output


def pyplot():
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def busiest_depths(volume: np.ndarray, count: int) -> list[int]:
    """Depths of xy slices through the ``count`` most prominent layers of a volume.

    Metal layers occupy runs of slices; slices between them show nothing. The depth profile
    of the signal is split into runs above a tenth of its maximum and the strongest slice of
    each of the strongest runs is taken, so a thick layer does not take every panel.
    """
    score = np.abs(volume - np.median(volume)).sum(axis=(1, 2))
    above = score > 0.1 * score.max()
    peaks: list[tuple[float, int]] = []
    k = 0
    while k < len(score):
        if above[k]:
            end = k
            while end + 1 < len(score) and above[end + 1]:
                end += 1
            best = k + int(np.argmax(score[k:end + 1]))
            peaks.append((float(score[best]), best))
            k = end + 1
        else:
            k += 1
    chosen = [z for _, z in sorted(peaks, reverse=True)[:count]]
    for z in np.argsort(score)[::-1]:  # too few runs: fill with the next strongest slices
        if len(chosen) >= count:
            break
        if int(z) not in chosen:
            chosen.append(int(z))
    return sorted(chosen)


def save_orthoslices(path: str | Path, volumes: Mapping[str, np.ndarray],
                     z_indices: list[int] | None = None, title: str = "") -> Path:
    """Save xy slices at chosen depths and central xz / yz slices of several volumes.

    Parameters
    ----------
    path : str or Path
        PNG file (written atomically).
    volumes : mapping of name -> ndarray [nz, ny, nx]
        Volumes of one shape (e.g. ground truth, FBP); one row per volume, shown with a
        common colour scale so their values compare directly.
    z_indices : list of int, optional
        Depths of the xy slices (default: the three most structured depths of the first
        volume, see :func:`busiest_depths`).
    """
    plt = pyplot()
    names = list(volumes)
    shape = volumes[names[0]].shape
    nz, ny, nx = shape
    if z_indices is None:
        z_indices = busiest_depths(volumes[names[0]], 3)
    vmin = min(float(np.percentile(v, 0.5)) for v in volumes.values())
    vmax = max(float(np.percentile(v, 99.5)) for v in volumes.values())
    ncols = len(z_indices) + 2
    fig, axes = plt.subplots(len(names), ncols, figsize=(2.6 * ncols, 2.6 * len(names)),
                             squeeze=False)
    for row, name in enumerate(names):
        vol = volumes[name]
        panels = [(f"xy z={k}", vol[k]) for k in z_indices]
        panels.append((f"xz y={ny // 2}", vol[:, ny // 2, :]))
        panels.append((f"yz x={nx // 2}", vol[:, :, nx // 2]))
        for col, (label, image) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, origin="lower",
                      interpolation="nearest")
            ax.set_title(f"{name}: {label}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (parents created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)
    return path

"""Checkpoints of DIP training: atomic, tensors-only (``weights_only`` loading), one set per
problem.

A checkpoint is a dict of tensors, numbers, strings and lists (no pickled objects), written
to a temporary name and renamed, so a file named ``dip_XXXXXXX.pt`` is always complete. It
carries a fingerprint of the config and data. The checkpoints of one fingerprint form a
*set*, the subdirectory named by the fingerprint's first 16 hex digits
(:func:`checkpoint_set`): a run with other settings or data starts its own set instead of
being blocked by (or resuming) another problem's, and going back to earlier settings finds
their set again. Bounds: :data:`KEEP` checkpoints of the current training per set (plus as
many of a longer earlier training, see :func:`save_checkpoint`) and the :data:`KEEP_SETS`
most recently used sets (:func:`prepare_checkpoint_set`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpc_adept.errors import DataError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^dip_(\d{7})\.pt$")
_SET = re.compile(r"^[0-9a-f]{16}$")
KEEP = 2  # checkpoints per training in a set
KEEP_SETS = 3  # sets (settings) kept: the current one and the two used before it


def fingerprint(settings: dict[str, Any], *arrays: np.ndarray) -> str:
    """SHA-256 of a JSON-able settings dict and the bytes, shapes and dtypes of arrays."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype.str}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def checkpoint_path(directory: Path, iteration: int) -> Path:
    return Path(directory) / f"dip_{iteration:07d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(directory: Path, state: dict[str, Any], keep: int = KEEP) -> Path:
    """Write ``state`` (must hold ``iteration``) atomically and prune ``directory``.

    Kept: the newest ``keep`` checkpoints at or before the written one (this training) and
    the newest ``keep`` of all (a longer earlier training of the same problem, which a rerun
    with more iterations resumes); at most ``2 * keep`` files.

    Returns
    -------
    Path of the written file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, int(state["iteration"]))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    found = list_checkpoints(directory)
    mine = [p for it, p in found if it <= int(state["iteration"])][-keep:]
    for _, old in found[:-keep]:
        if old not in mine:
            old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(directory: Path, expected_fingerprint: str,
                           map_location: str | torch.device = "cpu",
                           max_iteration: int | None = None
                           ) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``directory`` at or before ``max_iteration`` (None:
    any), or None when there is none.

    Why the bound: a rerun asking for fewer iterations than a checkpoint holds must not get
    the longer training back; a checkpoint at iteration k <= n is the state an
    uninterrupted run of n iterations passes through (nothing in the training depends on
    the total count), so resuming from it gives that run's result.

    Raises
    ------
    DataError
        The checkpoint was written for a different config or data (never resumed; with one
        set per fingerprint this means a file copied in from elsewhere).
    """
    for it, path in reversed(list_checkpoints(directory)):
        if max_iteration is not None and it > max_iteration:
            continue
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - an unreadable file: try the previous one
            log.warning("dip: skipping unreadable checkpoint %s (%s)", path, exc)
            continue
        found = state.get("fingerprint")
        if found != expected_fingerprint:
            raise DataError(
                f"{path}: checkpoint written for a different dip config or input data "
                f"(fingerprint {str(found)[:12]} != {expected_fingerprint[:12]}); delete "
                f"{Path(directory)} or set dip.resume=false to start over"
            )
        return path, state
    return None


def checkpoint_set(root: Path, fingerprint_hex: str) -> Path:
    """The directory of the checkpoints of one problem (fingerprint) under ``root``."""
    return Path(root) / fingerprint_hex[:16]


def checkpoint_sets(root: Path) -> list[Path]:
    """The sets under ``root``, most recently used first."""
    root = Path(root)
    if not root.is_dir():
        return []
    sets = [p for p in root.iterdir() if p.is_dir() and _SET.match(p.name)]
    return sorted(sets, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def prepare_checkpoint_set(root: Path, expected_fingerprint: str, resume: bool = True,
                           keep_sets: int = KEEP_SETS) -> Path:
    """Make the set of ``expected_fingerprint`` the current one (call on one rank only).

    Moves checkpoints of the earlier flat layout (``root/dip_*.pt``) into the set of their
    own fingerprint, empties the current set when ``resume`` is False (start over), marks
    it as the most recently used and deletes the sets beyond the ``keep_sets`` most
    recently used ones.

    Returns
    -------
    Path of the current set (created).
    """
    root = Path(root)
    for _, path in list_checkpoints(root):  # written by versions without sets
        try:
            found = torch.load(path, map_location="cpu", weights_only=True).get("fingerprint")
        except Exception as exc:  # noqa: BLE001 - leave a file we cannot read where it is
            log.warning("dip: leaving unreadable checkpoint %s (%s)", path, exc)
            continue
        if isinstance(found, str) and len(found) >= 16:
            target = checkpoint_set(root, found)
            target.mkdir(parents=True, exist_ok=True)
            os.replace(path, target / path.name)
    current = checkpoint_set(root, expected_fingerprint)
    if not resume:
        shutil.rmtree(current, ignore_errors=True)
    current.mkdir(parents=True, exist_ok=True)
    os.utime(current)  # most recently used
    others = [s for s in checkpoint_sets(root) if s != current]  # (mtime ties)
    for old in others[max(0, keep_sets - 1):]:
        log.info("dip: deleting the checkpoints of earlier settings in %s (%d sets are "
                 "kept)", old, keep_sets)
        shutil.rmtree(old, ignore_errors=True)
    return current

"""Checkpoints of DIP training: atomic, tensors-only (``weights_only`` loading), last two kept.

A checkpoint is a dict of tensors, numbers, strings and lists (no pickled objects), written
to a temporary name and renamed, so a file named ``dip_XXXXXXX.pt`` is always complete. It
carries a fingerprint of the config and data; resuming with a different fingerprint is
refused with a clear message instead of silently mixing two problems.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpc_adept.errors import DataError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^dip_(\d{7})\.pt$")
KEEP = 2


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
    """Write ``state`` (must hold ``iteration``) atomically; delete all but the last ``keep``.

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
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(directory: Path, expected_fingerprint: str,
                           map_location: str | torch.device = "cpu"
                           ) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``directory``, or None when there is none.

    Raises
    ------
    DataError
        The newest checkpoint was written for a different config or data.
    """
    for _, path in reversed(list_checkpoints(directory)):
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

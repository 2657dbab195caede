"""Stage timers: host wall clock, CUDA events, NVTX ranges; reduced over ranks to timing.json.

Stages wrap their work in named regions::

    with timing.region("ptycho"):
        with timing.region("ptycho/lsqml", device=device):
            ...

A region always records host wall time. Given a CUDA device it also records a pair of CUDA
events on the current stream (read once, at the end, so timing adds no synchronisation
to the work) and pushes an NVTX range of the same name for Nsight Systems. When timing is
disabled, :func:`region` returns one shared no-op context manager: it costs a function
call.

At the end of a command :func:`write_timing` gathers every rank's records to rank 0 and
writes ``timing.json`` (DESIGN section 4): per region the count and min/mean/max seconds
over ranks, the imbalance ``max / mean - 1`` and the share of the wall time, plus the run's
metadata. A run directory keeps the regions of earlier commands (``adept ptycho`` then
``adept recon`` give one file with both); a region measured again replaces the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_adept import __version__

SCHEMA_VERSION = 1
_NULL = contextlib.nullcontext()


@dataclass
class _Record:
    """Accumulated time of one region on this rank (seconds)."""

    count: int = 0
    host_s: float = 0.0
    events: list[tuple[Any, Any]] = field(default_factory=list)


class Recorder:
    """Regions measured on this rank."""

    def __init__(self) -> None:
        self.enabled = False
        self.records: dict[str, _Record] = {}
        self.started = time.time()
        self.devices: set[str] = set()

    def reset(self) -> None:
        self.records.clear()
        self.started = time.time()
        self.devices.clear()

    @contextlib.contextmanager
    def _measure(self, name: str, device: Any) -> Iterator[None]:
        record = self.records.setdefault(name, _Record())
        cuda = device is not None and getattr(device, "type", "cpu") == "cuda"
        pair = None
        if cuda:
            import torch

            torch.cuda.nvtx.range_push(name)
            pair = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            pair[0].record()
        start = time.perf_counter()
        try:
            yield
        finally:
            record.host_s += time.perf_counter() - start
            record.count += 1
            if pair is not None:
                import torch

                pair[1].record()
                record.events.append(pair)
                torch.cuda.nvtx.range_pop()
                self.devices.add(str(device))

    def local_summary(self) -> dict[str, dict[str, float]]:
        """``{region: {count, host_s, device_s}}`` of this rank (device_s: CUDA events)."""
        out: dict[str, dict[str, float]] = {}
        for name, rec in self.records.items():
            entry = {"count": rec.count, "host_s": rec.host_s}
            if rec.events:
                import torch

                torch.cuda.synchronize()
                entry["device_s"] = sum(a.elapsed_time(b) for a, b in rec.events) / 1000.0
            out[name] = entry
        return out


RECORDER = Recorder()


def enable(on: bool = True) -> None:
    """Switch timing on (the CLI does) or off."""
    RECORDER.enabled = on


def region(name: str, device: Any = None) -> contextlib.AbstractContextManager:
    """Context manager timing the block as region ``name`` ('stage' or 'stage/part').

    Parameters
    ----------
    name : str
        Region name; the part before the first ``/`` is the stage.
    device : torch.device, optional
        When CUDA: also CUDA events and an NVTX range.
    """
    if not RECORDER.enabled:
        return _NULL
    return RECORDER._measure(name, device)


def reduce_records(per_rank: list[dict[str, dict[str, float]]],
                   wall_s: float) -> dict[str, dict[str, float]]:
    """Statistics over ranks of every region.

    Parameters
    ----------
    per_rank : list of dict
        :meth:`Recorder.local_summary` of every rank; a rank without a region counts 0 s.
    wall_s : float
        Wall time of the command (s), for the share.

    Returns
    -------
    dict
        ``{region: {count, min_s, mean_s, max_s, imbalance, share}}`` (+ ``device_*`` from
        CUDA events), ``count`` the mean number of entries per rank.
    """
    names = sorted({name for rank in per_rank for name in rank})
    n = max(len(per_rank), 1)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        host = [rank.get(name, {}).get("host_s", 0.0) for rank in per_rank]
        counts = [rank.get(name, {}).get("count", 0) for rank in per_rank]
        mean = sum(host) / n
        entry = {
            "count": sum(counts) / n,
            "min_s": min(host),
            "mean_s": mean,
            "max_s": max(host),
            "imbalance": (max(host) / mean - 1.0) if mean > 0 else 0.0,
            "share": mean / wall_s if wall_s > 0 else 0.0,
        }
        device = [rank[name]["device_s"] for rank in per_rank if "device_s" in rank.get(name, {})]
        if device:
            entry.update(device_min_s=min(device), device_mean_s=sum(device) / len(device),
                         device_max_s=max(device))
        out[name] = entry
    return out


def _git_revision() -> str:
    source = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def library_versions() -> dict[str, str]:
    """Versions of the libraries the numbers depend on (missing ones are left out)."""
    import importlib.metadata as md

    out = {"hpc_adept": __version__, "python": platform.python_version()}
    for dist in ("numpy", "torch", "h5py", "mpi4py", "mpich", "cupy-cuda12x", "scipy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def run_metadata(config_text: str | None, n_ranks: int, hosts: list[str],
                 devices: list[str]) -> dict[str, Any]:
    """Where and how the numbers were measured."""
    env = os.environ
    return {
        "git_revision": _git_revision(),
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest()
        if config_text is not None else None,
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_nodes": env.get("SLURM_JOB_NODELIST"),
        "n_nodes": len(set(hosts)),
        "hosts": sorted(set(hosts)),
        "n_ranks": n_ranks,
        "devices": devices,
        "versions": library_versions(),
    }


def write_timing(run_dir: str | Path, ctx: Any, command: str, wall_s: float,
                 config_text: str | None = None) -> dict[str, Any] | None:
    """Gather this command's regions from every rank; rank 0 merges them into timing.json.

    ``wall_s`` is this rank's wall time of the command; the file holds the largest.

    Collective: every rank must call it. Returns the written document on rank 0.
    """
    import torch

    from hpc_adept.io import write_json_atomic
    from hpc_adept.parallel import gather_objects

    device = (f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()}"
              if RECORDER.devices and torch.cuda.is_available() else "cpu")
    mine = {"regions": RECORDER.local_summary(), "host": socket.gethostname(),
            "device": device, "wall_s": wall_s}
    parts = gather_objects(ctx, mine)
    if not ctx.is_root:
        return None
    wall_s = max(p["wall_s"] for p in parts)  # the command lasts until its slowest rank ends
    path = Path(run_dir) / "timing.json"
    previous = _read_previous(path)
    regions = dict(previous.get("regions", {}))
    stages = {name.split("/")[0] for rank in parts for name in rank["regions"]}
    commands = _commands_without(previous.get("commands", {}), regions, stages, command)
    # Regions of a stage measured again replace the old ones.
    regions = {k: v for k, v in regions.items() if k.split("/")[0] not in stages}
    # The command's wall time covers the products it stands for: a rerun of `adept run`
    # that skipped finished stages adds their earlier times to its own.
    kept_s = sum(v.get("max_s", 0.0) for k, v in regions.items()
                 if "/" not in k and v.get("command") == command)
    fresh = reduce_records([p["regions"] for p in parts], wall_s)
    for entry in fresh.values():
        entry["command"] = command
        entry["n_ranks"] = len(parts)
    regions.update(fresh)
    doc = {
        "schema": SCHEMA_VERSION,
        "commands": {**commands,
                     command: {"wall_s": wall_s + kept_s, "n_ranks": len(parts),
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}},
        "wall_s": None,
        "n_ranks": len(parts),
        "stages": {},
        "regions": dict(sorted(regions.items())),
        "run": run_metadata(config_text, len(parts), [p["host"] for p in parts],
                            sorted({p["device"] for p in parts})),
    }
    doc["stages"] = {k: v for k, v in doc["regions"].items() if "/" not in k}
    doc["wall_s"] = sum(c["wall_s"] for c in doc["commands"].values())
    doc["devices"] = doc["run"]["devices"]
    doc["versions"] = doc["run"]["versions"]
    write_json_atomic(path, doc)
    return doc


def _commands_without(commands: dict[str, Any], regions: dict[str, Any], stages: set[str],
                      command: str) -> dict[str, Any]:
    """The earlier commands' entries, less the stages now measured again by ``command``.

    A stage run again (e.g. ``adept recon`` after ``adept run``) replaces its old regions;
    its old time leaves the wall time of the command that measured it, so that the wall
    times of the file add up to the stages it holds. ``command``'s own entry is dropped (the
    caller writes it anew); an entry left with no time is dropped too.
    """
    left: dict[str, Any] = {}
    for name, entry in commands.items():
        if name == command or not isinstance(entry, dict):
            continue
        wall = float(entry.get("wall_s", 0.0))
        for stage in stages:
            old = regions.get(stage)
            if isinstance(old, dict) and old.get("command") == name:
                wall -= float(old.get("max_s", 0.0))
        if wall > 1e-9:
            left[name] = {**entry, "wall_s": wall}
    return left


def _read_previous(path: Path) -> dict[str, Any]:
    """An earlier timing.json of this run directory; unreadable ones are replaced."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_VERSION:
        return {}
    return doc

"""``adept run``: ptycho -> align -> recon -> evaluate -> report, continuing after failures.

A stage is skipped when it finished before with the same settings (a hash of the config
sections it reads), the same inputs and its outputs untouched since: ``output.dir/
pipeline_state.json`` records, per stage, the settings hash and the identity (path, size,
modification time in ns) of every input and output file. Any difference (a scan added,
removed or replaced, a dataset swapped in place, a file restored from a backup with its old
time stamp, an output replaced) reruns the stage, and then every stage after it, whose
inputs changed. Stage commands run on their own (``adept align``, the SLURM chain) record
their stage the same way. Every output is written atomically, so an interrupted run leaves
either a complete file or none, and rerunning the same command continues where it stopped.
The decision is made on rank 0 and broadcast, so all ranks run the same stages.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_adept import timing
from hpc_adept.config import Config
from hpc_adept.errors import ConfigError
from hpc_adept.parallel import ParallelContext, barrier, bcast

log = logging.getLogger(__name__)

STATE_FILE = "pipeline_state.json"


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    Attributes
    ----------
    name : str
        Stage name (also its timing region).
    module : str
        Module with ``plan_<name>(cfg)`` and ``run_<name>(cfg, ctx, plan, device)``.
    sections : tuple of str
        Config sections (or ``section.key``) whose values change the stage's result.
    inputs, outputs : callable
        ``cfg -> list[Path]`` of the files read and written.
    enabled : callable
        ``cfg -> bool``: whether the run includes the stage.
    """

    name: str
    module: str
    sections: tuple[str, ...]
    inputs: Callable[[Config], list[Path]]
    outputs: Callable[[Config], list[Path]]
    enabled: Callable[[Config], bool] = lambda cfg: True


def _run_dir(cfg: Config) -> Path:
    return Path(cfg.output.dir)


def _dataset_files(cfg: Config) -> list[Path]:
    return sorted(Path(cfg.data.path).glob("*.cxi")) if cfg.data.path else []


def _recon_input(cfg: Config) -> list[Path]:
    run = _run_dir(cfg)
    if cfg.recon.input == "projections":
        return [run / "projections.h5"]
    return [run / "aligned.h5"]  # 'auto' in the pipeline: align always writes aligned.h5


def _volumes(cfg: Config) -> list[Path]:
    return [_run_dir(cfg) / f"volume_{m}.h5" for m in cfg.recon.methods]


def _reference(cfg: Config) -> list[Path]:
    return [Path(cfg.evaluate.reference)] if cfg.evaluate.reference else []


STAGES: tuple[Stage, ...] = (
    Stage("ptycho", "hpc_adept.stages.ptycho", ("data", "ptycho", "runtime.seed"),
          _dataset_files, lambda cfg: [_run_dir(cfg) / "projections.h5"]),
    # recon.volume_shape: the alignment's volume unless align.volume_shape is set
    Stage("align", "hpc_adept.stages.align", ("align", "recon.volume_shape", "runtime.seed"),
          lambda cfg: [_run_dir(cfg) / "projections.h5"],
          lambda cfg: [_run_dir(cfg) / "aligned.h5"]),
    Stage("recon", "hpc_adept.stages.recon", ("recon", "dip", "runtime.seed"),
          _recon_input, _volumes),
    Stage("evaluate", "hpc_adept.stages.evaluate", ("evaluate", "recon.methods", "runtime.seed"),
          lambda cfg: _volumes(cfg) + _reference(cfg),
          lambda cfg: [_run_dir(cfg) / "metrics.json"],
          enabled=lambda cfg: cfg.evaluate.reference is not None),
)


def settings_hash(cfg: Config, sections: tuple[str, ...]) -> str:
    """Hash of the config values a stage depends on."""
    plain = cfg.to_dict()
    picked: dict[str, Any] = {}
    for item in sections:
        section, _, key = item.partition(".")
        picked[item] = plain[section][key] if key else plain[section]
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


def _valid_entry(entry: Any) -> bool:
    """Whether a state entry is what :func:`_record` writes (a mapping with a hash)."""
    return isinstance(entry, dict) and isinstance(entry.get("settings"), str)


def file_identity(paths: list[Path]) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` of each file (``[path, None, None]`` when missing).

    Size and modification time to the nanosecond change whenever a file is rewritten or
    replaced (a copy keeping the old time stamp keeps another file's time, not this one's),
    without reading data files of many GB.
    """
    identity: list[list[Any]] = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            identity.append([str(path), None, None])
        else:
            identity.append([str(path), stat.st_size, stat.st_mtime_ns])
    return identity


def _read_state(run_dir: Path) -> dict[str, Any]:
    """The record of finished stages in ``run_dir``; {} when there is none.

    The file is untrusted (edited, damaged, from another version): an unreadable file or a
    malformed entry is dropped with a warning, so that its stages count as not up to date
    and run again, rather than stopping the run.
    """
    path = run_dir / STATE_FILE
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        log.warning("run: ignoring unreadable %s (%s); every stage counts as not done",
                    path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return {}
    if not isinstance(state, dict):
        log.warning("run: ignoring %s: a JSON object was expected, got %s; every stage "
                    "counts as not done", path, type(state).__name__)
        return {}
    bad = [name for name, entry in state.items() if not _valid_entry(entry)]
    if bad:
        log.warning("run: ignoring malformed entries of %s: %s; they count as not done",
                    path, ", ".join(repr(name) for name in bad))
    return {name: entry for name, entry in state.items() if _valid_entry(entry)}


def up_to_date(stage: Stage, cfg: Config, state: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``stage`` can be skipped, and why (or why not).

    A missing or malformed entry of ``state`` counts as not up to date.
    """
    outputs = stage.outputs(cfg)
    missing = [p.name for p in outputs if not p.is_file()]
    if missing:
        return False, f"missing {', '.join(missing)}"
    entry = state.get(stage.name)
    if not _valid_entry(entry):
        return False, "no record of a finished run"
    if entry.get("settings") != settings_hash(cfg, stage.sections):
        return False, "settings changed"
    if entry.get("inputs") != file_identity(stage.inputs(cfg)):
        return False, "inputs changed"
    if entry.get("outputs") != file_identity(outputs):
        return False, "outputs changed since"
    return True, "same settings, inputs and outputs as its last run"


@dataclass(frozen=True)
class RunPlan:
    """The stages of this run and the plan of the first one that has work to do."""

    stages: tuple[Stage, ...]
    first_plan: Any = None
    first_stage: str | None = None

    def validate(self, ctx: ParallelContext) -> None:
        """The first stage's checks that read the data (collective), before any work."""
        if hasattr(self.first_plan, "validate"):
            self.first_plan.validate(ctx)


def plan_run(cfg: Config) -> RunPlan:
    """Checks before any work: the stages are importable, the evaluation's reference is
    valid, and the first stage that has work to do can start.

    Raises
    ------
    ConfigError, DataError
        A stage missing from this version, a bad ``evaluate.reference``, or what the first
        stage's plan finds.
    """
    stages = tuple(s for s in STAGES if s.enabled(cfg))
    state = _read_state(_run_dir(cfg))
    for stage in stages:
        try:
            importlib.import_module(stage.module)
        except ModuleNotFoundError as exc:
            if exc.name != stage.module:
                raise
            raise ConfigError(f"'adept run': the {stage.name} stage is not available in this "
                              f"version (see README: what exists)") from None
    if any(stage.name == "evaluate" for stage in stages):
        # Why read it now: a junk reference would otherwise stop the run only at its end,
        # after the ptycho, align and recon stages.
        from hpc_adept.stages.evaluate import check_reference

        check_reference(cfg)
    first = next((s for s in stages if not up_to_date(s, cfg, state)[0]), None)
    if first is None:
        return RunPlan(stages)
    return RunPlan(stages, _plan(first, cfg), first.name)


def _plan(stage: Stage, cfg: Config) -> Any:
    module = importlib.import_module(stage.module)
    return getattr(module, f"plan_{stage.name}")(cfg)


def run_pipeline(cfg: Config, ctx: ParallelContext, plan: RunPlan, device: Any) -> None:
    """Run (or skip) every stage in order on all ranks."""
    run_dir = _run_dir(cfg)
    t0 = time.perf_counter()
    for stage in plan.stages:
        decision = None
        if ctx.is_root:
            decision = up_to_date(stage, cfg, _read_state(run_dir))
        skip, reason = bcast(ctx, decision)
        if skip:
            log.info("run: %s skipped (%s)", stage.name, reason)
            continue
        log.info("run: %s (%s)", stage.name, reason)
        with timing.region(stage.name, device):  # the stage's imports count to it
            module = importlib.import_module(stage.module)
            if stage.name == plan.first_stage:  # planned and validated before the work
                stage_plan = plan.first_plan
            else:
                stage_plan = getattr(module, f"plan_{stage.name}")(cfg)
                if hasattr(stage_plan, "validate"):  # data checks, memory guard: collective
                    stage_plan.validate(ctx)
            getattr(module, f"run_{stage.name}")(cfg, ctx, stage_plan, device)
        barrier(ctx)
        if ctx.is_root:
            _record(run_dir, stage, cfg)
    if ctx.is_root:
        log.info("run: stages done in %.1f s", time.perf_counter() - t0)


def _record(run_dir: Path, stage: Stage, cfg: Config) -> None:
    from hpc_adept.io import write_json_atomic

    state = _read_state(run_dir)
    state[stage.name] = {"settings": settings_hash(cfg, stage.sections),
                         "inputs": file_identity(stage.inputs(cfg)),
                         "outputs": file_identity(stage.outputs(cfg)),
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(run_dir / STATE_FILE, state)


def record_stage_command(name: str, cfg: Config) -> None:
    """After ``adept <name>`` finished on its own: record it as ``adept run`` would, so a
    later run skips it when nothing changed and reruns what depends on its new outputs.

    Call on one rank (rank 0). Names that are no pipeline stage (``simulate``) are ignored.
    """
    stage = next((s for s in STAGES if s.name == name), None)
    if stage is not None:
        _record(_run_dir(cfg), stage, cfg)

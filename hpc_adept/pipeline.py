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
The decision is made on rank 0 and broadcast, so all ranks run the same stages. The stages,
and what each reads and writes, come from the stage table (:mod:`hpc_adept.stages.registry`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_adept import timing
from hpc_adept.config import Config
from hpc_adept.parallel import ParallelContext, barrier, bcast
from hpc_adept.stages.protocol import Stage, StagePlan

log = logging.getLogger(__name__)

STATE_FILE = "pipeline_state.json"


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
    first_plan: StagePlan | None = None
    first_stage: str | None = None

    def validate(self, ctx: ParallelContext, device: Any) -> None:
        """The first stage's checks that read the data (collective), before any work."""
        if self.first_plan is not None:
            self.first_plan.validate(ctx, device)


def plan_run(cfg: Config, stages: tuple[Stage, ...]) -> RunPlan:
    """Checks before any work: the stages are importable, the evaluation's reference is
    valid, and the first stage that has work to do can start.

    ``stages`` are the steps of the run in order (:func:`hpc_adept.stages.registry.run_stages`).

    Raises
    ------
    ConfigError, DataError
        A bad ``evaluate.reference``, or what the first stage's plan finds.
    """
    stages = tuple(s for s in stages if s.enabled(cfg))
    state = _read_state(Path(cfg.output.dir))
    for stage in stages:  # an import error (a missing library) stops the run before it starts
        stage.functions()
    if any(stage.name == "evaluate" for stage in stages):
        # Why read it now: a junk reference would otherwise stop the run only at its end,
        # after the ptycho, align and recon stages.
        from hpc_adept.stages.evaluate import check_reference

        check_reference(cfg)
    first = next((s for s in stages if not up_to_date(s, cfg, state)[0]), None)
    if first is None:
        return RunPlan(stages)
    return RunPlan(stages, first.plan(cfg), first.name)


def run_pipeline(cfg: Config, ctx: ParallelContext, plan: RunPlan, device: Any) -> None:
    """Run (or skip) every stage in order on all ranks."""
    run_dir = Path(cfg.output.dir)
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
            functions = stage.functions()
            if stage.name == plan.first_stage:  # planned and validated before the work
                stage_plan = plan.first_plan
            else:
                stage_plan = functions.plan(cfg)
                stage_plan.validate(ctx, device)  # data checks, memory guard: collective
            functions.run(cfg, ctx, stage_plan, device)
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


def record_stage_command(stage: Stage, cfg: Config) -> None:
    """After ``adept <stage>`` finished on its own: record it as ``adept run`` would, so a
    later run skips it when nothing changed and reruns what depends on its new outputs.

    Call on one rank (rank 0), for the steps of ``adept run`` only.
    """
    _record(Path(cfg.output.dir), stage, cfg)

"""The ``adept`` command (also ``python -m hpc_adept``).

Every stage follows the same steps on every rank: load and validate the config, plan the
stage against the file system (all checks, no output), then run. Problems found before the
work, on any rank, stop every rank and are reported once, by rank 0, as one line with exit
code 2; an error during the work on any rank is printed by that rank and ends the whole job
(MPI abort), so no rank is left waiting in a collective. Every failure is one line: the
traceback of an unexpected one goes to ``<output.dir>/crash_rank<N>.txt`` (and to the
terminal with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpc_adept import __version__
from hpc_adept.errors import EXIT_STOPPED, AdeptError, ConfigError, StopRequested

log = logging.getLogger("hpc_adept")

EXIT_USAGE = 2
STAGES = ("simulate", "ptycho", "align", "recon", "evaluate", "run")
NOT_YET: dict[str, str] = {}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adept",
        description="ADePt ptycho-laminography of integrated circuits (MPI + GPUs).",
    )
    parser.add_argument("--version", action="version", version=f"hpc_adept {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "simulate": "IC phantom + simulated ptycho-laminography dataset",
        "ptycho": "LSQ-ML ptychography of every scan -> projections.h5",
        "align": "projection-matching alignment + center crop -> aligned.h5",
        "recon": "volume reconstruction (fbp, dip) -> volume_*.h5",
        "evaluate": "BER / PCC / PSD against a reference -> metrics.json",
        "run": "all stages in order",
    }
    for name in STAGES:
        p = sub.add_parser(name, help=helps[name])
        p.add_argument("-c", "--config", required=True, help="YAML configuration file")
        p.add_argument("--set", dest="overrides", nargs="+", action="append", default=[],
                       metavar="KEY=VALUE",
                       help="override config keys (dotted, values parsed as YAML); repeatable")
        p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p = sub.add_parser("report", help="HTML/Markdown report of a run directory")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def _stage_runner(command: str) -> Callable:
    """(plan, run) functions of a stage; imported lazily to keep ``--help`` fast."""
    if command == "simulate":
        from hpc_adept.stages.simulate import plan_simulation, run_simulate

        return lambda cfg: (plan_simulation(cfg),
                            lambda cfg, ctx, plan, device: run_simulate(cfg, ctx, plan))
    if command == "ptycho":
        from hpc_adept.stages.ptycho import plan_ptycho, run_ptycho

        return lambda cfg: (plan_ptycho(cfg), run_ptycho)
    if command == "align":
        from hpc_adept.stages.align import plan_align, run_align

        return lambda cfg: (plan_align(cfg), run_align)
    if command == "recon":
        from hpc_adept.stages.recon import plan_recon, run_recon

        return lambda cfg: (plan_recon(cfg), run_recon)
    if command == "evaluate":
        from hpc_adept.stages.evaluate import plan_evaluate, run_evaluate

        return lambda cfg: (plan_evaluate(cfg), run_evaluate)
    if command == "run":
        from hpc_adept.pipeline import plan_run, run_pipeline

        return lambda cfg: (plan_run(cfg), run_pipeline)
    raise ConfigError(f"'adept {command}': {NOT_YET[command]} is not available in this "
                      f"version (see README: what exists)")


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _problem_line(exc: BaseException, traceback_at: str = "") -> str:
    """One line for any failure: the message of our errors, the file and reason of an
    OSError (disk full, permissions), the type and message of anything else (a bug), with
    where its traceback is (``traceback_at``: a file) or how to see it."""
    if isinstance(exc, AdeptError):
        return _error_line(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    see = f"the traceback is in {traceback_at}" if traceback_at else "--debug shows the traceback"
    return f"{type(exc).__name__}: {_error_line(exc)} (unexpected: please report it; {see})"


def _exit_code(exc: BaseException) -> int:
    return EXIT_USAGE if isinstance(exc, AdeptError) else 1


def _crash_report(path: str) -> bool:
    """Save the current exception's traceback in ``path``; whether that worked (best
    effort: the error line has reached the user already, even when the disk is the
    problem)."""
    from hpc_adept.io import write_text_atomic

    try:
        write_text_atomic(path, traceback.format_exc())
    except Exception:  # noqa: BLE001 - the original error matters, not this one
        return False
    return True


def _checked(ctx: Any, debug: bool, step: Callable[[], Any]) -> tuple[int, str] | None:
    """Run a phase-1 ``step`` on this rank: None, or (exit code, the error line's tail).

    Ctrl-C ends every rank at once (exit 130).
    """
    try:
        step()
    except KeyboardInterrupt:
        print(f"adept: interrupted (rank {ctx.rank})", file=sys.stderr)
        ctx.abort(130)
    except Exception as exc:  # noqa: BLE001 - reported as one line by the caller
        if debug:
            traceback.print_exc()
        where = f" (rank {ctx.rank})" if ctx.is_parallel and not ctx.is_root else ""
        return _exit_code(exc), f"{where}: {_problem_line(exc)}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    from hpc_adept.log import setup_logging
    from hpc_adept.parallel import get_context
    from hpc_adept.parallel.collectives import first_problem

    ctx = get_context()
    setup_logging(ctx.rank, ctx.size)
    overrides = [item for group in getattr(args, "overrides", []) for item in group]

    # Phase 1: everything that can be checked before work, in three steps: the config and
    # the plan; this rank's device; the checks that read the data (collective inside). A
    # rank that finds a problem must not leave the others to go on alone (they would wait
    # for it in their next collective), so after each step the ranks agree on the first
    # problem found, and every step turns its exceptions into that problem.
    if args.command == "report":  # rank 0 reads files and writes the report: no agreement
        problem = _checked(ctx, args.debug, lambda: _report(args.run_dir, ctx))
        if problem is not None and ctx.is_root:
            print(f"adept: error{problem[1]}", file=sys.stderr)
        return problem[0] if problem else 0
    state: dict[str, Any] = {}

    def configure() -> None:
        from hpc_adept.config import load_config

        cfg = load_config(args.config, overrides)
        setup_logging(ctx.rank, ctx.size, cfg.runtime.log_level)
        state["plan"], state["run"] = _stage_runner(args.command)(cfg)
        _check_output_dir(cfg.output.dir)
        state["cfg"] = cfg

    def take_device() -> None:
        from hpc_adept.backend import (
            keep_freed_host_memory,
            select_torch_device,
            set_torch_threads,
        )

        cfg = state["cfg"]
        state["device"] = select_torch_device(cfg.runtime.device, ctx.local_rank)
        set_torch_threads(cfg.runtime.torch_threads, ctx.local_size)
        _use_projector(cfg.runtime.projector, state["device"])
        if cfg.runtime.keep_host_memory:
            keep_freed_host_memory()

    def validate() -> None:  # checks that read the data, shared by the ranks
        if hasattr(state["plan"], "validate"):
            state["plan"].validate(ctx)

    for step in (configure, take_device, validate):
        problem = first_problem(ctx, _checked(ctx, args.debug, step))
        if problem is not None:
            code, line = problem
            if ctx.is_root:
                print(f"adept: error{line}", file=sys.stderr)
            return code
    cfg, plan, run, device = state["cfg"], state["plan"], state["run"], state["device"]

    # Phase 2: the work. Any failure on any rank ends the job.
    try:
        if ctx.is_root:
            _write_resolved_config(cfg)
            if args.command != "simulate":
                from hpc_adept.log import add_log_file

                add_log_file(Path(cfg.output.dir) / "adept.log", ctx.rank, ctx.size,
                             cfg.runtime.log_level)
        log.info("adept %s %s: %d rank(s), device %s", __version__, args.command, ctx.size,
                 device)
        _timed_run(args.command, run, cfg, ctx, plan, device)
        if args.command == "run" and ctx.is_root:
            from hpc_adept.report.document import write_report

            html_path, _ = write_report(cfg.output.dir)
            log.info("run: report %s", html_path)
    except StopRequested as exc:  # every rank stops at the same point, after a checkpoint
        if ctx.is_root:
            print(f"adept: stopped: {_error_line(exc)}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print(f"adept: interrupted (rank {ctx.rank})", file=sys.stderr)
        ctx.abort(130)
    except Exception as exc:  # noqa: BLE001 - every failure must end all ranks
        where = f" (rank {ctx.rank})" if ctx.is_parallel else ""
        expected = isinstance(exc, AdeptError | OSError)
        crash = "" if expected else str(Path(cfg.output.dir) / f"crash_rank{ctx.rank}.txt")
        # The line first, at once: the other ranks may end the job any moment now.
        print(f"adept: error{where}: {_problem_line(exc, crash)}", file=sys.stderr,
              flush=True)
        if crash and not _crash_report(crash):
            print(f"adept: (could not write {crash})", file=sys.stderr, flush=True)
        if args.debug:
            traceback.print_exc()
        ctx.abort(_exit_code(exc))
    return 0


def _use_projector(kernel: str, device: Any) -> None:
    """Check that this rank can run ``kernel`` (runtime.projector); the stages pass it to
    the laminography operators they build."""
    from hpc_adept.lamino import check_kernel

    if kernel == "triton" and getattr(device, "type", "cpu") != "cuda":
        raise ConfigError(f"runtime.projector: triton runs on GPUs only, and this rank's "
                          f"device is {device}; use runtime.projector: torch")
    try:
        check_kernel(kernel)
    except ValueError as exc:
        raise ConfigError(f"runtime.projector: {exc}") from None


def _timed_run(command: str, run: Callable, cfg, ctx, plan, device) -> None:
    """Run a command with its stage timed on every rank; timing.json merged at the end."""
    import time

    from hpc_adept import timing

    timing.RECORDER.reset()
    timing.enable(cfg.runtime.timing)
    start = time.perf_counter()
    if command == "run":  # the pipeline times each stage itself
        run(cfg, ctx, plan, device)
    else:
        with timing.region(command, device):
            run(cfg, ctx, plan, device)
        if ctx.is_root:  # so that `adept run` knows what this stage made, and from what
            from hpc_adept.pipeline import record_stage_command

            record_stage_command(command, cfg)
    if cfg.runtime.timing and command != "simulate":
        timing.write_timing(cfg.output.dir, ctx, command, time.perf_counter() - start,
                            cfg.to_yaml())


def _report(run_dir: str, ctx) -> int:
    """``adept report RUN_DIR``: written by rank 0 (it reads files only)."""
    if ctx.is_root:
        from hpc_adept.report.document import write_report

        html_path, md_path = write_report(run_dir)
        log.info("report: wrote %s and %s", html_path, md_path)
    return 0


def _check_output_dir(path: str) -> None:
    run_dir = Path(path)
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output.dir: {run_dir} is not writable")


def _write_resolved_config(cfg) -> None:
    from hpc_adept.io import write_text_atomic

    run_dir = Path(cfg.output.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())


if __name__ == "__main__":
    sys.exit(main())

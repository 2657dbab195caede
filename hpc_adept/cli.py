"""The ``adept`` command (also ``python -m hpc_adept``).

Every stage follows the same steps on every rank (the protocol of
:mod:`hpc_adept.stages.protocol`; the subcommands are the table
:mod:`hpc_adept.stages.registry`): load and validate the config and plan the stage against
the file system (all checks, no output); take this rank's device; the checks that read the
data; then run. Problems found before the work, on any rank, stop every rank and are
reported once, by rank 0, as one line with exit code 2; an error during the work on any
rank is printed by that rank and ends the whole job (MPI abort), so no rank is left waiting
in a collective. Every failure is one line: the traceback of an unexpected one goes to
``<output.dir>/crash_rank<N>.txt`` (and to the terminal with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hpc_adept import __version__
from hpc_adept.errors import EXIT_STOPPED, AdeptError, ConfigError, StopRequested
from hpc_adept.stages.protocol import Stage, StagePlan
from hpc_adept.stages.registry import TABLE

if TYPE_CHECKING:
    from hpc_adept.config import Config

log = logging.getLogger("hpc_adept")
T = TypeVar("T")

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adept",
        description="ADePt ptycho-laminography of integrated circuits (MPI + GPUs).",
    )
    parser.add_argument("--version", action="version", version=f"hpc_adept {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in TABLE.values():
        p = sub.add_parser(stage.name, help=stage.help)
        p.add_argument("-c", "--config", required=True, help="YAML configuration file")
        p.add_argument("--set", dest="overrides", nargs="+", action="append", default=[],
                       metavar="KEY=VALUE",
                       help="override config keys (dotted, values parsed as YAML); repeatable")
        p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    for name, (help_text, add_arguments, _) in TOOLS.items():
        p = sub.add_parser(name, help=help_text)
        add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


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


def _checked(ctx: Any, debug: bool, step: Callable[..., T], *args: Any
             ) -> tuple[T | None, tuple[int, str] | None]:
    """Run a phase-1 ``step(*args)`` on this rank: (its value, None), or (None, (exit code,
    the error line's tail)).

    Ctrl-C ends every rank at once (exit 130).
    """
    try:
        return step(*args), None
    except KeyboardInterrupt:
        print(f"adept: interrupted (rank {ctx.rank})", file=sys.stderr)
        ctx.abort(130)
    except Exception as exc:  # noqa: BLE001 - reported as one line by the caller
        if debug:
            traceback.print_exc()
        where = f" (rank {ctx.rank})" if ctx.is_parallel and not ctx.is_root else ""
        return None, (_exit_code(exc), f"{where}: {_problem_line(exc)}")
    return None, None  # not reached: abort ends the process


class _Refused(Exception):
    """Phase 1 found a problem on some rank: every rank stops with ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _agreed(ctx: Any, debug: bool, step: Callable[..., T], *args: Any) -> T:
    """``step(*args)`` on this rank, then the ranks agree on the first problem any found.

    Collective. Returns the step's value when no rank found a problem; otherwise rank 0
    prints it as one line and every rank raises :class:`_Refused`, so that no rank goes on
    alone (it would wait for the others in its next collective).
    """
    from hpc_adept.parallel.collectives import first_problem

    value, problem = _checked(ctx, debug, step, *args)
    problem = first_problem(ctx, problem)
    if problem is not None:
        code, line = problem
        if ctx.is_root:
            print(f"adept: error{line}", file=sys.stderr)
        raise _Refused(code)
    return value  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    from hpc_adept.log import setup_logging
    from hpc_adept.parallel import get_context

    ctx = get_context()
    setup_logging(ctx.rank, ctx.size)
    if args.command in TOOLS:  # rank 0 reads files (and writes): no agreement needed
        _, problem = _checked(ctx, args.debug, TOOLS[args.command][2], args, ctx)
        if problem is not None and ctx.is_root:
            print(f"adept: error{problem[1]}", file=sys.stderr)
        return problem[0] if problem else 0
    stage = TABLE[args.command]
    overrides = [item for group in args.overrides for item in group]

    # Phase 1: everything that can be checked before work, in three steps of the stage
    # protocol (hpc_adept.stages.protocol): the config and the plan; this rank's device; the
    # checks that read the data (collective inside). A rank that finds a problem must not
    # leave the others to go on alone (they would wait for it in their next collective), so
    # after each step the ranks agree on the first problem found.
    try:
        cfg, plan = _agreed(ctx, args.debug, _configure, stage, args.config, overrides, ctx)
        device = _agreed(ctx, args.debug, _take_device, cfg, ctx)
        _agreed(ctx, args.debug, plan.validate, ctx, device)
    except _Refused as refused:
        return refused.code
    # Phase 2: the work. Any failure on any rank ends the job.
    return _work(stage, cfg, ctx, plan, device, args.debug)


def _configure(stage: Stage, path: str, overrides: list[str], ctx: Any
               ) -> tuple[Config, StagePlan]:
    """Phase 1, step 1: the config, and the stage's plan (checks against the file system)."""
    from hpc_adept.config import load_config
    from hpc_adept.log import setup_logging

    cfg = load_config(path, overrides)
    setup_logging(ctx.rank, ctx.size, cfg.runtime.log_level)
    plan = stage.plan(cfg)
    _check_output_dir(cfg.output.dir)
    return cfg, plan


def _take_device(cfg: Config, ctx: Any) -> Any:
    """Phase 1, step 2: this rank's torch device, threads, projector and allocator."""
    from hpc_adept.backend import (
        configure_determinism,
        keep_freed_host_memory,
        select_torch_device,
        set_torch_threads,
    )

    configure_determinism(cfg.runtime.deterministic)
    device = select_torch_device(cfg.runtime.device, ctx.local_rank)
    set_torch_threads(cfg.runtime.torch_threads, ctx.local_size)
    _check_projector(cfg.runtime.projector, device)
    if cfg.runtime.keep_host_memory:
        keep_freed_host_memory()
    return device


def _work(stage: Stage, cfg: Config, ctx: Any, plan: StagePlan, device: Any,
          debug: bool) -> int:
    """Phase 2: the stage's run (step 3), timed; any failure on any rank ends the job."""
    try:
        if ctx.is_root:
            _write_resolved_config(cfg)
            if stage.kind != "dataset":
                from hpc_adept.log import add_log_file

                add_log_file(Path(cfg.output.dir) / "adept.log", ctx.rank, ctx.size,
                             cfg.runtime.log_level)
        log.info("adept %s %s: %d rank(s), device %s", __version__, stage.name, ctx.size,
                 device)
        _timed_run(stage, cfg, ctx, plan, device)
        if stage.kind == "pipeline" and ctx.is_root:
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
        _end_the_job(exc, cfg, ctx, debug)
    return 0


def _end_the_job(exc: Exception, cfg: Config, ctx: Any, debug: bool) -> None:
    """Print this rank's error line, save an unexpected error's traceback, abort all ranks."""
    where = f" (rank {ctx.rank})" if ctx.is_parallel else ""
    expected = isinstance(exc, AdeptError | OSError)
    crash = "" if expected else str(Path(cfg.output.dir) / f"crash_rank{ctx.rank}.txt")
    # The line first, at once: the other ranks may end the job any moment now.
    print(f"adept: error{where}: {_problem_line(exc, crash)}", file=sys.stderr, flush=True)
    if crash and not _crash_report(crash):
        print(f"adept: (could not write {crash})", file=sys.stderr, flush=True)
    if debug:
        traceback.print_exc()
    ctx.abort(_exit_code(exc))


def _check_projector(kernel: str, device: Any) -> None:
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


def _timed_run(stage: Stage, cfg: Config, ctx: Any, plan: StagePlan, device: Any) -> None:
    """Run a stage timed on every rank; timing.json merged at the end."""
    import time

    from hpc_adept import timing

    timing.RECORDER.reset()
    timing.enable(cfg.runtime.timing)
    start = time.perf_counter()
    if stage.kind == "pipeline":  # the pipeline times each stage itself
        stage.run(cfg, ctx, plan, device)
    else:
        with timing.region(stage.name, device):
            stage.run(cfg, ctx, plan, device)
    if stage.kind == "stage" and ctx.is_root:  # so that `adept run` knows what it made
        from hpc_adept.pipeline import record_stage_command

        record_stage_command(stage, cfg)
    if cfg.runtime.timing and stage.kind != "dataset":
        timing.write_timing(cfg.output.dir, ctx, stage.name, time.perf_counter() - start,
                            cfg.to_yaml())


def _report(args: argparse.Namespace, ctx: Any) -> None:
    """``adept report RUN_DIR``: written by rank 0 (it reads files only)."""
    if ctx.is_root:
        from hpc_adept.report.document import write_report

        html_path, md_path = write_report(args.run_dir)
        log.info("report: wrote %s and %s", html_path, md_path)


def _export(args: argparse.Namespace, ctx: Any) -> None:
    """``adept export RUN_DIR --format F``: the run's volumes for viewers, by rank 0."""
    if ctx.is_root:
        from hpc_adept.io.export import export_run

        for path in export_run(args.run_dir, args.format, args.out):
            log.info("export: wrote %s", path)


def _inspect(args: argparse.Namespace, ctx: Any) -> None:
    """``adept inspect PATH [-c CONFIG] [--set KEY=VALUE]``: what a data set holds (rank 0
    prints it), nothing run. The config's ``data`` section supplies what the files lack;
    ``--set`` values win over it."""
    if ctx.is_root:
        from hpc_adept.config import load_config
        from hpc_adept.io.formats import inspect
        from hpc_adept.io.formats.source import inspect_options

        # --set KEY=VALUE are data.* keys: checked (names, types, ranges) as in any config
        overrides = [item if item.startswith("data.") else f"data.{item}"
                     for group in args.supplied for item in group]
        data = load_config(args.config, overrides).data
        fmt = None if data.format == "auto" else data.format
        sys.stdout.write(inspect(args.path, fmt, **inspect_options(data, args.path, fmt)))


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory")


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory (its volume_*.h5 are exported)")
    p.add_argument("--format", required=True, choices=("ome-zarr", "tiff"),
                   help="ome-zarr (napari, NGFF 0.4) or tiff (ImageJ hyperstack, Fiji)")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/export)")


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a data file or directory (any supported format)")
    p.add_argument("-c", "--config", default=None,
                   help="YAML config whose data section supplies what the files lack "
                        "(data.format, data.energy_ev, ...)")
    p.add_argument("--set", dest="supplied", nargs="+", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="values the files lack, e.g. laminography_angle_deg=61 energy_ev=6200")


#: Commands that read files on rank 0 only: name -> (help, arguments, run).
TOOLS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {
    "report": ("HTML/Markdown report of a run directory", _report_arguments, _report),
    "export": ("the run's volumes as OME-Zarr (napari) or ImageJ TIFF (Fiji)",
               _export_arguments, _export),
    "inspect": ("what a data set holds (frames, energy, positions, angles), nothing run",
                _inspect_arguments, _inspect),
}


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

"""The stage table: what ``adept <stage>`` and ``adept run`` know about each stage.

:data:`TABLE` lists each stage once (see :mod:`hpc_adept.stages.protocol` for the protocol
they follow), with its help text, its plan and run functions and what ``adept run`` needs
to decide whether it is up to date (the config sections it reads, its input and output
files). The CLI builds its subcommands from the table and dispatches through it;
``adept run`` runs its ``kind == "stage"`` entries in order (:func:`run_stages`).

The functions are imported only when a stage is used (they pull in torch and MPI), so this
module stays cheap for ``adept --help``. They are looked up at that moment too, so a test
that replaces ``hpc_adept.stages.ptycho.plan_ptycho`` replaces what the CLI calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hpc_adept.stages.protocol import Stage, StageFunctions

if TYPE_CHECKING:
    from hpc_adept.config import Config
    from hpc_adept.pipeline import RunPlan

__all__ = ["TABLE", "run_stages"]


# ---------------------------------------------------------------- the stages' functions


def _simulate() -> StageFunctions:
    from hpc_adept.stages import simulate

    return StageFunctions(simulate.plan_simulate, simulate.run_simulate)


def _ptycho() -> StageFunctions:
    from hpc_adept.stages import ptycho

    return StageFunctions(ptycho.plan_ptycho, ptycho.run_ptycho)


def _align() -> StageFunctions:
    from hpc_adept.stages import align

    return StageFunctions(align.plan_align, align.run_align)


def _recon() -> StageFunctions:
    from hpc_adept.stages import recon

    return StageFunctions(recon.plan_recon, recon.run_recon)


def _evaluate() -> StageFunctions:
    from hpc_adept.stages import evaluate

    return StageFunctions(evaluate.plan_evaluate, evaluate.run_evaluate)


def _pipeline() -> StageFunctions:
    from hpc_adept import pipeline

    def plan_run(cfg: Config) -> RunPlan:
        return pipeline.plan_run(cfg, run_stages())

    return StageFunctions(plan_run, pipeline.run_pipeline)


# ---------------------------------------------------------------- the stages' files


def _run_dir(cfg: Config) -> Path:
    return Path(cfg.output.dir)


def _dataset_files(cfg: Config) -> list[Path]:
    """The data set's files (any format of ``data.format``) and the files the ``data``
    section names beside it (positions, angles)."""
    if not cfg.data.path:
        return []
    path = Path(cfg.data.path)
    if path.is_dir():
        ours = sorted(path.glob("*.cxi"))
        files = ours or sorted(f for f in path.rglob("*") if f.is_file())
    else:
        files = [path]
    named = (cfg.data.positions_path, cfg.data.angles_path, cfg.data.angle_table_path)
    return files + [Path(p) for p in named if p]


def _projections(cfg: Config) -> list[Path]:
    return [_run_dir(cfg) / "projections.h5"]


def _aligned(cfg: Config) -> list[Path]:
    return [_run_dir(cfg) / "aligned.h5"]


def _recon_input(cfg: Config) -> list[Path]:
    if cfg.recon.input == "projections":
        return _projections(cfg)
    return _aligned(cfg)  # 'auto' in the pipeline: align always writes aligned.h5


def _volumes(cfg: Config) -> list[Path]:
    return [_run_dir(cfg) / f"volume_{m}.h5" for m in cfg.recon.methods]


def _evaluate_inputs(cfg: Config) -> list[Path]:
    reference = [Path(cfg.evaluate.reference)] if cfg.evaluate.reference else []
    return _volumes(cfg) + reference


def _metrics(cfg: Config) -> list[Path]:
    return [_run_dir(cfg) / "metrics.json"]


def _has_reference(cfg: Config) -> bool:
    return cfg.evaluate.reference is not None


TABLE: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("simulate", "IC phantom + simulated ptycho-laminography dataset", _simulate,
          kind="dataset"),
    Stage("ptycho", "LSQ-ML ptychography of every scan -> projections.h5", _ptycho,
          sections=("data", "ptycho", "runtime.seed"), inputs=_dataset_files,
          outputs=_projections),
    # recon.volume_shape: the alignment's volume unless align.volume_shape is set
    Stage("align", "projection-matching alignment + center crop -> aligned.h5", _align,
          sections=("align", "recon.volume_shape", "runtime.seed"), inputs=_projections,
          outputs=_aligned),
    Stage("recon", "volume reconstruction (fbp, dip) -> volume_*.h5", _recon,
          sections=("recon", "dip", "runtime.seed"), inputs=_recon_input, outputs=_volumes),
    Stage("evaluate", "BER / PCC / PSD against a reference -> metrics.json", _evaluate,
          sections=("evaluate", "recon.methods", "runtime.seed"), inputs=_evaluate_inputs,
          outputs=_metrics, enabled=_has_reference),
    Stage("run", "all stages in order", _pipeline, kind="pipeline"),
)}


def run_stages() -> tuple[Stage, ...]:
    """The steps of ``adept run``, in order."""
    return tuple(stage for stage in TABLE.values() if stage.kind == "stage")

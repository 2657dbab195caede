"""The stage protocol: what every stage offers the CLI and ``adept run``.

Every stage follows one protocol, on every rank (see :mod:`hpc_adept.cli`):

1. ``plan(cfg)`` checks the config against the file system and returns a :class:`StagePlan`;
   no work, no output.
2. ``plan.validate(ctx, device)`` runs the checks that read the data (counts, memory
   guards); collective, may be a no-op.
3. ``run(cfg, ctx, plan, device)`` does the work.

A :class:`Stage` describes one stage; the table of all of them is
:data:`hpc_adept.stages.registry.TABLE`. This module imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

if TYPE_CHECKING:
    from hpc_adept.config import Config
    from hpc_adept.parallel import ParallelContext

__all__ = ["Kind", "PlanFunction", "RunFunction", "Stage", "StageFunctions", "StagePlan"]


class StagePlan(Protocol):
    """What a stage's ``plan`` returns: the resolved inputs and outputs of its run."""

    def validate(self, ctx: ParallelContext, device: Any) -> None:
        """Checks that read the data, before any work (collective: every rank calls it).

        Raises the same ConfigError or DataError on every rank, so that the job stops with
        one line and writes nothing.
        """


class PlanFunction(Protocol):
    """Step 1: ``plan(cfg)``, the checks against the config and the file system."""

    def __call__(self, cfg: Config) -> StagePlan: ...


class RunFunction(Protocol):
    """Step 3: ``run(cfg, ctx, plan, device)``, the work, with ``plan`` from step 1."""

    def __call__(self, cfg: Config, ctx: ParallelContext, plan: Any, device: Any) -> None: ...


class StageFunctions(NamedTuple):
    """The plan and run functions of one stage."""

    plan: PlanFunction
    run: RunFunction


Kind = Literal["dataset", "stage", "pipeline"]


def _no_files(cfg: Config) -> list[Path]:
    return []


def _always(cfg: Config) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One entry of the table.

    Attributes
    ----------
    name : str
        The subcommand (``adept <name>``), the timing region and the key of
        ``pipeline_state.json``.
    help : str
        One line for ``adept --help``.
    functions : callable
        ``() -> StageFunctions``: imports the stage's module.
    kind : {"dataset", "stage", "pipeline"}
        ``"dataset"`` (simulate) writes a dataset, not a run-directory product: no
        ``adept.log`` or ``timing.json`` in ``output.dir``, no record for ``adept run``.
        ``"stage"`` is a step of ``adept run``. ``"pipeline"`` (run) runs the stages,
        timing each itself, and writes the report at the end.
    sections : tuple of str
        Config sections (or ``section.key``) whose values change the stage's result.
    inputs, outputs : callable
        ``cfg -> list[Path]`` of the files read and written.
    enabled : callable
        ``cfg -> bool``: whether ``adept run`` includes the stage.
    """

    name: str
    help: str
    functions: Callable[[], StageFunctions]
    kind: Kind = "stage"
    sections: tuple[str, ...] = ()
    inputs: Callable[[Config], list[Path]] = _no_files
    outputs: Callable[[Config], list[Path]] = _no_files
    enabled: Callable[[Config], bool] = _always

    def plan(self, cfg: Config) -> StagePlan:
        """Step 1 of the protocol: the stage's checks before any work; its plan."""
        return self.functions().plan(cfg)

    def run(self, cfg: Config, ctx: ParallelContext, plan: StagePlan, device: Any) -> None:
        """Step 3 of the protocol: the work (every rank), with ``plan`` from :meth:`plan`."""
        self.functions().run(cfg, ctx, plan, device)

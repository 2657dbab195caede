"""Logging with the rank in every line; INFO and DEBUG from rank 0 only."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

_FORMAT = "%(asctime)s [rank {rank}/{size}] %(levelname)s %(name)s: %(message)s"


def setup_logging(rank: int = 0, size: int = 1, level: str = "INFO") -> None:
    """Configure the root logger of this process.

    Rank 0 logs at ``level``; the other ranks log warnings and errors only, so a job's
    output is readable at any scale while a problem on any rank is still seen.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(_FORMAT.format(rank=rank, size=size), datefmt="%H:%M:%S")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else "WARNING")
    for noisy in ("matplotlib", "PIL", "h5py"):  # third-party INFO chatter
        logging.getLogger(noisy).setLevel("WARNING")


def add_log_file(path: str | Path, rank: int, size: int, level: str = "INFO") -> None:
    """Also append this process's log to ``path`` (the run's log; rank 0 calls it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT.format(rank=rank, size=size),
                                           datefmt="%Y-%m-%d %H:%M:%S"))
    handler.setLevel(level)
    logging.getLogger().addHandler(handler)


class Progress:
    """Progress of a long loop, logged on rank 0: done / total, rate and ETA.

    Parameters
    ----------
    total : int
        Number of items.
    what : str
        What is counted (``"scans"``, ``"iterations"``).
    logger : logging.Logger
        Where to write; lines are emitted at most every ``interval_s`` seconds and at the end.
    """

    def __init__(self, total: int, what: str, logger: logging.Logger,
                 interval_s: float = 5.0) -> None:
        self.total = total
        self.what = what
        self.logger = logger
        self.interval_s = interval_s
        self.done = 0
        self._start = time.perf_counter()
        self._last = -float("inf")

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last < self.interval_s and self.done < self.total:
            return
        self._last = now
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else float("inf")
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.logger.info(
            "%s %d/%d (%.0f%%), %.2f/s, elapsed %.0f s, ETA %.0f s%s",
            self.what, self.done, self.total, 100.0 * self.done / max(1, self.total),
            rate, elapsed, eta, f", {extra}" if extra else "",
        )

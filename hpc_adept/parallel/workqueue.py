"""Dynamic assignment of work items over ranks (first come, first served).

Rank 0 keeps the counter and answers the other ranks' requests from a small service
thread while it works on items itself, so a slow item never stalls the others and no rank
is reserved for bookkeeping. (A passive-target MPI window would need the target to enter
MPI to make progress, which a rank busy in a long computation does not.) The thread
polls with a short sleep instead of a blocking receive, because MPI's blocking receives
spin and would steal a core from rank 0's own work. Needs MPI_THREAD_MULTIPLE (mpi4py's
default); without it the queue falls back to a static round-robin split.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from hpc_adept.parallel.context import ParallelContext

log = logging.getLogger(__name__)

_REQUEST, _REPLY, _DONE, _COUNT = 7301, 7302, 7303, 7304


class DynamicQueue:
    """Hands out ``0 .. n_items - 1`` once each over all ranks of ``ctx``.

    Collective: every rank must create it and :meth:`close` it (or use ``with``). Leaving
    the ``with`` block by an exception does not close it: the closing is collective and
    would wait for the ranks still at work, while the exception must reach the caller at
    once so that it can end the job (``ParallelContext.abort``).

    Examples
    --------
    >>> with DynamicQueue(ctx, n_items) as queue:  # doctest: +SKIP
    ...     for index in queue:
    ...         process(index)
    """

    def __init__(self, ctx: ParallelContext, n_items: int, poll_s: float = 0.005) -> None:
        self.ctx = ctx
        self.n_items = n_items
        self._poll_s = poll_s
        self._next = 0
        self._lock = threading.Lock()
        self._exhausted = False
        self._thread: threading.Thread | None = None
        self._comm = None
        self._static = False
        if not ctx.is_parallel:
            return
        from mpi4py import MPI

        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            log.warning("MPI without THREAD_MULTIPLE: static round-robin work split")
            self._static = True
            self._next = ctx.rank
            return
        self._comm = ctx.comm.Dup()  # private tags, no clash with the caller's messages
        if ctx.is_root:
            self._thread = threading.Thread(target=self._serve, name="adept-workqueue",
                                            daemon=True)
            self._thread.start()

    # -- rank 0 ------------------------------------------------------------------------
    def _claim(self) -> int:
        with self._lock:
            index = self._next
            self._next += 1
            return index

    def _serve(self) -> None:
        from mpi4py import MPI

        comm, finished = self._comm, 0
        status = MPI.Status()
        while finished < self.ctx.size - 1:
            if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
                time.sleep(self._poll_s)
                continue
            source, tag = status.Get_source(), status.Get_tag()
            comm.recv(source=source, tag=tag)
            if tag == _DONE:
                finished += 1
                continue
            if tag == _COUNT:
                comm.send(self._unclaimed(), dest=source, tag=_REPLY)
                continue
            index = self._claim()
            comm.send(index if index < self.n_items else -1, dest=source, tag=_REPLY)

    # -- every rank --------------------------------------------------------------------
    def take(self) -> int | None:
        """The next unclaimed item, or None when all are taken."""
        if self._exhausted:
            return None
        if self._static:
            index = self._next
            self._next += self.ctx.size
        elif self._comm is None or self.ctx.is_root:
            index = self._claim()
        else:
            self._comm.send(None, dest=0, tag=_REQUEST)
            index = self._comm.recv(source=0, tag=_REPLY)
            index = self.n_items if index < 0 else index
        if index >= self.n_items:
            self._exhausted = True
            return None
        return index

    def _unclaimed(self) -> int:
        with self._lock:
            return max(0, self.n_items - self._next)

    def remaining(self) -> int:
        """Items not yet handed out to any rank (asks rank 0; with the static split, this
        rank's own items left)."""
        if self._exhausted:
            return 0
        if self._static:
            return max(0, -(-(self.n_items - self._next) // self.ctx.size))
        if self._comm is None or self.ctx.is_root:
            return self._unclaimed()
        self._comm.send(None, dest=0, tag=_COUNT)
        return self._comm.recv(source=0, tag=_REPLY)

    def claimed(self) -> int:
        """Items handed out so far: exact on rank 0 (the keeper), else this rank's own view."""
        with self._lock:
            return min(self._next, self.n_items)

    def __iter__(self) -> Iterator[int]:
        while (index := self.take()) is not None:
            yield index

    def close(self) -> None:
        """Collective end: worker ranks sign off, rank 0 waits for its service thread."""
        if self._comm is None:
            return
        if not self.ctx.is_root:
            self._comm.send(None, dest=0, tag=_DONE)
        elif self._thread is not None:
            self._thread.join()
        self._comm.Barrier()
        self._comm.Free()
        self._comm = None

    def __enter__(self) -> DynamicQueue:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # On an exception, no collective close: rank 0's service thread (a daemon) would
        # wait for the other ranks' sign-off and the barrier for ranks that still have
        # scans to work through, so the job would end only when the queue is empty.
        # The caller aborts the job instead; the communicator goes with the processes.
        if exc_type is None:
            self.close()

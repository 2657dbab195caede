"""Count the reads of tensor values to the host (what waits for a GPU) on the CPU.

On a GPU, ``torch.cuda.set_sync_debug_mode`` reports synchronisations; on the CPU nothing
waits, so these tests count the Python-level calls that would: ``.item()``, ``.cpu()``,
``.tolist()``, ``.numpy()``, ``float(t)``, ``int(t)`` and ``bool(t)`` (``if t:``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")


@contextlib.contextmanager
def count_host_reads(ignore: Callable[[torch.Tensor], bool] = lambda t: False,
                     reads: tuple[str, ...] = READS) -> Iterator[list[str]]:
    """Patch ``torch.Tensor``'s reading methods while inside; yields the list of the
    names called (on tensors ``ignore`` does not exempt), in order."""
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in reads}

    def counting(name: str, original: Callable) -> Callable:
        def method(self, *args, **kwargs):
            if not ignore(self):
                calls.append(name)
            return original(self, *args, **kwargs)
        return method

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, counting(name, original))
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def adam_step_counts(optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], bool]:
    """``ignore`` for :func:`count_host_reads`: the optimiser's step counters, which PyTorch
    keeps on the host for its default Adam (reading them waits for nothing; the fused
    CUDA Adam keeps them on the device and never reads them)."""
    def is_step(tensor: torch.Tensor) -> bool:
        return any(tensor is state.get("step") for state in optimizer.state.values())
    return is_step

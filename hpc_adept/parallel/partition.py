"""Partition of work items (angles, scans) over ranks."""

from __future__ import annotations


def block_range(n_items: int, size: int, rank: int) -> range:
    """Contiguous, balanced share of ``range(n_items)`` owned by ``rank`` of ``size``.

    The first ``n_items % size`` ranks take one item more; ranks beyond the items get an
    empty range. Concatenating the ranges of ranks 0..size-1 gives ``range(n_items)``.
    """
    if n_items < 0 or size < 1 or not 0 <= rank < size:
        raise ValueError(f"bad partition request n_items={n_items} size={size} rank={rank}")
    base, extra = divmod(n_items, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def cyclic_indices(n_items: int, size: int, rank: int) -> range:
    """Round-robin share ``rank, rank + size, ...`` (balances items of growing cost)."""
    if n_items < 0 or size < 1 or not 0 <= rank < size:
        raise ValueError(f"bad partition request n_items={n_items} size={size} rank={rank}")
    return range(rank, n_items, size)


def aligned_block_range(n_items: int, size: int, rank: int, multiple: int) -> range:
    """Like :func:`block_range`, with every boundary on a multiple of ``multiple``.

    The items are grouped in blocks of ``multiple`` (the last block may be shorter) and
    the blocks are shared out by :func:`block_range`; ranks beyond the blocks get an
    empty range. Used to split a volume into z slabs that stay aligned with every level
    of a network whose strides multiply to ``multiple``.
    """
    if multiple < 1:
        raise ValueError(f"bad partition request multiple={multiple}")
    n_blocks = -(-n_items // multiple)
    blocks = block_range(n_blocks, size, rank)
    return range(min(n_items, blocks.start * multiple), min(n_items, blocks.stop * multiple))

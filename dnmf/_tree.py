"""The fixed reduction tree: which panel statistics are added to which, in what order.

Panel statistics are summed in one balanced binary tree over the panels in row
order, whatever the scheduler: level L adds the aligned blocks ``[j·2^L, (j+1)·2^L)``
pairwise, an odd block out being carried up. Floating-point addition is not
associative, so a fixed tree is what makes a fit's result independent of which
task finished first, of the number of workers and of local versus cluster runs.
On a cluster the tree is cut into the largest subtrees that lie on one worker
(summed in one task each) and the part above them (one task): same additions,
same order, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["local_blocks", "pairwise_tree", "upper_tree"]


def pairwise_tree(items: Sequence[Any], join: Callable[[Any, Any], Any]) -> Any:
    """Join ``items`` pairwise, in order, level by level: a fixed balanced tree."""
    level = list(items)
    while len(level) > 1:
        level = [
            join(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
            for i in range(0, len(level), 2)
        ]
    return level[0]


def local_blocks(owners: Sequence[Any]) -> list[tuple[int, int]]:
    """Split panels ``0..P`` into the largest subtrees of the fixed tree on one owner.

    The tree of :func:`pairwise_tree` joins, at level L, the aligned blocks
    ``[j·2^L, (j+1)·2^L)`` of panels. Returned are, in order, the largest such blocks
    whose panels all have the same owner (worker); a block of one panel always
    qualifies. Each block's sum is one subtree of the tree, so summing it in one task
    (with the same pairwise order) gives the tree's value bit for bit.
    """
    n = len(owners)
    if n == 0:
        return []
    out: list[tuple[int, int]] = []

    def visit(start: int, size: int) -> None:
        stop = min(n, start + size)
        if size == 1 or len(set(owners[start:stop])) == 1:
            out.append((start, stop))
            return
        half = size // 2
        visit(start, half)
        if start + half < n:
            visit(start + half, half)

    visit(0, 1 << (n - 1).bit_length())
    return out


def upper_tree(blocks: Sequence[tuple[int, int]], sums: Sequence[Any],
               combine: Callable[[Any, Any], Any]) -> Any:
    """The fixed tree's value from the sums of its :func:`local_blocks`."""
    n = blocks[-1][1]
    index = {block: i for i, block in enumerate(blocks)}

    def node(start: int, size: int) -> Any:
        stop = min(n, start + size)
        if (start, stop) in index:
            return sums[index[start, stop]]
        half = size // 2
        left = node(start, half)
        return combine(left, node(start + half, half)) if start + half < n else left

    return node(0, 1 << (n - 1).bit_length())

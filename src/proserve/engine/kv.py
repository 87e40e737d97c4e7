"""KV-cache block accounting for one engine instance.

Blocks are fungible (no prefix caching yet), so the manager is a counter plus each request's
``blocks`` field; that keeps allocation O(1) on the per-iteration hot path. Offload to host memory
(ProServe section 3) will extend this class; recompute preemption is what vLLM does today.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core.request import Request


class KVCapacityError(AssertionError):
    """An invariant of the block manager was violated (a bug, never a user error)."""


class BlockManager:
    __slots__ = ("total", "free", "block_size")

    def __init__(self, total_blocks: int, block_size: int = 16) -> None:
        if total_blocks <= 0 or block_size <= 0:
            raise ValueError("total_blocks and block_size must be positive")
        self.total = total_blocks
        self.free = total_blocks
        self.block_size = block_size

    def blocks_needed(self, req: Request, tokens: int) -> int:
        """Extra blocks ``req`` needs to hold ``tokens`` tokens of KV."""
        return max(-(-tokens // self.block_size) - req.blocks, 0)

    def can_allocate(self, req: Request, tokens: int) -> bool:
        return self.blocks_needed(req, tokens) <= self.free

    def allocate(self, req: Request, tokens: int) -> bool:
        """Grow ``req``'s allocation to cover ``tokens`` tokens; False (and no change) if full."""
        need = -(-tokens // self.block_size) - req.blocks
        if need <= 0:
            return True
        if need > self.free:
            return False
        self.free -= need
        req.blocks += need
        return True

    def release(self, req: Request) -> None:
        self.free += req.blocks
        req.blocks = 0
        if self.free > self.total:
            raise KVCapacityError(f"freed more blocks than exist ({self.free} > {self.total})")

    @property
    def used(self) -> int:
        return self.total - self.free

    @property
    def usage(self) -> float:
        return (self.total - self.free) / self.total

    def check(self, holders: Iterable[Request]) -> None:
        """Assert the books balance: blocks held by requests == blocks in use, within capacity."""
        held = sum(r.blocks for r in holders)
        if held != self.total - self.free or not 0 <= self.free <= self.total:
            raise KVCapacityError(
                f"KV books unbalanced: held={held} used={self.total - self.free} "
                f"free={self.free} total={self.total}"
            )

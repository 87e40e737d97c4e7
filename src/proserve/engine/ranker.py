"""The ranking interface of the unified-queue policies: what an engine outside ours may use.

A unified-queue policy (``slide``, ``slide-bounded``, ``slide-nostarve``, ``edf``,
``fairbatching``, ...) is two things: a **ranker**, which tracks the live requests, keeps its
per-request predictions up to date as they change, and answers the order and the time budget for
``now``; and the **batch walk** (``UnifiedQueueScheduler._walk``), which turns that order into a
batch with our KV block manager. Our simulator and emulator run both. vLLM owns its batch
formation and KV, so the vLLM plug-in uses only the ranker, through this protocol, never through
the policy's internals (its table or its ``plan``).

The protocol is small on purpose: ``add`` a request when the engine receives it, ``refresh`` it
whenever its state changed (tokens computed, generated, preempted), ``remove`` it when it leaves,
and ask ``ordered(now)`` for the order and budget of the next step (or ``ordered_head(now, k,
must)`` for only its first ``k`` requests plus where ``must`` stand: what an engine that admits a
few requests a step needs), then ``late_work(now,
budget)`` for work that goes before that order in a time slice of its own (``slide-bounded``'s
late prefills; empty for the others), and ``may_displace(victim, best)`` for whether a request
without KV may preempt a resident one to get a sequence slot (the same rule our engine applies
with ``resident_seqs``). Requests are
:class:`~proserve.core.request.Request` objects (the plug-in mirrors vLLM's into them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..core.request import Request

if TYPE_CHECKING:
    from .deadline import UnifiedQueueScheduler


@runtime_checkable
class Ranker(Protocol):
    """Order and latency budget of a unified queue (see the module docstring)."""

    def add(self, r: Request) -> None: ...
    def remove(self, r: Request) -> None: ...
    def refresh(self, r: Request) -> None: ...
    def refresh_many(self, rs: Iterable[Request]) -> None: ...
    def ordered(self, now: float) -> tuple[list[Request], float]: ...
    def ordered_head(self, now: float, k: int,
                     must: Sequence[Request] = ()) -> tuple[list[Request], float]: ...
    def late_work(self, now: float,
                  budget: float) -> tuple[list[Request], float, int]: ...
    def may_displace(self, victim: Request, best: Request) -> bool: ...
    def __len__(self) -> int: ...


class PolicyRanker:
    """The ranker of one unified-queue policy object: its request table and its ``plan``.

    Shares the policy's state: a request added here is the policy's, so a policy object serves
    either as a whole engine scheduler (simulator, emulator) or as a ranker (vLLM plug-in), not
    both at once.
    """

    __slots__ = ("policy",)

    def __init__(self, policy: UnifiedQueueScheduler) -> None:
        self.policy = policy

    def add(self, r: Request) -> None:
        self.policy.table.add(r)

    def remove(self, r: Request) -> None:
        self.policy.table.remove(r)

    def refresh(self, r: Request) -> None:
        self.policy.table.refresh(r)

    def refresh_many(self, rs: Iterable[Request]) -> None:
        self.policy.table.refresh_many(rs)

    def ordered(self, now: float) -> tuple[list[Request], float]:
        return self.policy.ordered(now)

    def ordered_head(self, now: float, k: int,
                     must: Sequence[Request] = ()) -> tuple[list[Request], float]:
        """The first ``k`` of :meth:`ordered`'s order, then the later ones of ``must``, in order
        (``UnifiedQueueScheduler.ordered_head``): what an engine that admits a few requests a
        step needs, at a cost that does not grow with the queue's sort."""
        return self.policy.ordered_head(now, k, must)

    def late_work(self, now: float, budget: float) -> tuple[list[Request], float, int]:
        """Requests to walk first, in a slice of the step with this time limit (with c0) and
        token limit."""
        late_work = getattr(self.policy, "late_work", None)
        return late_work(now, budget) if late_work is not None else ([], 0.0, 0)

    def may_displace(self, victim: Request, best: Request) -> bool:
        return self.policy.may_displace(victim, best)

    def __len__(self) -> int:
        return len(self.policy.table)

    def hold_gil(self) -> None:
        """Order with sorts that keep the GIL (for engines with other Python threads, such as
        vLLM's engine core; ``UnifiedQueueScheduler.lexsort`` says why). Same order."""
        self.policy.hold_gil = True

    def incremental(self) -> bool:
        """Answer ``ordered_head`` from an index kept incrementally in plain Python, where the
        policy has one (SlideBatching's family: engine/head_index.py); False if it has none."""
        use = getattr(self.policy, "use_head_index", None)
        if use is None:
            return False
        try:
            use()
        except ValueError:  # an ablation order without one
            return False
        return True

    @property
    def min_chunk(self) -> int:
        """The smallest prefill chunk the policy schedules unless it finishes the prompt."""
        return self.policy.min_chunk

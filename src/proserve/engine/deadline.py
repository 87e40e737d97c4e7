"""Unified-queue schedulers that order every request each iteration and fill a *time* budget.

:class:`UnifiedQueueScheduler` holds prefill-stage and decode-stage requests in one queue (as
SlideBatching does) and implements the batch walk they all share (proserve.md section 2, steps 7
and 8):

* walk the ordered queue, starting the predicted batch time at c0, while the time stays under the
  budget and the token/sequence caps hold;
* a decode adds its step cost and stops the walk if it would pass the budget;
* a prefill is divisible: take the largest chunk that fits the remaining time (closed-form on the
  monotone model), and stop if that chunk is under ``min_chunk`` unless it finishes the prompt;
* if KV blocks cannot be allocated, preempt from the *tail* of the order (lowest value), skipping
  requests that hold no KV, and retry; stop if nothing is left to preempt.

One guard is ours: if the very first item does not fit the budget the batch would be empty and the
engine would stall, so the first item is always taken (a decode, or a ``min_chunk`` prefill).

Policies here: ``edf`` (earliest next-token deadline first) and ``fairbatching`` (near-deadline
decodes, then prefills, then other decodes), both with FairBatching-style adaptive batch capacity:
the iteration may last as long as the tightest decode deadline allows, never less than
``eps_frac`` times the tightest TPOT SLO in the queue (so late requests cannot shrink batches to
nothing), unbounded when no decode is waiting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..core.request import Request
from ..latency.model import LatencyModel
from .base import BaseScheduler, SchedulerOutput, register_policy


class UnifiedQueueScheduler(BaseScheduler):
    """One queue for all unfinished requests plus the shared time-budgeted batch walk."""

    def __init__(self, model: LatencyModel, *, min_chunk: int = 50, **kw) -> None:
        super().__init__(model, **kw)
        if min_chunk < 1:
            raise ValueError("min_chunk must be >= 1")
        self.min_chunk = min_chunk
        # dict keyed by request id: O(1) removal, and iteration in arrival order for stable ties
        self.active: dict[int, Request] = {}

    def _enqueue(self, req: Request, now: float) -> None:
        self.active[req.id] = req

    def _on_preempted(self, req: Request) -> None:
        pass  # stays in the one queue; it re-enters the order with computed = 0

    def _on_finished(self, req: Request) -> None:
        self.active.pop(req.id, None)

    def requests(self) -> Iterable[Request]:
        return self.active.values()

    def has_unfinished(self) -> bool:
        return bool(self.active)

    def _walk(self, order: Sequence[Request], budget: float, out: SchedulerOutput) -> None:
        m = self.model
        tok_cap = self.max_num_batched_tokens
        seq_cap = self.max_num_seqs
        min_chunk = self.min_chunk
        tail = _TailVictims(order)
        for i, r in enumerate(order):
            tail.pos = i
            if i > tail.last or len(out.reqs) >= seq_cap:
                break  # reached requests already preempted (KV is exhausted) or the seq cap
            tok_left = tok_cap - out.prefill_tokens - out.decodes
            if tok_left <= 0:
                break
            time_left = budget - out.duration
            pend = r.prompt_len + r.generated - r.computed
            if r.generated == 0 or pend > 1:  # prefill stage: divisible item
                q = m.max_chunk(time_left, r.computed, min(pend, tok_left))
                if q < pend and q < min_chunk:
                    if out.reqs:
                        break
                    q = min(pend, tok_left, min_chunk)
                cost = m.seq_time(q, r.computed)
            else:
                q = 1
                cost = m.d1 + m.d2 * (r.computed + 1)
                if cost > time_left and out.reqs:
                    break
            if not self._allocate_or_preempt(r, q, out, tail):
                break
            self._add(out, r, q, cost)

    # -------------------------------------------------------------- shared per-request estimates
    def t_hat(self, r: Request) -> float:
        """Predicted cost of ``r`` in this iteration, without c0 (proserve.md section 2, step 1)."""
        m = self.model
        pend = r.prompt_len + r.generated - r.computed
        if r.generated == 0 or pend > 1:
            return m.c1 * pend * pend + (m.c2 + m.c3 * r.computed) * pend + m.c4 * r.computed
        return m.d1 + m.d2 * (r.computed + 1)


class _TailVictims:
    """Preemption victims from the tail of the order, never at or before the current item."""

    __slots__ = ("order", "last", "pos")

    def __init__(self, order: Sequence[Request]) -> None:
        self.order = order
        self.last = len(order) - 1  # items after ``last`` have been considered as victims
        self.pos = 0

    def __call__(self) -> Request | None:
        while self.last > self.pos:
            v = self.order[self.last]
            self.last -= 1
            if v.blocks > 0:
                return v
        return None


class AdaptiveCapacityScheduler(UnifiedQueueScheduler):
    """Deadline-ordered policies with FairBatching-style adaptive batch capacity."""

    def __init__(self, model: LatencyModel, *, eps_frac: float = 0.65, near_frac: float = 1.0,
                 tiers: bool = False, **kw) -> None:
        super().__init__(model, **kw)
        self.eps_frac = eps_frac
        self.near_frac = near_frac
        self.tiers = tiers

    def capacity(self, reqs: Sequence[Request], now: float) -> float:
        slack = math.inf
        min_tpot = math.inf
        for r in reqs:
            if r.tpot_slo < min_tpot:
                min_tpot = r.tpot_slo
            if not r.in_prefill:
                s = r.next_deadline() - now
                if s < slack:
                    slack = s
        if slack == math.inf:
            return math.inf
        return max(slack, self.eps_frac * min_tpot)

    def schedule(self, now: float) -> SchedulerOutput:
        out = self.new_output()
        reqs = list(self.active.values())
        if not reqs:
            return out
        if self.tiers:
            near_frac = self.near_frac

            def key(r: Request) -> tuple[int, float, float]:
                d = r.next_deadline()
                if r.in_prefill:
                    return (1, d, r.arrival)
                return (0 if d - now < near_frac * r.tpot_slo else 2, d, r.arrival)
        else:

            def key(r: Request) -> tuple[int, float, float]:
                return (0, r.next_deadline(), r.arrival)

        reqs.sort(key=key)
        self._walk(reqs, self.capacity(reqs, now), out)
        return out


register_policy(
    "edf", AdaptiveCapacityScheduler,
    "Earliest next-token deadline first over prefills and decodes, adaptive batch capacity",
)
register_policy(
    "fairbatching", AdaptiveCapacityScheduler,
    "FairBatching: near-deadline decodes, then prefills, then other decodes (each by deadline), "
    "adaptive batch capacity",
    tiers=True,
)

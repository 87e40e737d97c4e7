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

Two rules apply only with an offload preemption mode (engine/offload.py), both ours:

* a request that holds no device KV (new, or resuming from host) preempts only requests of a
  *lower* class; if that frees too little it waits for free blocks and the walk goes on with the
  requests that hold KV. After an offload a victim is a cheap decode again (its KV is kept), so
  SlideBatching's order puts it back at the head, where it would evict a same-class peer, which
  then does the same (``class_guard=False`` turns the rule off; docs/BENCHMARKS.md section 13
  measures both);
* the copy budget (``full``): a resuming request whose reload does not fit the step's copy budget
  reloads what fits and recomputes the rest if that fits the step's time, else waits a step.

Policies here: ``edf`` (earliest next-token deadline first) and ``fairbatching`` (near-deadline
decodes, then prefills, then other decodes), both with FairBatching-style adaptive batch capacity.

FairBatching (Lyu et al., arXiv 2510.14392) tracks each request against a monotone per-token
deadline envelope ``arrival + TTFT_SLO + j * TPOT_SLO`` (the TDG deadlines), sizes each batch's
*time* budget adaptively from the decode slack so that no decode that can still meet its next
deadline is pushed past it, and forms the batch fairly between prefill and decode instead of
Sarathi's decode-first rule: decodes close to their deadline first, then prefills, then the
decodes with slack to spare. What we implement: the budget is the smallest slack among decodes
that can still make their next deadline (slack >= their step cost + c0), never less than
``eps_frac`` times the tightest TPOT SLO, unbounded when no such decode exists (then only the
token and sequence caps apply, as in ProServe's own budget). Decodes that are already late are
excluded: one of them would otherwise shrink every batch and the policy would spiral. Where ours
differs from the paper: its budget comes from a profiled capacity curve and its prefill/decode
split from a fairness ratio; ours reuses the shared latency model and the time-budgeted walk, and
``near_frac`` (1 TPOT SLO) decides what "close to the deadline" means.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from ..core.request import Request, Status
from ..latency.model import LatencyModel
from .base import BaseScheduler, SchedulerOutput, register_policy
from .ranker import PolicyRanker
from .table import DeadlineFn, RequestTable, strict_deadline

_GIL_SORT_MAX = 512  # rows up to which lexsort() sorts in Python when holding the GIL


def head_rows(keys: tuple[np.ndarray, ...], k: int) -> np.ndarray | None:
    """Rows that form a prefix of ``np.lexsort(keys)``'s order at least ``k`` long (unsorted).

    Key by key from the primary: the ``need``-th smallest value ``v`` (``np.partition``, linear
    time); rows below ``v`` are in, rows above are out, and the rows equal to ``v`` are decided
    by the next key. The last key is unique, so at most ``k`` rows plus exact ties come back.
    None when ``v`` is NaN (the selection would be ambiguous; the caller sorts everything).
    """
    idx = np.arange(len(keys[0]))
    parts = []
    need = k
    for key in reversed(keys):
        if idx.size <= need:
            break
        vals = key[idx]
        v = np.partition(vals, need - 1)[need - 1]
        if v != v:
            return None
        below = vals < v
        parts.append(idx[below])
        need -= int(np.count_nonzero(below))
        idx = idx[vals == v]
    parts.append(idx)
    return np.concatenate(parts)


class UnifiedQueueScheduler(BaseScheduler):
    """One queue for all unfinished requests plus the shared time-budgeted batch walk.

    The queue is a :class:`RequestTable` so subclasses order it with numpy; subclasses implement
    :meth:`plan`, which returns the order (as table slots) and the time budget.
    """

    def __init__(self, model: LatencyModel, *, min_chunk: int = 50,
                 deadline: DeadlineFn = strict_deadline, small_queue: int = 48,
                 class_guard: bool = True, resident_seqs: bool = False,
                 max_preempt_per_step: int = 4, **kw) -> None:
        super().__init__(model, **kw)
        # vLLM's meaning of max_num_seqs (resident_seqs): it caps the requests holding KV (a
        # running request keeps its slot while it sits a step out), not one step's batch; a
        # request without KV then starts only in a free slot, or by preempting a resident
        # request of a strictly lower class from the tail of the order, at most
        # max_preempt_per_step a step (the vLLM plug-in's tail preemption). Off by default:
        # ProServe's engine and our published results cap the batch.
        self.resident_seqs = resident_seqs
        if max_preempt_per_step < 0:
            raise ValueError("max_preempt_per_step must be >= 0")
        self.max_preempt_per_step = max_preempt_per_step
        # offload modes: KV-less requests preempt only lower classes (module docstring)
        self.class_guard = class_guard
        self.small_queue = small_queue
        if min_chunk < 1:
            raise ValueError("min_chunk must be >= 1")
        self.min_chunk = min_chunk
        self.table = RequestTable(model, deadline)
        # GIL-holding sorts (see lexsort below); set by engines that run other Python threads
        self._hold_gil = False

    @property
    def hold_gil(self) -> bool:
        return self._hold_gil

    @hold_gil.setter
    def hold_gil(self, on: bool) -> None:
        self._hold_gil = self.table.hold_gil = bool(on)

    def lexsort(self, keys: tuple[np.ndarray, ...]) -> np.ndarray:
        """``np.lexsort(keys)`` (last key primary), or the same order from Python's sort.

        Why two: numpy's sorts release the GIL. Inside vLLM's engine core another Python thread
        (the one that serialises the last step's outputs) then takes it and runs on the
        scheduler's critical path, work that otherwise overlaps the model run (which releases
        the GIL); py-spy showed the plug-in's sort as most of its share of engine-core time.
        Python's sort holds the GIL. Both give the same order: the keys end on the unique id.
        Above ``_GIL_SORT_MAX`` rows Python's sort costs more than the other thread's work it
        keeps off the critical path (benchmarks/plugin_step_cost.py), so numpy sorts those.
        """
        if not self._hold_gil or len(keys[0]) > _GIL_SORT_MAX:
            return np.lexsort(keys)
        rows = list(zip(*(k.tolist() for k in reversed(keys))))
        return np.array(sorted(range(len(rows)), key=rows.__getitem__), dtype=np.intp)

    @property
    def ranker(self) -> PolicyRanker:
        """This policy's order and budget behind the declared :class:`Ranker` interface (what
        the vLLM plug-in uses; engine/ranker.py)."""
        return PolicyRanker(self)

    def _enqueue(self, req: Request, now: float) -> None:
        self.table.add(req)

    def _on_preempted(self, req: Request) -> None:
        self.table.refresh(req)  # stays in the one queue, its KV dropped or on host

    def _refresh(self, r: Request) -> None:
        self.table.refresh(r)

    def _on_finished(self, req: Request) -> None:
        self.table.remove(req)

    def requests(self) -> Iterable[Request]:
        return iter(self.table)

    def has_unfinished(self) -> bool:
        return len(self.table) > 0

    @property
    def num_unfinished(self) -> int:
        return len(self.table)

    def update_from_output(self, out: SchedulerOutput, now: float) -> list[Request]:
        finished = super().update_from_output(out, now)
        self.table.refresh_many(out.reqs)  # skips requests that just finished
        return finished

    def plan(self, now: float, slots: np.ndarray) -> tuple[np.ndarray, float]:
        """Order of ``slots`` (an index array into them) and the iteration's time budget."""
        keys, budget = self.plan_keys(now, slots)
        return self.lexsort(keys), budget

    def plan_keys(self, now: float,
                  slots: np.ndarray) -> tuple[tuple[np.ndarray, ...], float]:
        """Sort keys of ``slots`` (``np.lexsort``'s convention: last key primary; the first key
        is the unique request id, so the order is total) and the iteration's time budget.

        Policies that express their order as keys get :meth:`ordered_head` cheaply; one that
        overrides :meth:`plan` instead (its budget depends on the order) still works there, at
        the cost of a full sort.
        """
        raise NotImplementedError

    @property
    def _keyed(self) -> bool:
        return type(self).plan_keys is not UnifiedQueueScheduler.plan_keys

    def plan_small(self, now: float) -> tuple[list[Request], float]:
        """The same order and budget as :meth:`plan`, computed in plain Python.

        Used when the queue is short: a dozen numpy calls cost ~30 us whatever the size, a
        Python loop over ten requests less. Both paths use the same cached floats and the same
        total order (ties end on the unique request id), so they agree exactly; a test checks it.
        """
        raise NotImplementedError

    def ordered(self, now: float) -> tuple[list[Request], float]:
        if len(self.table) <= self.small_queue:
            return self.plan_small(now)
        slots = self.table.active_slots()
        order, budget = self.plan(now, slots)
        return self.table.requests_at(slots[order]), budget

    def ordered_head(self, now: float, k: int,
                     must: Sequence[Request] = ()) -> tuple[list[Request], float]:
        """The first ``k`` requests of :meth:`ordered`'s order followed by those of ``must``
        that come later, in that order; and the same budget.

        Why: an engine that admits only a few requests a step (the vLLM plug-in: its free
        sequence slots) needs the head of the order and where its running requests stand, not
        the order of a whole long queue. With 16 slots and 1,024 queued requests, sorting every
        request and turning every row into a Python object each step was most of the plug-in's
        cost (docs/BENCHMARKS.md section 15). Here the head is selected with ``np.partition``
        (linear time) and only the selected rows are sorted; the result is exactly
        :meth:`ordered`'s order restricted to those rows (tests/engine/test_ordered_head.py).
        """
        t = self.table
        n = len(t)
        if (n <= k + len(must) or n <= self.small_queue or not self._keyed
                or (self._hold_gil and n <= _GIL_SORT_MAX)):
            order, budget = self.ordered(now)
            if n <= k:
                return order, budget
            want = {id(r) for r in must}
            return order[:k] + [r for r in order[k:] if id(r) in want], budget
        slots = t.active_slots()
        keys, budget = self.plan_keys(now, slots)
        rows = head_rows(keys, k)
        if rows is None:  # a NaN key at the boundary: sort everything
            rows = np.arange(n)
        if must:  # a mask, not np.union1d (which sorts)
            keep = np.zeros(n, bool)
            keep[rows] = True
            keep[np.searchsorted(slots, t.slots_of(must))] = True
            rows = np.flatnonzero(keep)
        sub = self.lexsort(tuple(key[rows] for key in keys))
        return t.requests_at(slots[rows[sub]]), budget

    def _free_slots(self, order: Sequence[Request], out: SchedulerOutput) -> int:
        """``resident_seqs``: sequence slots free for requests without KV this step.

        As the vLLM plug-in does before vLLM's ``schedule()`` (its tail preemption): when no
        slot is free, the best request without KV displaces resident requests of a strictly
        lower class, worst-ranked first, at most ``max_preempt_per_step`` of them. Within a
        class nothing is displaced (two requests would evict each other back and forth).
        """
        free = self.max_num_seqs - self.kv.holding
        if free > 0 or self.max_preempt_per_step == 0:
            return free
        best = next((r for r in order if not r.blocks), None)
        if best is None:
            return free
        victims = [r for r in order if r.blocks > 0 and self.may_displace(r, best)]
        for v in reversed(victims[-self.max_preempt_per_step:]):
            if free > 0:
                break
            self._preempt(v, out)
            free += 1
        return free

    @staticmethod
    def may_displace(victim: Request, best: Request) -> bool:
        """Whether ``best`` (waiting without KV) may displace the resident ``victim`` to get a
        sequence slot: only from a strictly lower class, so two requests of one class never evict
        each other back and forth. One rule for our engine (``resident_seqs``) and the vLLM
        plug-in's tail preemption (through :class:`~proserve.engine.ranker.Ranker`);
        benchmarks/slot_probes.py varies it."""
        return victim.priority > best.priority

    def _schedule(self, now: float) -> SchedulerOutput:
        out = self.new_output()
        if len(self.table) == 0:
            return out
        order, budget = self.ordered(now)
        self._walk(order, budget, out)
        return out

    def _walk(self, order: Sequence[Request], budget: float, out: SchedulerOutput,
              tok_cap: int | None = None) -> None:
        # Hot loop (runs for every scheduled sequence of every step): attribute lookups hoisted,
        # the batch append inlined, and KV allocation called only when a block boundary is
        # crossed (15 of 16 decode steps need no new block).
        m = self.model
        c1, c2, c3, c4, c5, d1, d2 = m.c1, m.c2, m.c3, m.c4, m.c5, m.d1, m.d2
        bs = self.kv.block_size
        tok_cap = self.max_num_batched_tokens if tok_cap is None else tok_cap
        seq_cap = self.max_num_seqs
        min_chunk = self.min_chunk
        running = Status.RUNNING
        reqs, ntoks = out.reqs, out.num_tokens
        tail = _TailVictims(order)
        guard = self.mode.offload and self.class_guard
        trim = self.mode.copy_budget
        if trim:
            self._set_copy_budget(budget)
        pc = self.prefix_active
        kv = self.kv
        hit = 0
        # resident_seqs: sequence slots left (a request holding KV holds one); every preempted
        # request held KV, so each preemption during the walk frees a slot
        slots_free = -1
        displaced: set[int] = set()
        if self.resident_seqs:
            slots_free = self._free_slots(order, out)
            seen = len(out.preempted)
            displaced = {id(v) for v in out.preempted}  # not rescheduled in the same step
        new_seq = False
        for i, r in enumerate(order):
            tail.pos = i
            if i > tail.last or len(reqs) >= seq_cap:
                break  # reached requests already preempted (KV is exhausted) or the seq cap
            tok_left = tok_cap - out.prefill_tokens - out.decodes
            if tok_left <= 0:
                break
            if slots_free >= 0:
                slots_free += len(out.preempted) - seen
                seen = len(out.preempted)
                new_seq = not r.blocks
                if (new_seq and slots_free <= 0) or id(r) in displaced:
                    continue  # no sequence slot: it waits; requests holding one may still run
            time_left = budget - out.duration
            if trim and not r.blocks and r.host_blocks and not self._trim_reload(
                    r, time_left, not reqs):
                continue  # its reload does not fit this step's copy budget: next step
            p = r.computed
            # prefix cache: a request about to get its first KV starts after its cached
            # prefix, so its chunk and cost cover only uncached tokens
            if pc and not p and r.prefix is not None and not r.blocks:
                hit = kv.match_prefix(r)[0]
                p = hit * bs
            pend = r.prompt_len + r.generated - p
            if r.generated == 0 or pend > 1:  # prefill stage: divisible item
                q = m.max_chunk(time_left, p, min(pend, tok_left))
                if q < pend and q < min_chunk:
                    if reqs:
                        break
                    q = min(pend, tok_left, min_chunk)
                if q == 1 and p > 0:
                    cost = d1 + d2 * (p + 1)
                else:
                    cost = c5 + c1 * q * q + c2 * q + c3 * q * p + c4 * p
            else:
                q = 1
                cost = d1 + d2 * (p + 1)
                if cost > time_left and reqs:
                    break
            if hit:  # take the matched cached blocks, then allocate the rest
                self._prefix_hit(r, hit)
                if r.blocks * bs < p + q and not self._allocate_or_preempt(r, q, out, tail):
                    self._undo_hit(r)
                    break
                hit = 0
            elif r.blocks * bs < p + q:
                # offload modes: a request without KV (resuming from host, or new) preempts
                # only lower-priority classes (see _TailVictims)
                guarded = guard and not r.blocks
                tail.floor = r.priority if guarded else -1
                if not self._allocate_or_preempt(r, q, out, tail):
                    if guarded:  # it waits for free blocks; those holding KV go on
                        tail.floor = -1
                        continue
                    break
                tail.floor = -1
            reqs.append(r)
            ntoks.append(q)
            out.duration += cost
            if q == 1 and p > 0:
                out.decodes += 1
            else:
                out.prefill_tokens += q
            r.status = running
            if new_seq:
                slots_free -= 1


class _TailVictims:
    """Preemption victims from the tail of the order, never at or before the current item."""

    __slots__ = ("order", "last", "pos", "floor")

    def __init__(self, order: Sequence[Request]) -> None:
        self.order = order
        self.last = len(order) - 1  # items after ``last`` have been considered as victims
        self.pos = 0
        self.floor = -1  # victims must have a priority number above this (-1: any)

    def __call__(self) -> Request | None:
        while self.last > self.pos:
            v = self.order[self.last]
            if v.blocks > 0:
                if v.priority <= self.floor:
                    return None  # not preempted for this request; stays a victim for others
                self.last -= 1
                return v
            self.last -= 1
        return None


class AdaptiveCapacityScheduler(UnifiedQueueScheduler):
    """Deadline-ordered policies with FairBatching-style adaptive batch capacity."""

    def __init__(self, model: LatencyModel, *, eps_frac: float = 0.65, near_frac: float = 1.0,
                 tiers: bool = False, **kw) -> None:
        super().__init__(model, **kw)
        self.eps_frac = eps_frac
        self.near_frac = near_frac
        self.tiers = tiers

    def plan_keys(self, now: float,
                  slots: np.ndarray) -> tuple[tuple[np.ndarray, ...], float]:
        t = self.table
        dl = t.dl[slots]
        pre = t.pre[slots]
        slack = dl - now
        # the budget is set by decodes that can still make their next deadline; one that is
        # already late cannot be saved and must not shrink every batch (it would spiral)
        feasible = ~pre & (slack >= t.t_hat[slots] + self.model.c0)
        if feasible.any():
            budget = max(float(slack[feasible].min()), self.eps_frac * float(t.tpot[slots].min()))
        else:
            budget = math.inf
        if self.tiers:
            near = slack < self.near_frac * t.tpot[slots]
            tier = np.where(pre, 1, np.where(near, 0, 2))
            return (t.rid[slots], t.arrival[slots], dl, tier), budget
        return (t.rid[slots], t.arrival[slots], dl), budget

    def plan_small(self, now: float) -> tuple[list[Request], float]:
        t = self.table
        dl, th = t.py_dl, t.py_t_hat
        c0 = self.model.c0
        min_slack = math.inf
        min_tpot = math.inf
        keyed = []
        for s, r in t.items():
            slack = dl[s] - now
            pre = r.generated == 0 or r.prompt_len + r.generated - r.computed > 1
            if not pre and slack < min_slack and slack >= th[s] + c0:
                min_slack = slack
            if r.tpot_slo < min_tpot:
                min_tpot = r.tpot_slo
            if self.tiers:
                tier = 1 if pre else (0 if slack < self.near_frac * r.tpot_slo else 2)
            else:
                tier = 0
            keyed.append((tier, dl[s], r.arrival, r.id, r))
        keyed.sort()
        budget = max(min_slack, self.eps_frac * min_tpot) if min_slack < math.inf else math.inf
        return [k[4] for k in keyed], budget


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

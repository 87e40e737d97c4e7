"""PolyServe (arXiv 2507.17769): SLO tiers, load-gradient routing, lazy promotion, auto-scaling.

What it does, per request r of tier t (tiers are the ``--classes``, tightest TPOT first; see
``../shared/reference/polyserve.md`` sections 2-4):

1. **Own tier, highest load first.** Among the tier's ready instances that pass the admission
   test, the most loaded (load = predicted iteration time with r admitted; ties by batch size,
   then index). The tier's last instances drain and can be given back: the load gradient.
2. **Lazy promotion.** Else the next tighter tiers' instances, tested against the host tier's
   tighter TPOT, so residents are never hurt.
3. **Scale up.** Else one instance from the idle pool joins tier t (ready after
   ``scale_up_delay_s``; the paper assumes 0) and r goes there.
4. **Pending.** Else r waits in the tier's FIFO pending queue in the router and is retried as
   capacity frees; the wait counts against its TTFT. Nothing is refused.

**Admission test** of r on instance s for a host tier of TPOT T (:func:`admits`):

* first token: r's pending time + the rest of s's current iteration + the continuous chunked
  prefill prediction (co-located: the dynamic-chunking rule played forward over the queued
  prefills ahead and then r's prompt, each iteration ``margin * T`` long; a chunk under
  ``min_chunk`` tokens fails the test) <= r's TTFT SLO;
* second token: that + the next iteration <= TTFT + T;
* later tokens: s's residents (and queued prefills) play forward one token per iteration until
  each reaches the tier's mean output length; the largest KV reached must fit, and the iteration
  at that KV with the batch r joins must stay within ``margin * T``.

A request already past what its TTFT allows (it waited too long in the pending queue) skips the
first two checks: it is late wherever it goes, and the pending queue must not become a dead end.

**Auto-scaling.** +1 instance for a tier when its requests start pending and the pool is not
empty; with ``scale_up_delay_s > 0`` one more at every check while the tier's pending queue has
not started to shrink (ours: the paper assumes instant scale-up and says no more); an instance of a
tier that has been empty at ``empty_checks`` consecutive checks, ``check_period_s`` apart, goes
back to the pool (running requests always finish in place: an instance leaves only when empty, so
no KV ever moves).

Parameters the paper leaves open, and why these defaults:

* ``margin = 0.9``: the same iteration budget as the ``dynamic-chunk`` engine (the few percent the
  latency model is wrong by, so a predicted-on-time step does not routinely land late).
* ``min_chunk = 32`` tokens: below that a chunk pays a full iteration's fixed cost (c0) for almost
  no prefill progress; the instance is too loaded for another prompt.
* ``check_period_s = 1.0``, ``empty_checks = 2``: the paper's example ("e.g. 1 s, two consecutive
  checks"), long enough that a tier does not give back an instance between two bursts.
* ``scale_up_delay_s = 0``: the paper's assumption; ``--scale-up-delay`` models a real fleet
  (engine start, weights load).
* ``initial``: instances per tier at time 0 (default none: everything starts in the pool, and the
  first requests scale their tiers up).
* the wait for the current iteration is taken as a whole iteration: the view does not say when
  the step began, and overestimating by < one TPOT is the safe side.

Disaggregated mode: the tiers own the decode instances; the prefill instance is the one with the
least predicted first-token time, and the decode instance must admit r with that prefill
prediction in its first-token check. The router's dispatch records (:class:`BaseRouter`) make
back-to-back decisions see each other.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.request import Request
from .base import BaseRouter, NoHealthyInstance, Placement, register_router
from .view import EffectiveLoad, InstanceView, predicted_ttft


@dataclass(frozen=True, slots=True)
class Tier:
    """One SLO tier: its name (the class), TPOT SLO in seconds, expected output length."""

    name: str
    tpot: float
    mean_output: float


def parse_tiers(spec: Any) -> list[Tier]:
    """Tiers from router arguments: a list of ``Tier``, dicts or ``(name, tpot, mean_output)``;
    sorted tightest TPOT first (ties keep the given order)."""
    if not spec:
        raise ValueError("polyserve needs tiers (the simulator and gateway derive them from the "
                         "classes)")
    out: list[Tier] = []
    for x in spec:
        if isinstance(x, Tier):
            t = x
        elif isinstance(x, dict):
            missing = [k for k in ("name", "tpot") if k not in x]
            if missing:
                raise ValueError(f"tier {x!r}: missing {', '.join(missing)}")
            t = Tier(str(x["name"]), float(x["tpot"]), float(x.get("mean_output", 256.0)))
        else:
            name, tpot, mean = x
            t = Tier(str(name), float(tpot), float(mean))
        if not t.tpot > 0 or not t.mean_output >= 1:
            raise ValueError(f"tier {t.name!r}: tpot must be > 0 and mean_output >= 1")
        out.append(t)
    if len({t.name for t in out}) != len(out):
        raise ValueError("tier names must be distinct")
    return sorted(out, key=lambda t: t.tpot)


# ---------------------------------------------------------------------- the admission test
def iteration_time(m, batch: int, kv_tokens: float) -> float:
    """Profiled decode iteration time at (batch size, KV tokens), with c0."""
    return m.c0 + batch * m.d1 + m.d2 * kv_tokens


def chunked_prefill_s(m, step_s: float, items: Sequence[tuple[int, int]], budget: float,
                      min_chunk: int, limit: float) -> float:
    """Continuous chunked-prefill prediction: seconds to prefill ``items`` (``(pending tokens,
    computed context)``, in order) when every iteration carries the decode batch (``step_s``,
    c0 included) plus the largest chunk that keeps it within ``budget``. ``inf`` if a chunk would
    fall under ``min_chunk`` (or the item's whole remainder, if smaller), or once ``limit`` is
    passed (the caller's deadline: no need to play further)."""
    done = prefill_finish_times(m, step_s, items, budget, min_chunk, limit)
    return done[-1] if done else 0.0


def prefill_finish_times(m, step_s: float, items: Sequence[tuple[int, int]], budget: float,
                         min_chunk: int, limit: float) -> list[float]:
    """When each of ``items`` finishes its prefill (seconds from now), played forward as in
    :func:`chunked_prefill_s`; an item that finishes joins the decode batch, so later iterations
    carry it (its context at d2 per token) and leave less room for chunks. The last entry is
    ``inf`` where the play-forward fails (chunk under ``min_chunk``, or past ``limit``)."""
    t = 0.0
    out: list[float] = []
    for pend, ctx in items:
        while pend > 0:
            c = m.max_chunk(budget - step_s, ctx, pend)
            if c < min(min_chunk, pend):
                out.append(math.inf)
                return out
            t += step_s + m.prefill_time(c, ctx)
            if t > limit:
                out.append(math.inf)
                return out
            pend -= c
            ctx += c
        out.append(t)
        step_s += m.d1 + m.d2 * (ctx + 1)  # now a decode in every later iteration
    return out


def peak_kv(ctx: np.ndarray, remaining: np.ndarray) -> float:
    """Largest KV (tokens) reached when each sequence grows one token per iteration and retires
    after ``remaining`` more: KV(t) = sum over sequences still running at t of ctx + t; it peaks
    just before a retirement (or at t = 0)."""
    if ctx.size == 0:
        return 0.0
    order = np.argsort(remaining, kind="stable")
    rem = remaining[order]
    suffix = np.cumsum(ctx[order][::-1])[::-1]  # sum of ctx over sequences j >= i
    t = rem - 1.0  # the last iteration sequence i is still in the batch
    alive = ctx.size - np.arange(ctx.size)  # sequences with remaining >= rem[i]
    return float(np.max(np.concatenate(([suffix[0]], suffix + alive * t))))


def admits(load: EffectiveLoad, req: Request, tpot: float, mean_output: float, now: float, *,
           margin: float, min_chunk: int, chunked: bool = True,
           ttft_s: float | None = None, protect_queued: bool = False) -> bool:
    """PolyServe's admission test of ``req`` on the instance ``load`` describes, for a host tier
    of TPOT ``tpot`` (module docstring). ``ttft_s``: the first-token time predicted elsewhere
    (disaggregated: the prefill instance's), instead of the chunked prediction here.
    ``protect_queued`` (ours, not the paper's): also refuse if ``req``, slotted into the engine's
    slack order, would push a queued prefill that was going to make its TTFT past it, extending
    "residents are never hurt" from TPOT to the first token of the queue."""
    m = load.model
    budget = margin * tpot
    step = load.decode_step()
    waited = now - req.arrival
    slack = req.ttft_slo - waited - step  # the rest of the current iteration, taken whole
    # residents and queued work (queued prefills become residents when their prompt is done)
    ld = load.view.load
    if ld.decode_ctx and len(ld.decode_ctx) == load.decodes:
        ctx = np.asarray(ld.decode_ctx, dtype=np.float64)
        gen = np.asarray(ld.decode_gen, dtype=np.float64)
    else:  # the source gave no rows: the mean context, nothing generated yet
        mean = load.decode_context / load.decodes if load.decodes else 0.0
        ctx, gen = np.full(load.decodes, mean), np.zeros(load.decodes)
    q = load.prefill
    if q:
        ctx = np.concatenate((ctx, [it.pending + it.computed for it in q]))
        gen = np.concatenate((gen, [it.generated for it in q]))
    if ctx.size == 0:
        return True  # an idle instance: tier assignment made r's SLO attainable on one
    batch = ctx.size + 1
    ctx = np.append(ctx, req.prompt_len + 1)
    gen = np.append(gen, 0.0)
    kv = peak_kv(ctx, np.maximum(mean_output - gen, 1.0))
    if kv > m.kv_tokens or iteration_time(m, batch, kv) > budget:
        return False
    if slack <= 0 or ttft_s is not None and ttft_s > req.ttft_slo - waited:
        return True  # late wherever it goes: only the TPOT and KV tests apply
    if ttft_s is None:
        # the queued prefills the engine runs first: dynamic-chunk's wait-time-aware order
        # (least TTFT slack first), so a short urgent prompt is not charged for long ones
        mine = req.arrival + req.ttft_slo - m.prefill_time(req.prompt_len)
        keyed = sorted(((it.arrival + it.ttft_slo - m.prefill_time(it.pending, it.computed), i)
                        for i, it in enumerate(q)))
        ahead = [(q[i].pending, q[i].computed) for k, i in keyed if k <= mine]
        bud = budget if chunked else math.inf
        ttft_s = chunked_prefill_s(m, step, ahead + [(req.prompt_len, 0)], bud, min_chunk,
                                   slack)
        if ttft_s > slack:
            return False
        if protect_queued:
            behind = [i for k, i in keyed if k > mine]
            if behind and _hurts(m, step, ahead, req, [q[i] for i in behind], bud, min_chunk,
                                 now):
                return False
    second = iteration_time(m, batch, float(ctx.sum()))
    return waited + step + ttft_s + second <= req.ttft_slo + tpot


def _hurts(m, step: float, ahead: list[tuple[int, int]], req: Request, behind: list,
           budget: float, min_chunk: int, now: float) -> bool:
    """Would ``req`` (slotted after ``ahead``) make one of the queued prefills ``behind`` it,
    which was going to make its first-token deadline, miss it?"""
    rest = [(it.pending, it.computed) for it in behind]
    without = prefill_finish_times(m, step, ahead + rest, budget, min_chunk, math.inf)
    with_r = prefill_finish_times(m, step, ahead + [(req.prompt_len, 0)] + rest, budget,
                                  min_chunk, math.inf)
    n = len(ahead)
    for j, it in enumerate(behind):
        left = it.arrival + it.ttft_slo - now  # time to its first-token deadline
        if n + j < len(without) and without[n + j] <= left and (
                n + 1 + j >= len(with_r) or with_r[n + 1 + j] > left):
            return True
    return False


def load_after(load: EffectiveLoad, req: Request) -> float:
    """Predicted decode iteration time once ``req`` and the queued prefills are residents: the
    load PolyServe's gradient and the ``minimal`` baseline sort by."""
    q = load.prefill
    return load.decode_step(len(q) + 1,
                            sum(it.pending + it.computed for it in q) + req.prompt_len + 1)


# ---------------------------------------------------------------------- the router
class PolyServe(BaseRouter):
    """PolyServe's router and fleet manager (module docstring). Holds requests (pending) and
    instance membership, so the caller uses the fleet API (:meth:`offer`, :meth:`retry`,
    :meth:`tick`, :meth:`next_wakeup`) instead of ``route``."""

    holds_requests = True
    wants_decode_rows = True  # its admission test plays each resident forward

    def __init__(self, tiers: Any = None, *, margin: float = 0.9, min_chunk: int = 32,
                 check_period_s: float = 1.0, empty_checks: int = 2,
                 scale_up_delay_s: float = 0.0, initial: dict[str, int] | None = None,
                 pending_order: str = "fifo", tries: int = 8, protect_queued: bool = False,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.protect_queued = bool(protect_queued)
        if pending_order not in ("fifo", "deadline"):
            raise ValueError("pending_order must be 'fifo' (the paper) or 'deadline'")
        if tries < 1:
            raise ValueError("tries must be >= 1")
        self.pending_order = pending_order
        self.tries = int(tries)
        self.tiers = parse_tiers(tiers)
        if not 0 < margin <= 1:
            raise ValueError("margin must be in (0, 1]")
        if not (min_chunk >= 1 and 0 < check_period_s < math.inf and empty_checks >= 1
                and 0 <= scale_up_delay_s < math.inf):  # written so NaN fails too
            raise ValueError("need min_chunk >= 1, 0 < check_period_s < inf, empty_checks >= 1, "
                             "0 <= scale_up_delay_s < inf")
        self.margin = margin
        self.min_chunk = int(min_chunk)
        self.check_period_s = check_period_s
        self.empty_checks = int(empty_checks)
        self.scale_up_delay_s = scale_up_delay_s
        self.initial = dict(initial or {})
        self._tier_idx = {t.name: i for i, t in enumerate(self.tiers)}
        self.pending: list[deque[Request]] = [deque() for _ in self.tiers]
        self._last_pending = [0] * len(self.tiers)  # pending depth at the previous check
        self.fleet: Fleet | None = None

    # ------------------------------------------------------------------ setup
    def attach(self, roles: Sequence[str], now: float = 0.0) -> None:
        """Tell the router its instances (by role): the tiered ones (co-located or decode) start
        in the pool, or per ``initial``; prefill instances are shared by every tier."""
        tiered = [k for k, r in enumerate(roles) if r != "prefill"]
        self.prefill_ids = [k for k, r in enumerate(roles) if r == "prefill"]
        self.fleet = Fleet(len(roles), tiered, [t.name for t in self.tiers], now)
        for name, count in self.initial.items():
            if name not in self._tier_idx:
                raise ValueError(f"initial names unknown tier {name!r}")
            for _ in range(count):
                if not self.fleet.pool:
                    raise ValueError("initial asks for more instances than the fleet has")
                self.fleet.join(self.fleet.pool[0], self._tier_idx[name], now, now)

    def tier_of(self, req: Request) -> int:
        """The request's tier: its class; a class the router does not know goes to the loosest
        tier whose TPOT is no looser than the request's own (else the tightest)."""
        i = self._tier_idx.get(req.cls)
        if i is not None:
            return i
        ok = [k for k, t in enumerate(self.tiers) if t.tpot <= req.tpot_slo]
        return ok[-1] if ok else 0

    # ------------------------------------------------------------------ fleet API
    def offer(self, req: Request, views: Sequence[InstanceView], now: float) -> list[Placement]:
        """A new request: placed now (with any pending ones that can go), or queued."""
        t = self.tier_of(req)
        if self.pending[t]:  # others of its tier wait already: it queues behind them (they
            self.pending[t].append(req)  # are retried as capacity frees and at every tick)
            return []
        p = self._place(req, t, {v.index: v for v in views}, now)
        if p is not None:
            return [p]
        self.pending[t].append(req)
        return []

    def retry(self, views: Sequence[InstanceView], now: float,
              freed: int | None = None) -> list[Placement]:
        """Capacity may have freed: place the pending requests that now fit (FIFO per tier,
        tightest tier first). ``freed``: the one instance whose capacity changed (a request
        finished there); only it is tested (every instance is at the periodic :meth:`tick`),
        which keeps a busy fleet's retries O(pending heads) instead of O(heads x fleet)."""
        out: list[Placement] = []
        if not any(self.pending):
            return out
        by_index = {v.index: v for v in views}
        for t, q in enumerate(self.pending):
            if self.pending_order == "fifo":
                while q:
                    p = self._place(q[0], t, by_index, now, freed)
                    if p is None:
                        break
                    q.popleft()
                    out.append(p)
                continue
            # earliest first-token deadline first; a request that does not fit does not block
            # the ones behind it (up to ``tries`` failures per tier and call, to bound the cost)
            fails = 0
            for r in sorted(q, key=lambda r: (r.arrival + r.ttft_slo, r.arrival, r.id)):
                p = self._place(r, t, by_index, now, freed)
                if p is None:
                    fails += 1
                    if fails >= self.tries:
                        break
                    continue
                q.remove(r)
                out.append(p)
        return out

    def tick(self, views: Sequence[InstanceView], now: float) -> list[Placement]:
        """Timers: instances that finished starting, and the periodic scale-down check."""
        f = self._fleet()
        f.now = now
        if now >= f.next_check:
            members = set(f.members())
            busy = set()
            for v in views:
                if v.index in members:
                    x = self._effective(v)  # the router's own dispatches not yet in the view
                    if x.prefill or x.decodes:
                        busy.add(v.index)
            f.check(busy, self.empty_checks, now)
            f.next_check = now + self.check_period_s
            # with a scale-up delay: +1 more per check while a tier's pending queue has not
            # started to shrink (one starting instance per first-pending event would take a cold
            # tier minutes to reach its size)
            for t, q in enumerate(self.pending):
                if self.scale_up_delay_s > 0 and q and len(q) >= self._last_pending[t] and f.pool:
                    k = next((k for k in f.pool if k in members_all(views)), None)
                    if k is not None:
                        f.join(k, t, now, now + self.scale_up_delay_s)
                self._last_pending[t] = len(q)
            self._snap(now)
        return self.retry(views, now)

    def next_wakeup(self) -> float:
        """When :meth:`tick` should run next (inf: nothing to do until the next event)."""
        f = self._fleet()
        t = min((f.ready_at[k] for k in f.members() if f.ready_at[k] > f.now), default=math.inf)
        if f.members():
            t = min(t, f.next_check)
        return t

    def has_pending(self) -> bool:
        return any(self.pending)

    def pending_requests(self) -> list[Request]:
        return [r for q in self.pending for r in q]

    def cancel(self, req: Request) -> bool:
        """Take ``req`` out of its pending queue (its client left, or it waited too long);
        False if it is not pending (already placed, or never offered)."""
        for q in self.pending:
            for i, r in enumerate(q):
                if r is req:
                    del q[i]
                    return True
        return False

    def fleet_stats(self, now: float) -> dict[str, Any]:
        return self._fleet().stats(now, [len(q) for q in self.pending])

    # ------------------------------------------------------------------ BaseRouter API
    def route(self, req: Request, views: Sequence[InstanceView], now: float) -> int:
        """One-shot routing (no pending queue): the ladder, else the least loaded instance of
        the tier (or of the whole fleet) so the caller always gets an answer."""
        by_index = {v.index: v for v in views}
        p = self._place(req, self.tier_of(req), by_index, now)
        if p is not None:
            return p[1]
        loads = self._loads([v for v in views if v.role != "prefill"])
        best = min(loads, key=lambda x: (load_after(x, req), x.index))
        self.record(best.index, req, best.view)
        return best.index

    # ------------------------------------------------------------------ the ladder
    def _fleet(self) -> Fleet:
        if self.fleet is None:
            raise RuntimeError("polyserve: attach(roles) first (the simulator and gateway do)")
        return self.fleet

    def _snap(self, now: float) -> None:
        """One timeline sample: instances per tier and pending depth per tier."""
        f = self._fleet()
        f.timeline.append((now, f.counts(), [len(q) for q in self.pending]))

    def _place(self, req: Request, t: int, views: dict[int, InstanceView], now: float,
               only: int | None = None) -> Placement | None:
        """The ladder for ``req`` of tier ``t``; ``only``: test just that instance (the one
        whose capacity freed) before scaling up."""
        f = self._fleet()
        f.now = now
        pre = None
        ttft_s = None
        if self.prefill_ids:  # disaggregated: the prefill instance with the earliest first token
            cands = [views[k] for k in self.prefill_ids if k in views and views[k].healthy]
            if not cands:
                raise NoHealthyInstance("no healthy prefill instance")
            ttft_s, _, pre = min((predicted_ttft(v, req.prompt_len), v.index, self._effective(v))
                                 for v in cands)
        for host in range(t, -1, -1):  # own tier, then tighter ones (lazy promotion)
            tier = self.tiers[host]
            ks = f.ready_members(host, now)
            if only is not None:
                ks = [k for k in ks if k == only]
            loads = [self._effective(views[k]) for k in ks if k in views and views[k].healthy]
            x = self.pick_admitting(req, loads, tier, now, pre is None, ttft_s)
            if x is not None:
                return self._commit(req, x.view, pre)
        # scale up: one idle instance joins the tier
        k = next((k for k in f.pool if k in views and views[k].healthy), None)
        if k is not None and not (self.scale_up_delay_s > 0 and f.starting(t, now)):
            f.join(k, t, now, now + self.scale_up_delay_s)
            self._snap(now)
            if self.scale_up_delay_s == 0:
                return self._commit(req, views[k], pre)
        return None

    def admits(self, x: EffectiveLoad, req: Request, tier: Tier, now: float, chunked: bool,
               ttft_s: float | None) -> bool:
        return admits(x, req, tier.tpot, tier.mean_output, now, margin=self.margin,
                      min_chunk=self.min_chunk, chunked=chunked, ttft_s=ttft_s,
                      protect_queued=self.protect_queued)

    def pick_admitting(self, req: Request, loads: list[EffectiveLoad], tier: Tier, now: float,
                       chunked: bool, ttft_s: float | None) -> EffectiveLoad | None:
        """The load gradient: the most loaded instance that admits ``req`` (ties: the larger
        batch, then the lower index); None if none does. Tests stop at the first that admits."""
        loads.sort(key=lambda x: (-load_after(x, req), -(x.decodes + len(x.prefill)), x.index))
        return next((x for x in loads if self.admits(x, req, tier, now, chunked, ttft_s)), None)

    def _commit(self, req: Request, view: InstanceView, pre: EffectiveLoad | None) -> Placement:
        if pre is None:
            self.record(view.index, req, view)
            return (req, view.index, -1)
        self.record(pre.index, req, pre.view)
        self.record(view.index, req, view, decode=True)
        return (req, pre.index, view.index)

    def pick(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        raise NotImplementedError("polyserve routes through offer()/route()")


class PolyServeGo(PolyServe):
    """Ours: PolyServe's tiers, admission test, promotion and auto-scaling, with ProServe's
    GoRouting as the choice among the instances of a tier that admit the request (incremental
    gain, pack the most loaded light instance; the load gradient is GoRouting's packing), the
    pending queue in first-token-deadline order instead of FIFO (a long prompt that fits nowhere
    does not hold up short urgent ones behind it), and SlideBatching (``slide-bounded``) as the
    engine by default (sim.run.ROUTER_POLICY), so the tiers' weights are honoured inside each
    instance. ``go_args`` go to the inner :class:`~proserve.cluster.go.GoRouter`."""

    def __init__(self, tiers: Any = None, *, pending_order: str = "deadline",
                 protect_queued: bool = True, go_args: dict[str, Any] | None = None,
                 **kw: Any) -> None:
        super().__init__(tiers, pending_order=pending_order, protect_queued=protect_queued,
                         **kw)
        from .go import GoRouter

        self._go = GoRouter(**(go_args or {}))

    def pick_admitting(self, req: Request, loads: list[EffectiveLoad], tier: Tier, now: float,
                       chunked: bool, ttft_s: float | None) -> EffectiveLoad | None:
        ok = [x for x in loads if self.admits(x, req, tier, now, chunked, ttft_s)]
        if len(ok) <= 1:
            return ok[0] if ok else None
        view = self._go.choose(req, [x.view for x in ok], now)
        return next(x for x in ok if x.view is view)


def members_all(views: Sequence[InstanceView]) -> set[int]:
    """Indices of the healthy instances among ``views``."""
    return {v.index for v in views if v.healthy}


class Fleet:
    """Which tier each instance serves (or the idle pool), when it becomes ready, and the
    server-seconds each tier used. Times come from the caller."""

    def __init__(self, n: int, tiered: list[int], tier_names: list[str], now: float) -> None:
        self.n = n
        self.tier_names = tier_names
        self.tier_of: list[int] = [-1] * n  # -1: pool (or a prefill instance: never tiered)
        self.ready_at = [0.0] * n
        self.since = [now] * n
        self.empty_streak = [0] * n
        self.pool: list[int] = sorted(tiered)
        self.tiered = set(tiered)
        self.server_s = [0.0] * len(tier_names)
        self.scale_ups = [0] * len(tier_names)
        self.scale_downs = [0] * len(tier_names)
        self.timeline: list[tuple[float, list[int], list[int]]] = []
        self.changes: list[tuple[float, int]] = [(now, 0)]  # (time, tiered instances after)
        self.next_check = now
        self.now = now

    def members(self, t: int | None = None) -> list[int]:
        return [k for k, x in enumerate(self.tier_of) if (x >= 0 if t is None else x == t)]

    def ready_members(self, t: int, now: float) -> list[int]:
        return [k for k, x in enumerate(self.tier_of) if x == t and self.ready_at[k] <= now]

    def starting(self, t: int, now: float) -> bool:
        return any(x == t and self.ready_at[k] > now for k, x in enumerate(self.tier_of))

    def counts(self) -> list[int]:
        c = [0] * len(self.tier_names)
        for x in self.tier_of:
            if x >= 0:
                c[x] += 1
        return c

    def join(self, k: int, t: int, now: float, ready_at: float) -> None:
        if self.tier_of[k] != -1 or k not in self.tiered:
            raise RuntimeError(f"instance {k} is not in the pool")
        self.pool.remove(k)
        self.tier_of[k] = t
        self.since[k] = now
        self.ready_at[k] = ready_at
        self.empty_streak[k] = 0
        self.scale_ups[t] += 1
        self.changes.append((now, self.changes[-1][1] + 1))

    def leave(self, k: int, now: float) -> None:
        t = self.tier_of[k]
        self.server_s[t] += now - self.since[k]
        self.tier_of[k] = -1
        self.pool.append(k)
        self.pool.sort()
        self.scale_downs[t] += 1
        self.changes.append((now, self.changes[-1][1] - 1))

    def add_instance(self, k: int, now: float) -> None:
        """A new instance (index ``n``, e.g. a backend added on SIGHUP) joins the idle pool."""
        if k != self.n:
            raise RuntimeError(f"instance {k} joins a fleet of {self.n}")
        self.n += 1
        self.tier_of.append(-1)
        self.ready_at.append(0.0)
        self.since.append(now)
        self.empty_streak.append(0)
        self.tiered.add(k)
        self.pool.append(k)
        self.pool.sort()

    def remove_instance(self, k: int, now: float) -> None:
        """An instance leaves for good (its tier's server-seconds stop; never reused)."""
        if self.tier_of[k] >= 0:
            self.leave(k, now)
        if k in self.pool:
            self.pool.remove(k)
        self.tiered.discard(k)

    def check(self, busy: set[int], empty_checks: int, now: float) -> None:
        """One periodic check: instances empty ``empty_checks`` checks in a row go back."""
        for k in self.members():
            if k in busy or self.ready_at[k] > now:
                self.empty_streak[k] = 0
                continue
            self.empty_streak[k] += 1
            if self.empty_streak[k] >= empty_checks:
                self.leave(k, now)

    def check_invariants(self) -> None:
        """Every tiered instance is in exactly one tier or the pool."""
        in_pool = set(self.pool)
        if len(in_pool) != len(self.pool):
            raise AssertionError("an instance is in the pool twice")
        for k in self.tiered:
            if (self.tier_of[k] >= 0) == (k in in_pool):
                raise AssertionError(f"instance {k}: tier {self.tier_of[k]}, in pool "
                                     f"{k in in_pool}")

    def instance_seconds(self, t0: float, t1: float) -> float:
        """Integral over [t0, t1] of the number of instances in tiers."""
        total = 0.0
        for (ta, n), (tb, _) in zip(self.changes, self.changes[1:] + [(math.inf, 0)]):
            lo, hi = max(ta, t0), min(tb, t1)
            if hi > lo:
                total += n * (hi - lo)
        return total

    def stats(self, now: float, pending: list[int]) -> dict[str, Any]:
        used = list(self.server_s)
        for k in self.members():
            used[self.tier_of[k]] += now - self.since[k]
        return {
            "server_seconds_per_tier": dict(zip(self.tier_names, used)),
            "server_seconds": sum(used),
            "scale_ups": dict(zip(self.tier_names, self.scale_ups)),
            "scale_downs": dict(zip(self.tier_names, self.scale_downs)),
            "instances_per_tier": dict(zip(self.tier_names, self.counts())),
            "pending": dict(zip(self.tier_names, pending)),
        }


class Minimal(BaseRouter):
    """PolyServe's "Minimal" baseline: the instance with the least predicted iteration time once
    the request (and the queue ahead of it) is resident; every tier mixed everywhere."""

    def pick(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        return min(loads, key=lambda x: (load_after(x, req), x.index))

    def pick_decode(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        return min(loads, key=lambda x: (x.decode_step(1, req.prompt_len + 1), x.index))


register_router("polyserve", PolyServe,
                "PolyServe: SLO tiers, highest-load instance that passes the admission test, "
                "lazy promotion, scale-up from an idle pool, per-tier pending queue")
register_router("polyserve-go", PolyServeGo,
                "Ours: PolyServe's tiers, admission test and auto-scaling; GoRouting among the "
                "admitting instances of a tier; deadline-ordered pending queue; slide-bounded "
                "engine by default")
register_router("minimal", Minimal,
                "PolyServe's Minimal baseline: least predicted iteration time with the request "
                "admitted")

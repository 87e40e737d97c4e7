"""What a router sees of an instance: a small read-only view, plus the load estimates built on it.

A view is a snapshot of an engine's :class:`EngineLoad` taken at ``taken_at``. In simulation it
can be exact (a fresh view at every decision) or refreshed every ``view_interval`` (what a gateway
scraping ``/metrics`` sees); a router compensates for staleness with its own record of what it
dispatched since the view was taken (:class:`proserve.cluster.base.BaseRouter`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.request import Request
from ..engine.base import EngineLoad, PrefillItem
from ..latency.model import LatencyModel

# Router estimates hand prefill work to the engine in slices of this many seconds per iteration,
# each slice riding with the instance's decode batch; roughly one TPOT-sized iteration. Used only to
# count iterations (each pays c0 + the decode step) when predicting how long a prefill queue takes.
DEFAULT_PREFILL_SLICE_S = 0.03


@dataclass(slots=True)
class InstanceView:
    """Read-only snapshot of one instance, as a router may know it."""

    index: int
    policy: str
    model: LatencyModel
    taken_at: float
    load: EngineLoad
    role: str = "colocated"  # or "prefill" / "decode" in disaggregated mode
    healthy: bool = True
    # Per-view memo for routers (a view is an immutable snapshot, reused across the decisions
    # made before the next refresh): e.g. GoRouting's (work, deadline, weight) rows of the queue.
    memo: Any = None
    # How many leading prompt tokens of a request this instance has cached: a side-effect-free
    # lookup into the instance's prefix cache (the simulator binds the engine's
    # ``BlockManager.match_prefix``; it reads the cache as it is at the decision, not as it was at
    # ``taken_at``: the simulator's routers see prefixes exactly). None: the source cannot tell
    # (the gateway today), and :meth:`cached_tokens` answers 0.
    prefix_lookup: Callable[[Request], int] | None = None

    def cached_tokens(self, req: Request) -> int:
        """Leading prompt tokens of ``req`` cached on this instance now (0 if unknown)."""
        f = self.prefix_lookup
        return f(req) if f is not None and req.prefix is not None else 0


@dataclass(slots=True)
class EffectiveLoad:
    """A view plus the router's own dispatches since the view: the load a decision uses."""

    view: InstanceView
    prefill: list[PrefillItem]
    decodes: int
    decode_context: int
    free_blocks: int
    _drain: float = field(default=-1.0)

    @property
    def index(self) -> int:
        return self.view.index

    @property
    def model(self) -> LatencyModel:
        return self.view.model

    def decode_step(self, extra: int = 0, extra_ctx: int = 0) -> float:
        """Predicted decode iteration time (with ``extra`` more sequences), including c0."""
        return decode_step(self.view.model, self.decodes + extra, self.decode_context + extra_ctx)

    def drain(self, slice_s: float = DEFAULT_PREFILL_SLICE_S) -> float:
        """Predicted time to clear the prefill queue while decodes keep running."""
        if self._drain < 0:
            self._drain = drain_time(self.prefill, self.view.model, self.decode_step(), slice_s)
        return self._drain


def prefill_work(item: PrefillItem, m: LatencyModel) -> float:
    """Prefill time of a queued item's pending tokens on its computed context (no c0)."""
    return m.prefill_time(item.pending, item.computed)


def decode_step(m: LatencyModel, decodes: int, context: int) -> float:
    """One decode iteration of ``decodes`` sequences with ``context`` tokens in total, with c0."""
    return m.c0 + decodes * m.d1 + m.d2 * context


def work_time(work: float, step: float, slice_s: float = DEFAULT_PREFILL_SLICE_S) -> float:
    """Wall time of ``work`` seconds of prefill handed out in slices of ``slice_s``, each slice
    riding with one iteration that costs ``step`` (c0 + the decode batch)."""
    return work + math.ceil(work / slice_s) * step if work > 0 else 0.0


def drain_time(prefill: list[PrefillItem], m: LatencyModel, decode_step: float,
               slice_s: float = DEFAULT_PREFILL_SLICE_S) -> float:
    """Prefill work plus the per-iteration cost (c0 + decodes) of the iterations it needs."""
    return work_time(sum(prefill_work(it, m) for it in prefill), decode_step, slice_s)


def predicted_ttft(view: InstanceView, prompt_len: int, weight: float | None = None,
                   slice_s: float = DEFAULT_PREFILL_SLICE_S, cached: int = 0) -> float:
    """Seconds from now until a new request's first token on this instance: the queued prefill
    work ahead of it, then its own prefill, each paying the iterations it needs. The one formula
    GoRouting's light/heavy test and the admission decision (gateway and simulator) share.

    ``weight``: the request's weight. If the engine serves heavier work first
    (``load.orders_by_value``: our priority and SlideBatching policies, and, assumed, a gateway's
    backends, which receive each request's priority), queued work of a *lower* weight is
    overtaken and does not delay the request; otherwise (FCFS, EDF) all queued work counts.
    Work of unknown priority (items without an SLO: the gateway's padding for queued requests a
    backend reports but the gateway did not send) always counts.

    ``cached``: leading prompt tokens already cached there (:meth:`InstanceView.cached_tokens`);
    the request's own prefill then costs only the uncached rest, on the cached context.
    """
    m = view.model
    ld = view.load
    step = decode_step(m, ld.decodes, ld.decode_context)
    ahead = ld.prefill if weight is None or not ld.orders_by_value else [
        it for it in ld.prefill if it.weight >= weight or math.isinf(it.ttft_slo)]
    return drain_time(ahead, m, step, slice_s) + work_time(
        m.prefill_time(prompt_len - cached, cached), step, slice_s)


def view_of(engine, index: int, now: float, role: str = "colocated",
            healthy: bool = True, decode_rows: bool = False) -> InstanceView:
    """Snapshot an engine scheduler (anything with ``load()``, ``name`` and ``model``; with a
    ``kv`` :class:`~proserve.engine.kv.BlockManager` that caches prefixes, the view can also tell
    how much of a request's prompt is cached there)."""
    return InstanceView(index=index, policy=engine.name, model=engine.model, taken_at=now,
                        load=engine.load(decode_rows), role=role, healthy=healthy,
                        prefix_lookup=prefix_lookup_of(engine))


def prefix_lookup_of(engine) -> Callable[[Request], int] | None:
    """The cached-prefix lookup for an engine: tokens of ``req``'s leading blocks its
    BlockManager holds now (``match_prefix``, which changes nothing); None if it caches no
    prefixes. A closure over the live cache: no copy of it per view."""
    kv = getattr(engine, "kv", None)
    if kv is None or not getattr(kv, "caching", False):
        return None
    bs = kv.block_size
    match = kv.match_prefix

    def lookup(req: Request) -> int:
        return match(req)[0] * bs

    return lookup

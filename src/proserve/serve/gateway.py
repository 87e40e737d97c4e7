"""``proserve gateway``: an OpenAI-compatible, streaming-first proxy with tenants, priorities and
GoRouting in front of real engines (vLLM, SGLang, or ``proserve emulate``), for one model or
several.

A request's life here:

1. **Tenant**: the ``Authorization: Bearer`` key maps to a tenant (401 if missing or unknown). Its
   class (weight, SLOs) is the tenant's, or a *lower* one it asks for with the header
   ``x-priority-class`` or the body field ``priority_class`` (403 for a higher one).
2. **Model**: the body's ``model`` (a served model's name or one of its aliases) picks the
   model's pool: its own backends, router, classes (same names, its own weights and SLOs),
   health checks, admission queue and, with ``router: polyserve``, its own fleet. An unknown
   model gets 404 ``model_not_found``; a model outside the tenant's ``models`` allow-list 403
   ``model_not_allowed``. ``GET /v1/models`` lists what the caller's key may use.
3. **Validation**: body schema, ``max_tokens``, the model's context length, body size:
   OpenAI-style JSON errors with 400/413.
4. **Limits**: per tenant (across all its models): requests/s, tokens/s, requests in flight (429
   + Retry-After). Kept in this process, or with ``limits: {backend: redis}`` in a Redis shared
   by every worker and host (:mod:`proserve.serve.tenant_limits`; Redis unreachable: its
   ``on_error``, open by default, else 503).
5. **Admission**: the model's router (default ``go``) picks a backend from views built from this
   process's own record of in-flight work per backend, reconciled with each backend's scraped
   ``/metrics`` (which also shows other workers' and hosts' work). If even the chosen backend is
   predicted to miss the request's TTFT SLO, the request waits (a per-class queue, woken
   whenever a request completes) up to its class's ``queue_timeout_s``; sheddable classes get
   429 + Retry-After at once instead. A router that holds requests itself (``router:
   polyserve``: one SLO tier per class, an idle pool it scales tiers up from) replaces this
   step: the request is offered to the router and waits in its pending queue until a placement
   for it comes back, or its class's ``queue_timeout_s`` passes (429); the tier gauges
   ``proserve_tier_*`` / ``proserve_pool_instances`` are what an autoscaler reads
   (docs/GATEWAY_POLYSERVE.md).
6. **Forwarding**: every scheduling field the client sent (``priority``, ``priority_class``,
   ``vllm_xargs`` class/weight/SLOs) is dropped and the gateway's own written instead, spelled
   the way the backend wants it (vLLM and proserve: lower = more urgent plus class/weight/SLOs in
   ``vllm_xargs`` for our plug-in and emulator; SGLang: higher = more urgent). A backend failure
   before the first byte is retried on another backend of the model; a failure mid-stream ends
   the stream with an SSE error event. Either way the client gets a response or an explicit
   error, never silence.
7. **Metrics**: Prometheus ``/metrics`` labelled by model, tenant and class: requests by status,
   TTFT and TPOT histograms, SLO attainment and TDG gain counters, queue depth, sheds, retries,
   stream errors, backend health. Every response carries ``x-proserve-worker`` (the worker's
   index).

Health checks eject a backend after ``failures_to_eject`` failed probes (or failed forwards) and
re-admit it on the next good probe. Shutdown stops accepting and drains in-flight streams for up to
``shutdown_grace_s``. SIGHUP re-reads the config file's backend lists, per model:
new backends join, removed ones take no new requests while their in-flight streams finish
(:meth:`ModelPool.apply_backends`).

``workers: N`` (``--workers N``) runs N copies of all this in N processes on one port
(SO_REUSEPORT; :func:`run_gateway`). Everything above is per worker except tenant limits in
Redis: each worker routes from its own in-flight record plus the backends' scraped metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

from ..cluster.admission import Admission, ClassAdmission, Decision
from ..cluster.base import NoHealthyInstance, Placement, make_router
from ..cluster.polyserve import PolyServe
from ..cluster.prefix_index import PrefixIndex
from ..cluster.view import InstanceView, predicted_ttft
from ..core.classes import PriorityClass
from ..core.request import Request, Status
from ..core.sched_fields import gateway_xargs, scrub_client_fields
from ..engine.base import EngineLoad, PrefillItem
from ..latency.model import LatencyModel
from ..latency.profiles import load_profile
from .gateway_config import (
    BackendConfig,
    ClassSettings,
    GatewayConfig,
    ModelSpec,
    TenantConfig,
    load_gateway_config,
)
from .openai import (
    ChatRequest,
    CompletionRequest,
    chunk_tokens,
    error,
    models_list_response,
    openai_app,
    parse_body,
    prompt_prefix,
    prompt_tokens,
)
from .tenant_limits import Lease, Refusal, TokenBucket, make_limiter

__all__ = ["Backend", "Gateway", "ModelPool", "TokenBucket", "run_gateway", "serve_gateway"]

log = logging.getLogger("proserve.gateway")

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
WORKER_HEADER = "x-proserve-worker"


@dataclass
class Backend:
    index: int
    url: str
    kind: str
    model: LatencyModel
    healthy: bool = True
    failures: int = 0
    inflight: dict[int, Request] = field(default_factory=dict)
    scraped_kv_usage: float = 0.0
    scraped_waiting: int = 0
    scraped_running: int = 0
    removed: bool = False  # dropped from the config (SIGHUP): takes no new requests
    # Requests the router placed here that ``inflight`` already reflects (or that have left):
    # the view's ``load.received``, so a router placing several requests in one call sees its
    # own earlier placements. -1: not tracked (routers asked once per request).
    received: int = -1
    # prompt blocks this worker sent here, assumed cached (llm-d's approximate prefix index):
    # what routers read as the backend's cached prefix (cluster/prefix_index.py)
    prefix: PrefixIndex | None = None

    @property
    def routable(self) -> bool:
        return self.healthy and not self.removed

    def view(self, now: float) -> InstanceView:
        """The gateway's record of this backend, reconciled with its scraped metrics.

        The record holds only this process's requests; other workers, other gateway hosts and
        clients that bypass the gateway show up only in the scrape. So the view is never
        emptier than the backend's own metrics say: KV usage is the larger of the two, queued
        requests beyond our own prefills are padded as mean-sized prompts, and running requests
        beyond our own are padded as mean-sized decodes."""
        m = self.model
        prefill = []
        decodes = ctx = used = 0
        dctx: list[int] = []
        dgen: list[int] = []
        for r in self.inflight.values():
            if r.generated == 0:
                prefill.append(PrefillItem(r.prompt_len, 0, r.weight, r.arrival, r.ttft_slo,
                                           r.tpot_slo, 0))
            else:
                decodes += 1
                ctx += r.prompt_len + r.generated
                dctx.append(r.prompt_len + r.generated)
                dgen.append(r.generated)
            used += m.blocks_for(r.prompt_len + max(r.generated, 1))
        used = max(used, int(self.scraped_kv_usage * m.kv_blocks))
        own = len(self.inflight)
        extra = self.scraped_waiting - len(prefill)
        if extra > 0:  # unknown queued work: assume mean-sized prompts of our own traffic
            mean = (sum(p.pending for p in prefill) // len(prefill)) if prefill else 512
            prefill += [PrefillItem(mean, 0, 1.0, now, math.inf, math.inf, 0)] * extra
        # unknown running work (another worker's, another host's): mean-sized decodes
        run_extra = self.scraped_running + self.scraped_waiting - own - max(extra, 0)
        if run_extra > 0:
            mctx = (ctx // decodes) if decodes else 576
            mgen = (sum(dgen) // decodes) if decodes else 64
            decodes += run_extra
            ctx += mctx * run_extra
            dctx += [mctx] * run_extra
            dgen += [mgen] * run_extra
        load = EngineLoad(prefill, decodes, ctx, max(m.kv_blocks - used, 0), m.kv_blocks,
                          received=self.received, decode_ctx=dctx, decode_gen=dgen)
        return InstanceView(self.index, self.kind, m, now, load, healthy=self.routable,
                            prefix_lookup=self.prefix.lookup if self.prefix is not None else None)

    def eject(self) -> None:
        """Stop routing here until a probe succeeds; its cache is presumed lost."""
        self.healthy = False
        if self.prefix is not None:
            self.prefix.clear()


class ModelPool:
    """One served model: its backends, router (PolyServe: its fleet and pending queue), classes,
    admission queue and the gauges that go with them. Requests reach it from :class:`Gateway`,
    which owns tenants, limits, metrics and the HTTP side."""

    def __init__(self, gw: Gateway, spec: ModelSpec) -> None:
        self.gw = gw
        self.spec = spec
        self.name = spec.name
        self.classes: list[PriorityClass] = spec.priority_classes()
        self.by_name = {c.name: c for c in self.classes}
        self.backends: list[Backend] = []
        for b in spec.backends:
            self.backends.append(self._new_backend(len(self.backends), b))
        self.router = make_router(spec.router, **spec.router_kwargs())
        # A router that holds requests (PolyServe): its pending queue, tiers and idle pool
        # replace choose() + admission; see _admit_fleet.
        self.fleet: PolyServe | None = None
        if getattr(self.router, "holds_requests", False):
            self.fleet = self.router  # type: ignore[assignment]
            self.fleet.attach(["colocated"] * len(self.backends), gw.now())
            for b in self.backends:
                b.received = 0
        self._waiters: dict[int, asyncio.Future[int]] = {}  # request id -> its placement
        self._fleet_wake = asyncio.Event()  # next_wakeup() may have moved earlier
        self._capacity = asyncio.Event()  # set whenever a request leaves a backend
        self._queued: dict[str, int] = {c.name: 0 for c in self.classes}
        self.admission = Admission(
            {c.name: self._class_admission(c.name) for c in self.classes},
            {c.name: c.rank for c in self.classes})

    def _class_admission(self, cls: str) -> ClassAdmission:
        s = self.spec.settings(cls)
        return ClassAdmission(s.queue_timeout_s, s.sheddable, s.yield_share, s.yield_target)

    @staticmethod
    def _new_backend(index: int, b: BackendConfig) -> Backend:
        model = load_profile(b.profile)
        if b.kv_blocks:
            model = model.with_kv_blocks(b.kv_blocks)
        return Backend(index, b.url.rstrip("/"), b.kind, model,
                       prefix=PrefixIndex(model.kv_blocks, model.block_size))

    def now(self) -> float:
        return self.gw.now()

    def settings(self, cls: str) -> ClassSettings:
        return self.spec.settings(cls)

    # ------------------------------------------------------------------ metrics
    def init_gauges(self) -> None:
        gw = self.gw
        for c in self.classes:
            gw.m_queue.labels(self.name, c.name).set_function(
                lambda n=c.name: self._queued[n])
            gw.m_yield.labels(self.name, c.name).set_function(
                lambda n=c.name: self.admission.share(n))
        for b in self.backends:
            self._backend_gauges(b)
        if self.fleet is not None:
            self._fleet_gauges()

    def _backend_gauges(self, b: Backend) -> None:
        self.gw.m_healthy.labels(self.name, b.url).set_function(lambda b=b: float(b.routable))
        self.gw.m_inflight.labels(self.name, b.url).set_function(
            lambda b=b: float(len(b.inflight)))

    def _fleet_gauges(self) -> None:
        """Set the tier gauges from the router's fleet state (after every offer/retry/tick)."""
        ps = self.fleet
        if ps is None or ps.fleet is None:
            return
        gw = self.gw
        f = ps.fleet
        counts = f.counts()
        pool = sum(1 for k in f.pool if self.backends[k].routable)
        for t, tier in enumerate(ps.tiers):
            pending = len(ps.pending[t])
            gw.m_tier.labels(self.name, tier.name).set(counts[t])
            gw.m_tier_desired.labels(self.name, tier.name).set(
                counts[t] + (1 if pending and not pool else 0))
            gw.m_tier_pending.labels(self.name, tier.name).set(pending)
        gw.m_pool.labels(self.name).set(pool)

    # ------------------------------------------------------------------ admission + routing
    async def _admit(self, r: Request, exclude: set[int]) -> Backend | web.Response:
        """Pick a backend for ``r``, waiting (or shedding) while none can meet its TTFT SLO.

        The decision is :func:`proserve.cluster.admission.decide` on the router's choice, the
        same code ``proserve simulate --admission`` runs; a dispatch is recorded with the router
        only when the request is admitted.
        """
        settings = self.settings(r.cls)
        clock = self.gw._clock
        start = clock()
        queued = False
        try:
            while True:
                up = [b for b in self.backends if b.routable and b.index not in exclude]
                if not up:
                    return _no_backend(self.name)
                now = self.now()
                try:
                    view = self.router.choose(r, [b.view(now) for b in up], now)
                except NoHealthyInstance:
                    return _no_backend(self.name)
                b = self.backends[view.index]
                if exclude:  # a retry after a backend failed: admitted already, no re-judging
                    self.router.record(view.index, r, view)
                    return b
                predicted = predicted_ttft(view, r.prompt_len, r.weight,
                                           cached=view.cached_tokens(r))
                waited = clock() - start
                d = self.admission.decide(r, predicted, now, waited)
                if d is Decision.ADMIT:
                    self.router.record(view.index, r, view)
                    return b
                if d is Decision.SHED:
                    self.gw.m_shed.labels(self.name, r.tenant, r.cls).inc()
                    retry = max(1, math.ceil(predicted))
                    return error(429, f"no capacity to serve class {r.cls!r} within its SLO; "
                                      f"retry in {retry} s", code="capacity_shed",
                                 headers={"Retry-After": str(retry)})
                if d is Decision.TIMEOUT:  # waited its timeout, predicted past 10x its SLO
                    self.gw.m_shed.labels(self.name, r.tenant, r.cls).inc()
                    return error(429, f"class {r.cls!r} waited {settings.queue_timeout_s:g} s "
                                      f"without capacity", code="queue_timeout",
                                 headers={"Retry-After": str(max(1, math.ceil(predicted)))})
                if not queued:
                    queued = True
                    self._queued[r.cls] += 1
                self._capacity.clear()
                left = settings.queue_timeout_s - waited
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._capacity.wait(), timeout=min(left, 0.05))
        finally:
            if queued:
                self._queued[r.cls] -= 1

    # ------------------------------------------------------------------ fleet routers (PolyServe)
    def _fleet_views(self, exclude: set[int] | frozenset[int] = frozenset()
                     ) -> list[InstanceView]:
        now = self.now()
        return [b.view(now) for b in self.backends if b.routable and b.index not in exclude]

    async def _admit_fleet(self, r: Request, exclude: set[int]) -> Backend | web.Response:
        """Place ``r`` with a router that holds requests (PolyServe): ``offer`` it, then wait
        until a placement for it comes back from this or any later offer/retry/tick (other
        requests finishing, the scale-down timer, a backend joining). Past its class's
        ``queue_timeout_s`` (sheddable classes: at once) it leaves the router's pending queue and
        gets 429 + Retry-After; a client that goes away leaves the queue too.

        ``exclude``: a retry after the backend it was placed on failed before the first byte:
        placed at once elsewhere with the router's one-shot ``route`` (the tier ladder, else the
        least loaded backend), not queued again."""
        ps = self.fleet
        assert ps is not None
        if exclude:
            views = self._fleet_views(exclude)
            if not views:
                return _no_backend(self.name)
            try:
                k = ps.route(r, views, self.now())
            except NoHealthyInstance:
                return _no_backend(self.name)
            b = self.backends[k]
            b.received += 1
            b.inflight[r.id] = r
            self._fleet_gauges()
            return b
        views = self._fleet_views()
        if not views:
            return _no_backend(self.name)
        settings = self.settings(r.cls)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[r.id] = fut
        clock = self.gw._clock
        start = clock()
        queued = False
        try:
            self._apply(ps.offer(r, views, self.now()))
            while not fut.done():
                waited = clock() - start
                if settings.sheddable or waited >= settings.queue_timeout_s:
                    if ps.cancel(r):
                        self._fleet_gauges()
                        self.gw.m_shed.labels(self.name, r.tenant, r.cls).inc()
                        retry = max(1, math.ceil(settings.queue_timeout_s))
                        if settings.sheddable:
                            return error(429, f"no capacity to serve class {r.cls!r} now; "
                                              f"retry in {retry} s", code="capacity_shed",
                                         headers={"Retry-After": str(retry)})
                        return error(429, f"class {r.cls!r} waited {settings.queue_timeout_s:g}"
                                          f" s without capacity", code="queue_timeout",
                                     headers={"Retry-After": str(retry)})
                    if not fut.done():  # neither pending nor placed: cannot happen
                        return error(500, "request lost by the router", type_="server_error",
                                     code="internal_error")
                    break
                if not queued:
                    queued = True
                    self._queued[r.cls] += 1
                await asyncio.wait({fut}, timeout=min(settings.queue_timeout_s - waited, 0.05))
            return self.backends[fut.result()]
        except asyncio.CancelledError:  # the client went away: out of the queue, or give back
            if ps.cancel(r):
                self._fleet_gauges()
            elif fut.done() and not fut.cancelled():
                self.backends[fut.result()].inflight.pop(r.id, None)
                asyncio.get_running_loop().call_soon(self._fleet_retry)
            raise
        finally:
            self._waiters.pop(r.id, None)
            if queued:
                self._queued[r.cls] -= 1

    def _apply(self, placements: list[Placement]) -> None:
        """Placements from offer/retry/tick, possibly of other pending requests: each goes in
        flight on its backend at once (so the next decision sees it) and wakes its request."""
        freed = False
        for r, k, _ in placements:
            b = self.backends[k]
            b.received += 1  # the view now includes it (or, below, its departure)
            fut = self._waiters.get(r.id)
            if fut is None or fut.done():  # its client is gone (not expected: it left the queue)
                freed = True
                continue
            b.inflight[r.id] = r
            fut.set_result(k)
        self._fleet_gauges()
        self._fleet_wake.set()
        if freed:
            asyncio.get_running_loop().call_soon(self._fleet_retry)

    def _fleet_retry(self) -> None:
        """Capacity may have freed (a request left, a backend joined or came back)."""
        if self.fleet is not None and self.fleet.has_pending():
            self._apply(self.fleet.retry(self._fleet_views(), self.now()))

    def _left(self, b: Backend, r: Request) -> None:
        """``r`` is no longer in flight on ``b``."""
        b.inflight.pop(r.id, None)
        self._capacity.set()
        self._fleet_retry()

    def _backend_failed(self, b: Backend) -> None:
        b.failures += 1
        if b.failures >= self.gw.cfg.health.failures_to_eject:
            b.eject()
        self._capacity.set()

    def _backend_back(self) -> None:
        self._capacity.set()
        self._fleet_retry()

    async def _fleet_loop(self) -> None:
        """The fleet router's timers: ``tick`` at ``next_wakeup()`` (instances that finished
        starting, the periodic scale-down check), and the tier gauges kept fresh."""
        ps = self.fleet
        assert ps is not None
        while True:
            try:
                now = self.now()
                if now >= ps.next_wakeup():
                    self._apply(ps.tick(self._fleet_views(), now))
                self._fleet_gauges()
                delay = min(max(ps.next_wakeup() - self.now(), 0.0), 0.25)
            except Exception:  # a router bug must not stop the timers for good
                log.exception("fleet router tick failed (model %s)", self.name)
                delay = 0.25
            self._fleet_wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._fleet_wake.wait(), timeout=delay)

    # ------------------------------------------------------------------ reconfiguration
    def apply_backends(self, wanted: list[BackendConfig]) -> dict[str, list[str]]:
        """Make the routable backends the ``wanted`` list (matched by URL), without dropping
        in-flight work: a new URL joins with a new index (PolyServe: into the idle pool); a URL
        no longer listed is marked removed (routers skip it; PolyServe takes it out of its tier
        or pool) while its in-flight streams finish; a kept URL takes the new kind and profile.
        Indices are never reused, so a URL that comes back joins as a new backend."""
        now = self.now()
        live = {b.url: b for b in self.backends if not b.removed}
        want: dict[str, BackendConfig] = {}
        for bc in wanted:
            want.setdefault(bc.url.rstrip("/"), bc)
        added: list[str] = []
        removed: list[str] = []
        updated: list[str] = []
        for u, b in live.items():
            if u not in want:
                b.removed = True
                if self.fleet is not None:
                    self._fleet_remove(b.index, now)
                removed.append(u)
        for u, bc in want.items():
            nb = self._new_backend(len(self.backends), bc)
            if u in live:
                b = live[u]
                if (b.kind, b.model) != (nb.kind, nb.model):
                    b.kind, b.model = nb.kind, nb.model
                    updated.append(u)
                continue
            self.backends.append(nb)
            self._backend_gauges(nb)
            if self.fleet is not None:
                nb.received = 0
                self._fleet_add(nb.index, now)
            added.append(u)
        m = f" (model {self.name})" if len(self.gw.pools) > 1 else ""
        for u in added:
            k = next(b.index for b in self.backends if b.url == u and not b.removed)
            log.info("reload: backend %s added (index %d%s)%s", u, k,
                     ", into the idle pool" if self.fleet is not None else "", m)
        for u in removed:
            b = live[u]
            log.info("reload: backend %s removed (index %d): no new requests; %d in flight "
                     "finish there%s", u, b.index, len(b.inflight), m)
        for u in updated:
            log.info("reload: backend %s updated (kind, profile)%s", u, m)
        if not (added or removed or updated):
            log.info("reload: backends unchanged%s", m)
        if added:
            self._capacity.set()
            self._fleet_retry()
        self._fleet_gauges()
        return {"added": added, "removed": removed, "updated": updated}

    def _fleet_add(self, k: int, now: float) -> None:
        """A new backend joins PolyServe's idle pool."""
        assert self.fleet is not None and self.fleet.fleet is not None
        self.fleet.fleet.add_instance(k, now)

    def _fleet_remove(self, k: int, now: float) -> None:
        """A removed backend leaves its tier (its server-seconds stop) and the pool for good."""
        assert self.fleet is not None and self.fleet.fleet is not None
        self.fleet.fleet.remove_instance(k, now)


# lines of a server-sent event stream other than ``data:`` (a comment starts with ':')
_SSE_FIELDS = (b"event:", b"id:", b"retry:", b":")


def _all_failed(last_err: str, timed_out: bool) -> web.Response:
    """Every attempt failed before the first byte: 504 if the last one timed out, else 502."""
    if timed_out:
        return error(504, f"every backend failed; the last timed out: {last_err}",
                     type_="server_error", code="backend_timeout")
    return error(502, f"every backend failed: {last_err}", type_="server_error",
                 code="backend_failed")


def _no_backend(model: str) -> web.Response:
    return error(503, f"no healthy backend of model {model!r} can take the request",
                 type_="service_unavailable", code="no_backend")


class Gateway:
    def __init__(self, cfg: GatewayConfig, clock: Callable[[], float] = time.monotonic,
                 worker: int = 0) -> None:
        # ``clock``: every time the gateway reads (rate limits, queue timeouts, request times);
        # tests inject a fake one to drive admission and limits deterministically.
        self.cfg = cfg
        self.worker = worker
        self._clock = clock
        self._t0 = clock()
        self.pools: dict[str, ModelPool] = {}
        self.model_ids: dict[str, ModelPool] = {}  # names and aliases
        for spec in cfg.model_specs():
            p = ModelPool(self, spec)
            self.pools[spec.name] = p
            for n in (spec.name, *spec.aliases):
                self.model_ids[n] = p
        self.tenants: dict[str, TenantConfig] = {k: t for t in cfg.tenants for k in t.api_keys}
        self.allowed: dict[str, set[str] | None] = {t.name: cfg.tenant_models(t)
                                                    for t in cfg.tenants}
        self.limiter = make_limiter(cfg.limits, cfg.tenants, clock,
                                    on_store_error=self._store_error)
        self._ids = 0
        self._tasks: list[asyncio.Task] = []
        self.session: aiohttp.ClientSession | None = None
        # ids of 200 streams that did not end normally: "stream_error" (an SSE error event) or
        # "499" (the client went away mid-stream); what the metrics count instead of 200
        self._stream_outcome: dict[int, str] = {}
        self._init_metrics()

    # single-model views (the first model's), as before there were several
    @property
    def pool(self) -> ModelPool:
        """The first (with a single-model file, the only) model's pool."""
        return next(iter(self.pools.values()))

    @property
    def backends(self) -> list[Backend]:
        return self.pool.backends

    @property
    def router(self):
        return self.pool.router

    @property
    def fleet(self) -> PolyServe | None:
        return self.pool.fleet

    @property
    def classes(self) -> list[PriorityClass]:
        return self.pool.classes

    @property
    def by_name(self) -> dict[str, PriorityClass]:
        return self.pool.by_name

    @property
    def _queued(self) -> dict[str, int]:
        return self.pool._queued

    # ------------------------------------------------------------------ metrics
    def _init_metrics(self) -> None:
        reg = self.registry = CollectorRegistry()
        tc = ["model", "tenant", "class"]
        self.m_requests = Counter("proserve_requests", "Requests by outcome", tc + ["code"],
                                  registry=reg)
        self.m_ttft = Histogram("proserve_ttft_seconds", "Time to first token at the gateway",
                                tc, buckets=TTFT_BUCKETS, registry=reg)
        self.m_tpot = Histogram("proserve_tpot_seconds", "Mean time per output token", tc,
                                buckets=TPOT_BUCKETS, registry=reg)
        self.m_slo = Counter("proserve_slo_attained", "Requests that met TTFT and TPOT SLOs", tc,
                             registry=reg)
        self.m_gain = Counter("proserve_tdg_gain", "Token-level deadline-aware gain earned", tc,
                              registry=reg)
        self.m_gain_max = Counter("proserve_tdg_gain_max", "Gain if every token were on time",
                                  tc, registry=reg)
        self.m_shed = Counter("proserve_shed", "Requests shed (429) for capacity", tc,
                              registry=reg)
        mb = ["model", "backend"]
        self.m_retries = Counter("proserve_retries", "Forwards retried on another backend",
                                 mb, registry=reg)
        self.m_stream_err = Counter("proserve_stream_errors", "Streams ended by a backend error",
                                    mb, registry=reg)
        self.m_queue = Gauge("proserve_queue_depth", "Requests waiting for capacity",
                             ["model", "class"], registry=reg)
        self.m_yield = Gauge("proserve_admission_yield_share",
                             "Share of the engine a class yields to heavier ones in admission "
                             "(adaptive with yield_target)", ["model", "class"], registry=reg)
        self.m_healthy = Gauge("proserve_backend_healthy", "1 if the backend takes traffic",
                               mb, registry=reg)
        self.m_inflight = Gauge("proserve_backend_inflight",
                                "Requests in flight per backend (this worker's)", mb,
                                registry=reg)
        self.m_store_err = Counter("proserve_limit_store_errors",
                                   "Failed calls to the shared limit store (Redis), by operation",
                                   ["op"], registry=reg)
        self.m_store_unavail = Counter(
            "proserve_limit_store_unavailable", "Requests judged while the shared limit store "
            "was unreachable: by this process's limits (open) or refused with 503 (closed)",
            ["model", "on_error"], registry=reg)
        Gauge("proserve_limit_store_up", "1 if the shared limit store answers (always 1 for "
              "limits kept in this process)", registry=reg).set_function(
            lambda: float(getattr(self.limiter, "up", True)))
        if any(p.fleet is not None for p in self.pools.values()):  # what an autoscaler reads
            self.m_tier = Gauge("proserve_tier_instances", "Backends serving the tier",
                                ["model", "tier"], registry=reg)
            self.m_tier_desired = Gauge(
                "proserve_tier_desired_instances", "Backends the tier wants: its instances, "
                "plus 1 while it has pending requests and the idle pool is empty",
                ["model", "tier"], registry=reg)
            self.m_tier_pending = Gauge("proserve_tier_pending",
                                        "Requests pending in the router for the tier",
                                        ["model", "tier"], registry=reg)
            self.m_pool = Gauge("proserve_pool_instances",
                                "Healthy backends in the idle pool (no tier)", ["model"],
                                registry=reg)
        for p in self.pools.values():
            p.init_gauges()

    def _store_error(self, op: str) -> None:
        self.m_store_err.labels(op).inc()

    def now(self) -> float:
        return self._clock() - self._t0

    # ------------------------------------------------------------------ request path
    def _tenant(self, request: web.Request) -> TenantConfig | web.Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return error(401, "missing API key: send 'Authorization: Bearer <key>'",
                         code="invalid_api_key")
        t = self.tenants.get(auth[7:].strip())
        if t is None:
            return error(401, "invalid API key", code="invalid_api_key")
        return t

    def may_use(self, tenant: TenantConfig, pool: ModelPool) -> bool:
        allowed = self.allowed[tenant.name]
        return allowed is None or pool.name in allowed

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, CompletionRequest, "/v1/completions")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, ChatRequest, "/v1/chat/completions")

    async def _handle(self, request: web.Request, schema, path: str) -> web.StreamResponse:
        tenant = self._tenant(request)
        if isinstance(tenant, web.Response):
            return tenant
        body = await parse_body(request, schema)
        if isinstance(body, web.Response):
            return self._count("", tenant.name, tenant.class_, body)
        pool = self.model_ids.get(body.model)
        if pool is None:
            mine = [p.name for p in self.pools.values() if self.may_use(tenant, p)]
            return self._count("", tenant.name, tenant.class_, error(
                404, f"The model `{body.model}` does not exist; this gateway serves "
                     f"{', '.join(f'`{n}`' for n in mine) or 'no model for this key'}",
                param="model", code="model_not_found"))
        if not self.may_use(tenant, pool):
            return self._count(pool.name, tenant.name, tenant.class_, error(
                403, f"tenant {tenant.name!r} may not use model `{pool.name}`",
                param="model", code="model_not_allowed"))
        cls = pool.by_name[tenant.class_]
        asked = request.headers.get("x-priority-class") or (body.model_extra or {}).get(
            "priority_class")
        if asked is not None:
            if not isinstance(asked, str) or asked not in pool.by_name:
                return self._count(pool.name, tenant.name, cls.name, error(
                    400, f"unknown priority class {asked!r}; known: "
                         f"{', '.join(pool.by_name)}", param="priority_class"))
            if pool.by_name[asked].rank < cls.rank:
                return self._count(pool.name, tenant.name, cls.name, error(
                    403, f"tenant {tenant.name!r} may not use class {asked!r} (above its own "
                         f"class {cls.name!r})", code="priority_not_allowed"))
            cls = pool.by_name[asked]
        p = prompt_tokens(body)
        n_out = body.output_tokens or 16
        limit = pool.spec.max_model_len
        if p + n_out > limit:
            return self._count(pool.name, tenant.name, cls.name, error(
                400, f"This model's maximum context length is {limit} tokens. "
                     f"However, you requested {p + n_out} tokens ({p} in the prompt, {n_out} in "
                     f"the completion).", param="max_tokens"))
        lease = await self.limiter.admit(tenant, p + n_out)
        if isinstance(lease, Refusal):
            if lease.code == "limit_store_unavailable":
                self.m_store_unavail.labels(pool.name, "closed").inc()
            return self._count(pool.name, tenant.name, cls.name, error(
                lease.status, lease.message, code=lease.code,
                type_="service_unavailable" if lease.status == 503 else None,
                headers={"Retry-After": str(lease.retry_after)}))
        if lease.degraded:
            self.m_store_unavail.labels(pool.name, "open").inc()
        try:
            return await self._serve(request, pool, tenant, cls, body, p, n_out, path)
        finally:
            await self._release(lease)

    async def _release(self, lease: Lease) -> None:
        if lease.slot is None:
            return
        # the client may have left (cancelled): the shielded release still runs to its end
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self.limiter.release(lease))

    async def _serve(self, request: web.Request, pool: ModelPool, tenant: TenantConfig,
                     cls: PriorityClass, body, p: int, n_out: int, path: str
                     ) -> web.StreamResponse:
        m0 = pool.backends[0].model
        self._ids += 1
        slos = cls.slos(m0, p, n_out)
        req = Request(id=self._ids, arrival=self.now(), prompt_len=p, output_len=n_out,
                      ttft_slo=slos[0], tpot_slo=slos[1],
                      weight=cls.weight, priority=cls.rank, cls=cls.name, tenant=tenant.name,
                      prefix=prompt_prefix(body, m0.block_size))
        raw = body.model_dump(exclude_none=True, by_alias=True)
        try:
            resp = await self._forward(request, pool, req, raw, path, body.stream)
        except asyncio.CancelledError:  # the client went away: count it, as nginx does, as 499
            self.m_requests.labels(pool.name, req.tenant, req.cls, "499").inc()
            raise
        self._finish_metrics(pool, req, self._stream_outcome.pop(req.id, resp.status))
        return resp

    def _count(self, model: str, tenant: str, cls: str, resp: web.Response) -> web.Response:
        self.m_requests.labels(model, tenant, cls, str(resp.status)).inc()
        return resp

    def _finish_metrics(self, pool: ModelPool, r: Request, status: int | str) -> None:
        self.m_requests.labels(pool.name, r.tenant, r.cls, str(status)).inc()
        if status != 200:
            return
        pool.admission.finished(r)
        lab = (pool.name, r.tenant, r.cls)
        if r.generated:
            self.m_ttft.labels(*lab).observe(r.first_token_time - r.arrival)
        if r.generated > 1:
            self.m_tpot.labels(*lab).observe(r.tpot())
        r.status = Status.FINISHED if r.generated >= r.output_len else Status.UNFINISHED
        if r.slo_met():
            self.m_slo.labels(*lab).inc()
        self.m_gain.labels(*lab).inc(r.gain())
        self.m_gain_max.labels(*lab).inc(r.max_gain())

    def _upstream_body(self, pool: ModelPool, b: Backend, r: Request,
                       raw: dict[str, Any]) -> dict[str, Any]:
        """The body sent to backend ``b``: the client's, with every scheduling field it sent
        dropped (``priority``, ``priority_class``, our ``vllm_xargs`` keys in any spelling) and
        the gateway's own written instead, so what reaches the engine is the tenant's class.
        An alias the client used becomes the model's name (what its backends serve)."""
        body = scrub_client_fields(raw)
        body["model"] = pool.name
        if b.kind == "sglang":
            body["priority"] = len(pool.classes) - 1 - r.priority  # higher = more urgent
            return body
        # vLLM (with or without our plug-in) and our emulator: lower = more urgent, plus the
        # fields our plug-in and emulator read (plain vLLM ignores unknown extra_args)
        body["priority"] = r.priority
        body["vllm_xargs"] = {**(body.get("vllm_xargs") or {}),
                              **gateway_xargs(r.cls, r.weight, r.ttft_slo, r.tpot_slo)}
        return body

    # ------------------------------------------------------------------ forwarding
    async def _forward(self, request: web.Request, pool: ModelPool, r: Request,
                       raw: dict[str, Any], path: str, stream: bool) -> web.StreamResponse:
        assert self.session is not None
        tried: set[int] = set()
        last_err = "no backend tried"
        timed_out = False
        admit = pool._admit if pool.fleet is None else pool._admit_fleet
        for _attempt in range(self.cfg.retries + 1):
            b = await admit(r, tried)
            if isinstance(b, web.Response):
                if tried and b.status == 503:  # retries exhausted the healthy backends
                    return _all_failed(last_err, timed_out)
                return b
            tried.add(b.index)
            b.inflight[r.id] = r
            if b.prefix is not None:
                b.prefix.record(r)
            to = self.cfg.timeouts
            try:
                # streaming backends send headers at once, so a read timeout bounds a backend
                # that accepted and never answered (first_byte_s, or between_tokens_s if
                # larger: the same socket timeout then guards the body); a non-streaming answer
                # comes whole, at the end, under the total only
                up = await self.session.post(
                    b.url + path, json=self._upstream_body(pool, b, r, raw),
                    timeout=aiohttp.ClientTimeout(
                        total=self.cfg.request_timeout_s, sock_connect=to.connect_s,
                        sock_read=max(to.first_byte_s, to.between_tokens_s) if stream else None))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                pool._left(b, r)
                pool._backend_failed(b)
                self.m_retries.labels(pool.name, b.url).inc()
                timed_out = isinstance(e, asyncio.TimeoutError | aiohttp.ServerTimeoutError)
                wait = max(to.first_byte_s, to.between_tokens_s) if stream else (
                    self.cfg.request_timeout_s)
                last_err = (f"{b.url}: no response within {wait:g} s" if timed_out
                            else f"{b.url}: {type(e).__name__}: {e}")
                continue
            except asyncio.CancelledError:  # the client went away before the backend answered
                pool._left(b, r)
                raise
            if up.status >= 500:
                text = await up.text()
                up.release()
                pool._left(b, r)
                pool._backend_failed(b)
                self.m_retries.labels(pool.name, b.url).inc()
                last_err = f"{b.url}: HTTP {up.status}: {text[:200]}"
                timed_out = False
                continue
            try:
                if up.status != 200:  # the backend refused the request itself: pass it on
                    data = await up.read()
                    return web.Response(status=up.status, body=data,
                                        content_type=up.content_type or "application/json")
                b.failures = 0
                if stream:
                    return await self._relay_stream(request, pool, r, b, up)
                return await self._relay_json(pool, r, b, up)
            finally:
                up.release()
                pool._left(b, r)
        return _all_failed(last_err, timed_out)

    async def _relay_json(self, pool: ModelPool, r: Request, b: Backend,
                          up: aiohttp.ClientResponse) -> web.Response:
        try:
            data = await up.json(content_type=None)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            pool._backend_failed(b)
            if isinstance(e, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
                return error(504, f"backend {b.url} did not finish within "
                                  f"{self.cfg.request_timeout_s:g} s", type_="server_error",
                             code="backend_timeout")
            return error(502, f"backend {b.url} failed mid-response: {type(e).__name__}",
                         type_="server_error", code="backend_failed")
        t = self.now()
        n = int((data.get("usage") or {}).get("completion_tokens", r.output_len))
        for _ in range(min(n, r.output_len)):  # no per-token times without streaming
            r.emit_token(t)
        if r.generated:  # its first token is known only now: TTFT = E2E without streaming
            pool.admission.first_token(r)
        return web.json_response(data)

    async def _relay_stream(self, request: web.Request, pool: ModelPool, r: Request,
                            b: Backend, up: aiohttp.ClientResponse) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        done = False
        to = self.cfg.timeouts
        wait = to.first_byte_s  # until the first data line (the backend's queue and prefill)
        open_event = False  # the last line relayed left an event unterminated

        async def to_client(data: bytes) -> bool:
            """Write to the client; False if it went away (that is not the backend's fault:
            the caller's cleanup releases the upstream response, which aborts the request)."""
            try:
                await resp.write(data)
                return True
            except (ConnectionError, RuntimeError):
                return False

        try:
            while True:
                try:
                    line = await asyncio.wait_for(up.content.readline(), wait)
                except asyncio.TimeoutError:
                    which = "between_tokens_s" if r.generated else "first_byte_s"
                    raise asyncio.TimeoutError(f"no data for {wait:g} s (timeouts.{which})"
                                               ) from None
                if not line:
                    break
                if line.startswith(b"data: "):
                    wait = to.between_tokens_s
                if not line.startswith(b"data: "):
                    if line.strip() and not line.startswith(_SSE_FIELDS):
                        raise aiohttp.ClientPayloadError("malformed server-sent event line")
                    if not await to_client(line):
                        self._stream_outcome[r.id] = "499"
                        return resp
                    open_event = bool(line.strip())
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    done = True
                else:
                    try:
                        chunk = json.loads(payload)
                        choices = chunk.get("choices") or ()
                    except (ValueError, AttributeError):
                        raise aiohttp.ClientPayloadError("malformed JSON in a stream event"
                                                         ) from None
                    for ch in choices if isinstance(choices, list) else ():
                        for _ in range(chunk_tokens(ch) if isinstance(ch, dict) else 0):
                            if r.generated < r.output_len:
                                r.emit_token(self.now())
                                if r.generated == 1:
                                    pool.admission.first_token(r)
                if not await to_client(line):
                    self._stream_outcome[r.id] = "499"
                    return resp
                open_event = True
                if done:  # the stream is complete: what the backend does next is not ours
                    await to_client(b"\n")
                    break
            if not done:  # the backend closed the stream without finishing it
                raise aiohttp.ClientPayloadError("stream ended before [DONE]")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            self.m_stream_err.labels(pool.name, b.url).inc()
            self._stream_outcome[r.id] = "stream_error"
            pool._backend_failed(b)
            timeout = isinstance(e, asyncio.TimeoutError)
            err = {"error": {"message": f"backend {b.url} failed mid-stream: "
                                        f"{type(e).__name__}" + (f": {e}" if str(e) else ""),
                             "type": "server_error", "param": None,
                             "code": "backend_timeout" if timeout else "backend_failed"}}
            with contextlib.suppress(ConnectionError, RuntimeError):
                # a blank line first if the backend left an event half-written
                await resp.write((b"\n" if open_event else b"") + b"data: "
                                 + json.dumps(err).encode() + b"\n\n")
                await resp.write(b"data: [DONE]\n\n")
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ background tasks
    def _all_backends(self) -> list[tuple[ModelPool, Backend]]:
        return [(p, b) for p in self.pools.values() for b in p.backends]

    async def _probe(self, pool: ModelPool, b: Backend) -> None:
        h = self.cfg.health
        assert self.session is not None
        try:
            async with self.session.get(b.url + "/health",
                                        timeout=aiohttp.ClientTimeout(total=h.timeout_s)
                                        ) as resp:
                ok = resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            ok = False
        if ok:
            b.failures = 0
            if not b.healthy:
                b.healthy = True
                pool._backend_back()
        else:
            b.failures += 1
            if b.failures >= h.failures_to_eject:
                b.eject()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(p, b) for p, b in self._all_backends()
                                   if not b.removed))
            await asyncio.sleep(self.cfg.health.interval_s)

    async def _scrape(self, pool: ModelPool, b: Backend) -> None:
        assert self.session is not None
        try:
            async with self.session.get(b.url + "/metrics",
                                        timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
                text = await resp.text()
            before = (b.scraped_kv_usage, b.scraped_waiting, b.scraped_running)
            self._apply_scrape(b, text)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
            return  # health checks decide about ejection; keep the last numbers
        if (b.scraped_kv_usage, b.scraped_waiting, b.scraped_running) != before:
            # the backend's own numbers moved (work another worker or a client sent, or ours
            # that finished after the last scrape counted it): PolyServe's pending requests
            # were refused on the old numbers, and nothing else would retry them before the
            # next periodic check (a request could wait a whole check_period_s)
            pool._fleet_retry()

    async def _scrape_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._scrape(p, b) for p, b in self._all_backends()
                                   if b.routable))
            await asyncio.sleep(self.cfg.scrape_interval_s)

    @staticmethod
    def _apply_scrape(b: Backend, text: str) -> None:
        for fam in text_string_to_metric_families(text):
            name = fam.name
            if name in ("vllm:kv_cache_usage_perc", "sglang:token_usage"):
                b.scraped_kv_usage = sum(s.value for s in fam.samples)
            elif name in ("vllm:num_requests_waiting", "sglang:num_queue_reqs"):
                b.scraped_waiting = int(sum(s.value for s in fam.samples))
            elif name in ("vllm:num_requests_running", "sglang:num_running_reqs"):
                b.scraped_running = int(sum(s.value for s in fam.samples))

    # ------------------------------------------------------------------ reconfiguration
    def reload(self, path: str | Path) -> dict[str, list[str]] | None:
        """SIGHUP: re-read ``path`` and apply each model's backend list (nothing else in it
        changes until a restart: a model added or removed is logged and ignored). A bad file
        is logged and changes nothing. Returns the URLs added, removed and updated (all models
        together)."""
        try:
            cfg = load_gateway_config(path)
            specs = cfg.model_specs()
            for spec in specs:
                for b in spec.backends:
                    load_profile(b.profile)
        except (ValueError, OSError) as e:
            log.error("reload: %s; keeping the current backends", e)
            return None
        out: dict[str, list[str]] = {"added": [], "removed": [], "updated": []}
        names = {s.name for s in specs}
        for spec in specs:
            pool = self.pools.get(spec.name)
            if pool is None:
                log.warning("reload: model %s is new: it needs a restart; ignored", spec.name)
                continue
            for k, v in pool.apply_backends(spec.backends).items():
                out[k] += v
        for name in self.pools:
            if name not in names:
                log.warning("reload: model %s is no longer listed: removing a model needs a "
                            "restart; its backends are kept", name)
        return out

    def apply_backends(self, wanted: list[BackendConfig],
                       model: str | None = None) -> dict[str, list[str]]:
        """:meth:`ModelPool.apply_backends` for ``model`` (default: the first model)."""
        return (self.pools[model] if model else self.pool).apply_backends(wanted)

    # ------------------------------------------------------------------ app
    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(self, request: web.Request) -> web.Response:
        """200 while at least one model has a healthy backend. Several models: per model too."""
        per = {name: {"healthy_backends": sum(b.routable for b in p.backends),
                      "backends": sum(not b.removed for b in p.backends)}
               for name, p in self.pools.items()}
        up = sum(v["healthy_backends"] for v in per.values())
        body: dict[str, Any] = {"healthy_backends": up,
                                "backends": sum(v["backends"] for v in per.values())}
        if len(per) > 1:
            body["models"] = per
        return web.json_response(body, status=200 if up else 503)

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: the models the caller's key may use (401 without a key)."""
        tenant = self._tenant(request)
        if isinstance(tenant, web.Response):
            return tenant
        return models_list_response([
            {"id": p.name, "max_model_len": p.spec.max_model_len,
             **({"aliases": list(p.spec.aliases)} if p.spec.aliases else {})}
            for p in self.pools.values() if self.may_use(tenant, p)])

    async def _worker_header(self, _: web.Request, resp: web.StreamResponse) -> None:
        resp.headers[WORKER_HEADER] = str(self.worker)

    def app(self) -> web.Application:
        app = openai_app(self)

        async def on_startup(_: web.Application) -> None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30))
            await self.limiter.start()
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._health_loop()),
                           loop.create_task(self._scrape_loop())]
            for p in self.pools.values():
                if p.fleet is not None:
                    self._tasks.append(loop.create_task(p._fleet_loop()))

        async def on_cleanup(_: web.Application) -> None:
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await self.limiter.close()
            if self.session is not None:
                await self.session.close()

        app.on_response_prepare.append(self._worker_header)
        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)
        return app

    def metrics_app(self) -> web.Application:
        """The worker's own ``/metrics`` and ``/health`` (``metrics_port`` + worker index)."""
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        app.on_response_prepare.append(self._worker_header)
        return app


async def serve_gateway(cfg: GatewayConfig, ready: asyncio.Event | None = None,
                        stop: asyncio.Event | None = None,
                        config_path: str | Path | None = None, worker: int = 0,
                        reuse_port: bool = False, reread: bool = False) -> None:
    """Run the gateway until ``stop`` is set or SIGINT/SIGTERM; then drain in-flight requests.
    With ``config_path``, SIGHUP re-reads that file's backend lists (:meth:`Gateway.reload`).
    ``worker``/``reuse_port``: one of several worker processes sharing the port; ``reread``: a
    restarted worker applies the file's backend lists at once (they may have changed since the
    supervisor started, by SIGHUP)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    gw = Gateway(cfg, worker=worker)
    if reread and config_path is not None:
        gw.reload(config_path)
    hup = False
    if config_path is not None and hasattr(signal, "SIGHUP"):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, gw.reload, config_path)
            hup = True
    runner = web.AppRunner(gw.app(), handler_cancellation=True, access_log=None,
                           shutdown_timeout=cfg.shutdown_grace_s)
    mrunner: web.AppRunner | None = None
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.host, cfg.port, reuse_port=reuse_port or None).start()
        if cfg.metrics_port is not None:
            mrunner = web.AppRunner(gw.metrics_app(), access_log=None)
            await mrunner.setup()
            await web.TCPSite(mrunner, cfg.host, cfg.metrics_port + worker).start()
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        await runner.cleanup()
        if mrunner is not None:
            await mrunner.cleanup()


# ---------------------------------------------------------------------------- worker processes
def _worker_main(cfg: GatewayConfig, config_path: str | None, index: int, restarted: bool,
                 conn) -> None:
    """One worker process of :func:`run_gateway` (spawned by :func:`.supervisor.supervise`)."""
    from .supervisor import run_worker, worker_logging

    worker_logging(f"gateway worker {index}")
    run_worker(conn, lambda ready, stop: serve_gateway(
        cfg, ready=ready, stop=stop, config_path=config_path, worker=index, reuse_port=True,
        reread=restarted))


def limits_notice(cfg: GatewayConfig) -> str | None:
    """What the gateway says at start about where tenant limits live (None: nothing to say)."""
    limited = [t.name for t in cfg.tenants
               if t.max_rps or t.max_tokens_per_s or t.max_concurrency]
    if not limited or cfg.limits.backend == "redis":
        return None
    if cfg.workers > 1:
        return (f"tenant limits are per process: with {cfg.workers} workers each tenant may get "
                f"up to {cfg.workers}x its max_rps/max_tokens_per_s/max_concurrency (and more "
                f"with several gateway hosts); set limits: {{backend: redis, url: ...}} to share "
                f"them")
    return ("tenant limits are kept in this process (limits: {backend: redis, url: ...} shares "
            "them between workers and hosts)")


def run_gateway(cfg: GatewayConfig, config_path: str | Path | None = None) -> int:
    """Run the gateway: in this process (``workers: 1``), or as ``workers`` processes sharing
    the port with SO_REUSEPORT under a small supervisor (:func:`.supervisor.supervise`) that
    forwards SIGTERM/SIGINT (drain and stop) and SIGHUP (reload) to every worker and restarts
    one that dies. Returns the exit code."""
    note = limits_notice(cfg)
    if note:
        (log.warning if cfg.workers > 1 else log.info)(note)
    if cfg.workers > 1 and any(s.router_holds_requests() for s in cfg.model_specs()):
        log.warning("router polyserve with %d workers: each worker runs its own tiers and idle "
                    "pool over the same backends; their assignments can differ (one worker is "
                    "exact)", cfg.workers)
    if cfg.workers == 1:
        asyncio.run(serve_gateway(cfg, config_path=config_path))
        return 0
    from .supervisor import supervise

    path = str(config_path) if config_path is not None else None
    return supervise("gateway", _worker_main,
                     [(cfg, path, i, False) for i in range(cfg.workers)],
                     grace_s=cfg.shutdown_grace_s,
                     restart_args=lambda i: (cfg, path, i, True))

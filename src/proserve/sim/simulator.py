"""Deterministic, iteration-level discrete-event simulation of one or more engine instances.

Each instance alternates ``schedule(now)`` -> a step of the batch the policy formed ->
``update_from_output(out, now + duration)``. The step lasts what ``step_time`` says (the truth
latency model with seeded noise, :mod:`proserve.sim.timing`), not necessarily what the policy
predicted: policies plan with their own model, as on real hardware.
Arrivals are routed to an instance the moment they arrive and join its queue; an idle instance
starts a step at once.

The event loop is hand-written rather than built on SimPy or similar: there are only two event
kinds (arrival, step end), arrivals are already sorted, so a heap of step ends plus a pointer into
the arrivals is the cheapest correct loop, and this loop runs hundreds of thousands of times per
simulated hour (see benchmarks/bench_simulator.py).

Determinism: no wall-clock input, no unordered iteration, ties broken by (time, sequence number);
arrivals at the same instant as a step end are processed first. The same inputs give the same
event order and so byte-identical results.

Invariants (checked as it runs; violations raise :class:`SimulationError`): KV never over
capacity and its books balance (with prefix caching: free blocks cover the free-but-cached ones,
and every ``check_every`` steps each cached block's refcount equals the block tables holding it,
:meth:`~proserve.engine.kv.BlockManager.check`); each request ends exactly once; every emitted
token is accounted for; finished requests emitted exactly their output length.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..cluster.admission import Admission, Decision
from ..cluster.base import BaseRouter
from ..cluster.view import InstanceView, predicted_ttft, view_of
from ..core.request import Request, Status
from ..engine.base import BaseScheduler, SchedulerOutput

Router = Callable[[Request, float], int]


class SimulationError(RuntimeError):
    """A simulator invariant was violated: a bug in a policy or in the simulator itself."""


@dataclass(slots=True)
class SimResult:
    requests: list[Request]
    engines: list[BaseScheduler]
    end_time: float
    steps: int
    busy_time: list[float]
    wall_s: float
    drained: bool  # False if the drain time ran out with requests still in the system
    extra: dict = field(default_factory=dict)


def _round_robin(n: int) -> Router:
    state = [0]

    def route(req: Request, now: float) -> int:
        i = state[0]
        state[0] = (i + 1) % n
        return i

    return route


class _Views:
    """Router views of the instances: exact (rebuilt for every decision where the engine changed)
    or refreshed only every ``interval`` seconds, as a gateway scraping metrics sees them."""

    def __init__(self, engines: Sequence[BaseScheduler], roles: Sequence[str],
                 interval: float, decode_rows: bool = False) -> None:
        self.engines = engines
        self.decode_rows = decode_rows  # the router plays residents forward (PolyServe)
        self.roles = roles
        self.interval = interval
        self.views: list[InstanceView | None] = [None] * len(engines)
        self.dirty = [True] * len(engines)
        self.last = -math.inf

    def touch(self, k: int) -> None:
        self.dirty[k] = True

    def get(self, now: float) -> list[InstanceView]:
        if self.interval <= 0 or now - self.last >= self.interval:
            for k, d in enumerate(self.dirty):
                if d or self.views[k] is None:
                    self.views[k] = view_of(self.engines[k], k, now, self.roles[k],
                                            decode_rows=self.decode_rows)
                    self.dirty[k] = False
            self.last = now
        return self.views  # type: ignore[return-value]


def simulate(
    requests: Sequence[Request],
    engines: Sequence[BaseScheduler],
    *,
    route: Router | None = None,
    router: BaseRouter | None = None,
    view_interval: float = 0.0,
    decode_engines: Sequence[BaseScheduler] = (),
    kv_transfer_s: Callable[[Request], float] | None = None,
    drain_s: float = 300.0,
    check_every: int = 1000,
    progress: Callable[[float], None] | None = None,
    progress_every: int = 2000,
    ingress_s: float = 0.0,
    step_time: Callable[[int, SchedulerOutput], float] | None = None,
    admission: Admission | None = None,
) -> SimResult:
    """Run ``requests`` (sorted by arrival) through ``engines``.

    Args:
        route: a plain function picking the instance for a request (round-robin by default).
        router: a :class:`BaseRouter` fed with instance views; takes precedence over ``route``.
        view_interval: seconds between view refreshes (0: exact views at every decision).
        decode_engines: if given, disaggregated serving: ``engines`` prefill, these decode; each
            request's KV moves to its decode instance after ``kv_transfer_s(request)`` seconds, and
            its first token reaches the user then (the transfer shows in TTFT).
        drain_s: after the last arrival, how long (simulated seconds) to keep serving before the
            rest is reported as UNFINISHED (never silently dropped).
        check_every: full invariant check every this many steps (and at the end); cheap checks run
            every step.
        progress: called with the current simulated time every ``progress_every`` steps.
        ingress_s: fixed latency between a request's arrival and the engine receiving it (API
            server, tokenisation, network); a profile measured on a live server records it. It
            counts in TTFT and E2E, as it does for a real client.
        step_time: ``(instance, batch) -> seconds`` the step really takes (a
            :class:`~proserve.sim.timing.StepTimer`: truth model and noise); by default the
            policy's own prediction ``out.duration``.
        admission: the gateway's admission rules (:class:`~proserve.cluster.admission.Admission`:
            each class's settings and adaptive shares), decided on the router's choice
            (co-located mode); every first token is reported to it, as the gateway does.
            Waiting requests sit in a router-side queue (class rank, then arrival) and are
            re-decided whenever a request finishes and when their class's timeout passes;
            refused ones end REJECTED at once (no gain, counted against attainment).
    """
    if ingress_s < 0:
        raise ValueError("ingress_s must be >= 0")
    if not engines:
        raise ValueError("need at least one engine instance")
    disagg = bool(decode_engines)
    if admission is not None and disagg:
        raise ValueError("admission control is implemented for co-located instances only")
    if disagg and router is None:
        raise ValueError("disaggregated mode needs a router")
    reqs = list(requests)
    for a, b in zip(reqs, reqs[1:]):
        if b.arrival < a.arrival:
            raise ValueError("requests must be sorted by arrival time")
    n_pre = len(engines)
    all_eng: list[BaseScheduler] = list(engines) + list(decode_engines)
    n_eng = len(all_eng)
    roles = (["prefill"] * n_pre + ["decode"] * len(decode_engines)) if disagg else (
        ["colocated"] * n_pre)
    views = _Views(all_eng, roles, view_interval,
                   getattr(router, "wants_decode_rows", False)) if router is not None else None
    # a router that holds requests (pending queue) and manages the fleet (PolyServe)
    fleet = router if getattr(router, "holds_requests", False) else None
    if fleet is not None:
        if admission is not None:
            raise ValueError(f"router {router.name!r} queues requests itself: no --admission")
        fleet.attach(roles, reqs[0].arrival + ingress_s if reqs else 0.0)
    if router is None:
        route = route or (_round_robin(n_eng) if n_eng > 1 else (lambda r, t: 0))
    wall0 = time.perf_counter()
    horizon = (reqs[-1].arrival if reqs else 0.0) + ingress_s + drain_s

    # events: (time, seq, instance, request); instance >= 0: a step ends there; instance == -1:
    # a KV transfer of ``request`` to its decode instance completes; instance == -2: a waiting
    # request's queue timeout passes (admission)
    heap: list[tuple[float, int, int, Request | None]] = []
    outs: list[SchedulerOutput | None] = [None] * n_eng
    busy_since = [0.0] * n_eng
    busy_time = [0.0] * n_eng
    decode_of: dict[int, int] = {}
    in_transfer: dict[int, Request] = {}
    handoff_tokens = 0
    seq = 0
    steps = 0
    ended: set[int] = set()
    waiting: dict[int, tuple[Request, float]] = {}  # admission queue: id -> (request, since)
    wake_at = math.inf  # the fleet router's next timer event on the heap
    adaptive = admission is not None and bool(admission.adaptive)
    n = len(reqs)
    i = 0
    now = 0.0

    def end(r: Request) -> None:
        if r.id in ended:
            raise SimulationError(f"request {r.id} ended twice")
        ended.add(r.id)

    def start(k: int, t: float) -> None:
        nonlocal seq
        eng = all_eng[k]
        out = eng.schedule(t)
        if views is not None:
            views.touch(k)
        if out.empty:
            outs[k] = None
            if eng.has_unfinished():
                raise SimulationError(
                    f"instance {k} ({eng.name}) holds {eng.num_unfinished} requests but "
                    f"scheduled nothing at t={t:.6f}"
                )
            return
        dur = out.duration if step_time is None else step_time(k, out)
        if getattr(eng, "transfer", None) is not None:  # KV copies of offload preemption
            dur = eng.step_seconds(dur, out)
        if not dur > 0 or math.isinf(dur):
            raise SimulationError(f"instance {k}: invalid step duration {dur}")
        kv = eng.kv
        if not 0 <= kv.free <= kv.total:  # (free >= free-but-cached: kv.check, below)
            raise SimulationError(f"instance {k}: KV free={kv.free} outside [0, {kv.total}]")
        outs[k] = out
        busy_since[k] = t
        seq += 1
        heapq.heappush(heap, (t + dur, seq, k, None))

    def admit(k: int, r: Request, t: float) -> None:
        eng = all_eng[k]
        if views is not None:
            views.touch(k)
        if not eng.add_request(r, t):
            end(r)  # rejected: can never fit in this instance's KV cache
            return
        if outs[k] is None:
            start(k, t)

    def consider(r: Request, t: float, since: float) -> bool:
        """Admission decision for ``r`` at ``t`` (waiting since ``since``); True if decided."""
        nonlocal seq
        if router is None:
            k = route(r, t) if r.instance < 0 else r.instance  # type: ignore[misc]
            view = view_of(all_eng[k], k, t)
        else:
            view = router.choose(r, views.get(t), t)  # type: ignore[union-attr]
            k = view.index
        pred = predicted_ttft(view, r.prompt_len, r.weight, cached=view.cached_tokens(r))
        d = admission.decide(r, pred, t, t - since)  # type: ignore[union-attr]
        if d is Decision.WAIT:
            if r.id not in waiting:
                waiting[r.id] = (r, since)
                seq += 1
                timeout = admission.rules[r.cls].queue_timeout_s  # type: ignore[union-attr]
                heapq.heappush(heap, (since + timeout, seq, -2, r))
            if router is None:
                r.instance = k  # a plain route function is asked once
            return False
        waiting.pop(r.id, None)
        if d is not Decision.ADMIT:  # refused (429): answered at once, no gain
            r.status = Status.REJECTED
            r.finish_time = t
            end(r)
            return True
        if router is not None:
            router.record(k, r, view)
        r.instance = k
        admit(k, r, t)
        return True

    def place(placements, t: float) -> None:
        """Apply a fleet router's placements, then make sure its next timer is on the heap."""
        nonlocal seq, wake_at
        for r, k, d in placements:
            if not 0 <= k < n_eng or (disagg and not (k < n_pre and n_pre <= d < n_eng)):
                raise SimulationError(f"router placed request {r.id} on ({k}, {d})")
            if disagg:
                decode_of[r.id] = d
                r.prefill_only = True
            r.instance = k
            admit(k, r, t)
        w = fleet.next_wakeup()  # type: ignore[union-attr]
        if w < wake_at:
            wake_at = max(w, t)
            seq += 1
            heapq.heappush(heap, (wake_at, seq, -3, None))

    def retry_waiting(t: float) -> None:
        """Capacity freed: re-decide the waiting requests, most important class first."""
        for r, since in sorted(waiting.values(), key=lambda x: (x[0].priority, x[0].arrival,
                                                                 x[0].id)):
            consider(r, t, since)

    while i < n or heap:
        next_arr = reqs[i].arrival + ingress_s if i < n else math.inf
        if heap and heap[0][0] < next_arr:
            now, _, k, xr = heapq.heappop(heap)
            if now > horizon:
                heapq.heappush(heap, (now, 0, k, xr))
                break
            if k == -3:  # the fleet router's timer: instances ready, scale-down checks
                if now >= wake_at:
                    wake_at = math.inf
                    place(fleet.tick(views.get(now), now), now)  # type: ignore[union-attr]
                continue
            if k == -2:  # a waiting request's queue timeout passed: decide it now
                assert xr is not None
                if xr.id in waiting:
                    consider(xr, now, waiting[xr.id][1])
                continue
            if k < 0:  # KV transfer done: first token out, decode instance takes over
                assert xr is not None
                del in_transfer[xr.id]
                xr.emit_token(now)
                handoff_tokens += 1
                admit(decode_of.pop(xr.id), xr, now)
                continue
            out = outs[k]
            assert out is not None
            eng = all_eng[k]
            finished_before = eng.num_finished
            busy_time[k] += now - busy_since[k]
            done = eng.update_from_output(out, now)
            if adaptive:  # this step's first tokens and ends, as the gateway sees them stream
                for r in out.reqs:
                    if r.generated and r.first_token_time == now:
                        admission.first_token(r)  # type: ignore[union-attr]
                for r in done:
                    admission.finished(r)  # type: ignore[union-attr]
            for r in done:
                end(r)
            for r in out.handed_off:  # disaggregated: the prompt's KV travels to decode
                in_transfer[r.id] = r
                seq += 1
                heapq.heappush(heap, (now + kv_transfer_s(r), seq, -1, r))  # type: ignore[misc]
            steps += 1
            if waiting and eng.num_finished != finished_before:
                retry_waiting(now)
            if fleet is not None and eng.num_finished != finished_before and fleet.has_pending():
                start(k, now)  # the instance's next step is part of the state the router sees
                place(fleet.retry(views.get(now), now, k), now)  # type: ignore[union-attr]
                if check_every and steps % check_every == 0:
                    eng.check()
                if progress is not None and steps % progress_every == 0:
                    progress(now)
                continue
            if check_every and steps % check_every == 0:
                eng.check()
            if progress is not None and steps % progress_every == 0:
                progress(now)
            start(k, now)
        else:
            now = next_arr
            r = reqs[i]
            i += 1
            if admission is not None:
                consider(r, now, now)  # admits, refuses, or queues it for a later decision
                continue
            if fleet is not None:
                place(fleet.offer(r, views.get(now), now), now)  # type: ignore[union-attr]
                continue
            if router is None:
                k = route(r, now)  # type: ignore[misc]
            elif disagg:
                vs = views.get(now)  # type: ignore[union-attr]
                k, d = router.route_pair(r, vs[:n_pre], vs[n_pre:], now)
                if not (0 <= k < n_pre and n_pre <= d < n_eng):
                    raise SimulationError(f"router returned pair ({k}, {d}) outside the pools")
                decode_of[r.id] = d
                r.prefill_only = True
            else:
                k = router.route(r, views.get(now), now)  # type: ignore[union-attr]
            if not 0 <= k < n_eng:
                raise SimulationError(f"router returned instance {k} of {n_eng}")
            r.instance = k
            admit(k, r, now)

    drained = True
    end_at = min(now, horizon)
    for r, _ in waiting.values():  # still waiting for capacity when the drain time ran out
        r.status = Status.UNFINISHED
        r.finish_time = end_at
        end(r)
        drained = False
    if fleet is not None:
        for r in fleet.pending_requests():  # still pending in the router at the drain end
            r.status = Status.UNFINISHED
            r.finish_time = end_at
            end(r)
            drained = False
        res_extra = {"fleet": fleet.fleet_stats(end_at)}
        if reqs and reqs[-1].arrival > reqs[0].arrival:  # mean instances while requests arrive
            t0, t1 = reqs[0].arrival + ingress_s, reqs[-1].arrival + ingress_s
            res_extra["fleet"]["mean_instances"] = fleet.fleet.instance_seconds(t0, t1) / (t1 - t0)
    else:
        res_extra = {}
    for r in in_transfer.values():  # KV still moving when the drain time ran out
        r.status = Status.UNFINISHED
        r.finish_time = end_at
        end(r)
        drained = False
    for k, eng in enumerate(all_eng):
        if outs[k] is not None:  # a step in flight at the horizon: count its busy time so far
            busy_time[k] += max(horizon - busy_since[k], 0.0)
        left = eng.abort_all(end_at) if eng.has_unfinished() else []
        for r in left:
            end(r)
            drained = False
        eng.check()
        if eng.kv.used:  # every request has ended: no KV may still be held (cached is free)
            raise SimulationError(f"instance {k}: {eng.kv.used} KV blocks held after the run")

    # End-of-run invariants.
    if len(ended) != n:
        missing = [r.id for r in reqs if r.id not in ended][:5]
        raise SimulationError(f"{n - len(ended)} requests never ended (e.g. ids {missing})")
    emitted = sum(e.tokens_emitted for e in all_eng) + handoff_tokens
    generated = sum(r.generated for r in reqs)
    if emitted != generated:
        raise SimulationError(f"token books unbalanced: emitted {emitted} != held {generated}")
    for r in reqs:
        if r.status == Status.FINISHED and r.generated != r.output_len:
            raise SimulationError(f"request {r.id} finished with {r.generated}/{r.output_len}")
        if r.status not in (Status.FINISHED, Status.REJECTED, Status.UNFINISHED):
            raise SimulationError(f"request {r.id} left in state {r.status.name}")
    end_time = max((r.finish_time for r in reqs), default=0.0)
    return SimResult(
        requests=reqs, engines=all_eng, end_time=end_time, steps=steps,
        busy_time=busy_time, wall_s=time.perf_counter() - wall0, drained=drained,
        extra=res_extra,
    )

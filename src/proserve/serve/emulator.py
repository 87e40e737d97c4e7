"""``proserve emulate``: OpenAI-compatible engine servers without a GPU.

Each emulated instance runs one of our engine schedulers in real time (:class:`EngineLoop`):
requests are batched, prioritised, chunk-prefilled and preempted exactly as in the simulator, and
each iteration takes the latency model's predicted time. It speaks the subset of vLLM's API that
gateways and load generators use: ``/v1/completions`` and ``/v1/chat/completions`` (streaming SSE
and not, ``max_tokens``, ``priority``, ``stream_options.include_usage``, ``vllm_xargs``),
``/v1/models``, ``/health`` and ``/metrics`` with vLLM's metric names. Unlike
llm-d-inference-sim it batches, prioritises and preempts, so fleet tests see real contention.

Per-request class, weight and SLOs: ``priority`` (lower = more urgent, as in vLLM) selects the
class of the same rank from ``--classes`` (clamped to the last class); ``vllm_xargs`` may set
``class`` (one this server defines), ``weight``, ``ttft_slo_ms`` and ``tpot_slo_ms`` within
``--field-limits`` (default: no more weight than the heaviest class, no SLO tighter than the
tightest class's). Anything else is refused with 400 naming the field (core/sched_fields.py).

No tokenizer: token-id prompts are counted exactly, text at ~4 characters per token. Output is
``max_tokens`` tokens of placeholder text (the emulator never stops early).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ..core.classes import PriorityClass, parse_classes, unloaded_latencies
from ..core.request import Request, Status
from ..core.sched_fields import FieldLimits, resolve_fields
from ..engine.base import make_scheduler
from ..latency.profiles import load_profile
from .engine_loop import EngineFull, EngineLoop, TokenEvent
from .openai import (
    ChatRequest,
    CompletionRequest,
    error,
    models_response,
    openai_app,
    parse_body,
    prompt_prefix,
    prompt_tokens,
)

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0)


@dataclass
class EmulatorConfig:
    model_name: str = "proserve-emulated"
    policy: str = "slide-bounded"
    policy_args: dict[str, Any] = field(default_factory=dict)
    profile: str = "llama3.1-8b@h100"
    kv_blocks: int | None = None
    preemption: str = "recompute"  # engine/offload.py: recompute | offload-sync | ... | full
    host_kv_blocks: str | None = None  # host KV for offloads: blocks or "4x" (default 4x)
    classes: str | None = None
    field_limits: str | None = None  # FieldLimits spec for vllm_xargs weight/SLOs
    max_model_len: int = 8192
    default_max_tokens: int = 16
    time_scale: float = 1.0


class EmulatedEngine:
    """One emulated vLLM-like instance: an engine loop, its metrics and its HTTP app."""

    def __init__(self, cfg: EmulatorConfig, index: int = 0) -> None:
        self.cfg = cfg
        self.index = index
        model = load_profile(cfg.profile)
        if cfg.kv_blocks:
            model = model.with_kv_blocks(cfg.kv_blocks)
        self.model = model
        self.classes: list[PriorityClass] = parse_classes(cfg.classes)
        self.limits = FieldLimits.parse(cfg.field_limits)
        self.scheduler = make_scheduler(cfg.policy, model, **{
            "preemption": cfg.preemption, "host_kv_blocks": cfg.host_kv_blocks,
            **cfg.policy_args})
        self.loop = EngineLoop(self.scheduler, time_scale=cfg.time_scale, on_step=self._on_step)
        self.registry = CollectorRegistry()
        lab = ["model_name"]
        name = cfg.model_name
        reg = self.registry
        Gauge("vllm:num_requests_running", "Requests holding KV / in the batch", lab,
              registry=reg).labels(name).set_function(lambda: self._count(Status.RUNNING))
        Gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled", lab,
              registry=reg).labels(name).set_function(lambda: self._count(Status.WAITING))
        Gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = full", lab,
              registry=reg).labels(name).set_function(lambda: self.scheduler.kv.usage)
        self.m_ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token", lab,
                                buckets=TTFT_BUCKETS, registry=reg).labels(name)
        self.m_itl = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency", lab,
                               buckets=ITL_BUCKETS, registry=reg).labels(name)
        self.m_e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end latency", lab,
                               buckets=E2E_BUCKETS, registry=reg).labels(name)
        self.m_preempt = Counter("vllm:num_preemptions", "Preemptions", lab,
                                 registry=reg).labels(name)
        self.m_success = Counter("vllm:request_success", "Finished requests", lab,
                                 registry=reg).labels(name)
        self.m_prompt = Counter("vllm:prompt_tokens", "Prefill tokens", lab,
                                registry=reg).labels(name)
        self.m_gen = Counter("vllm:generation_tokens", "Generated tokens", lab,
                             registry=reg).labels(name)
        # vLLM's prefix-cache counters (tokens): prompt tokens looked up and found cached, counted
        # when a request's first step is scheduled (here: when its first token is out)
        self.m_pc_queries = Counter("vllm:prefix_cache_queries", "Prefix cache queries (tokens)",
                                    lab, registry=reg).labels(name)
        self.m_pc_hits = Counter("vllm:prefix_cache_hits", "Prefix cache hits (tokens)", lab,
                                 registry=reg).labels(name)
        # ours: preemptions by mode and KV moved between device and host (engine/offload.py),
        # read from the scheduler's counters at scrape time
        sch = self.scheduler
        pre = Gauge("proserve_engine_preemptions", "Preemptions by what happened to the KV", lab + [
            "mode"], registry=reg)
        pre.labels(name, "offload").set_function(lambda: sch.preempt_offload)
        pre.labels(name, "recompute").set_function(lambda: sch.preempt_recompute)
        blk = Gauge("proserve_engine_kv_blocks_copied", "KV blocks copied (out: device->host on "
                    "preemption, in: reloads, backup: eager backups)", lab + ["direction"],
                    registry=reg)
        blk.labels(name, "out").set_function(lambda: sch.blocks_out)
        blk.labels(name, "in").set_function(lambda: sch.blocks_in)
        blk.labels(name, "backup").set_function(lambda: sch.backup_blocks)
        Gauge("proserve_engine_kv_copy_wait_seconds", "Step time spent waiting on KV copies", lab,
              registry=reg).labels(name).set_function(lambda: sch.copy_wait_s)
        Gauge("proserve_engine_recomputed_tokens", "Computed KV tokens dropped by preemption "
              "(to be recomputed)", lab, registry=reg).labels(name).set_function(
                  lambda: sch.recomputed_tokens)
        Gauge("proserve_engine_host_kv_usage_perc", "Host KV usage, 1 = full", lab,
              registry=reg).labels(name).set_function(
                  lambda: 1 - sch.kv.host_free / sch.kv.host_total if sch.kv.host_total else 0.0)

    # ------------------------------------------------------------------ helpers
    def _count(self, status: Status) -> int:
        return sum(1 for r in self.scheduler.requests() if r.status == status)

    def _on_step(self, duration: float, batch: int, preempted: int) -> None:
        if preempted:
            self.m_preempt.inc(preempted)

    def _make_request(self, body: CompletionRequest | ChatRequest, p: int, n_out: int
                      ) -> Request | web.Response:
        m = self.model
        f = resolve_fields(self.classes, body.priority, body.vllm_xargs, self.limits,
                           *unloaded_latencies(m, p, n_out))
        if f.problems:  # never trusted as sent: the first refused field, named
            param, why = f.problems[0]
            return error(400, f"{param}: {why}", param=param)
        return Request(id=self.loop.next_id(), arrival=0.0, prompt_len=p, output_len=n_out,
                       ttft_slo=f.ttft_slo, tpot_slo=f.tpot_slo, weight=f.weight,
                       priority=f.cls.rank, cls=f.label,
                       prefix=prompt_prefix(body, m.block_size))

    # ------------------------------------------------------------------ handlers
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, CompletionRequest)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, ChatRequest)

    async def models(self, request: web.Request) -> web.Response:
        return models_response(self.cfg.model_name, self.cfg.max_model_len)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _serve(self, request: web.Request, schema) -> web.StreamResponse:
        body = await parse_body(request, schema)
        if isinstance(body, web.Response):
            return body
        if body.model != self.cfg.model_name:
            return error(404, f"The model `{body.model}` does not exist; this server serves "
                              f"`{self.cfg.model_name}`", param="model", code="model_not_found")
        p = prompt_tokens(body)
        n_out = body.output_tokens or self.cfg.default_max_tokens
        limit = self.cfg.max_model_len
        if p + n_out > limit:
            return error(400, f"This model's maximum context length is {limit} tokens. However, "
                              f"you requested {p + n_out} tokens ({p} in the prompt, {n_out} in "
                              f"the completion).", param="max_tokens")
        req = self._make_request(body, p, n_out)
        if isinstance(req, web.Response):
            return req
        try:
            q = self.loop.submit(req)
        except EngineFull as e:
            return error(400, str(e))
        self.m_prompt.inc(p)
        chat = isinstance(body, ChatRequest)
        try:
            if body.stream:
                usage = bool(body.stream_options and body.stream_options.include_usage)
                return await self._stream(request, req, q, chat, usage)
            return await self._collect(req, q, chat)
        finally:
            if req.status < Status.FINISHED:  # client went away or the server is stopping
                self.loop.abort(req)

    def _observe(self, req: Request, ev: TokenEvent, prev: float) -> float:
        if ev.index == 1:
            self.m_ttft.observe(ev.t - req.arrival)
            self.m_pc_queries.inc(req.prompt_len)
            self.m_pc_hits.inc(req.cached_tokens)
        else:
            self.m_itl.observe(ev.t - prev)
        self.m_gen.inc()
        if ev.done:
            self.m_e2e.observe(ev.t - req.arrival)
            self.m_success.inc()
        return ev.t

    def _envelope(self, req: Request, chat: bool, created: int) -> dict[str, Any]:
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{self.index}-{req.id}",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created, "model": self.cfg.model_name}

    def _usage(self, req: Request) -> dict[str, int]:
        return {"prompt_tokens": req.prompt_len, "completion_tokens": req.generated,
                "total_tokens": req.prompt_len + req.generated}

    async def _collect(self, req: Request, q: asyncio.Queue[TokenEvent],
                       chat: bool) -> web.Response:
        prev = 0.0
        while True:
            ev = await q.get()
            prev = self._observe(req, ev, prev)
            if ev.done:
                break
        text = " token" * req.generated
        env = self._envelope(req, chat, int(time.time()))
        if chat:
            env["object"] = "chat.completion"
            env["choices"] = [{"index": 0, "finish_reason": "length",
                               "message": {"role": "assistant", "content": text}}]
        else:
            env["choices"] = [{"index": 0, "text": text, "finish_reason": "length",
                               "logprobs": None}]
        env["usage"] = self._usage(req)
        return web.json_response(env)

    async def _stream(self, request: web.Request, req: Request, q: asyncio.Queue[TokenEvent],
                      chat: bool, usage: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        env = self._envelope(req, chat, int(time.time()))

        async def send(obj: Any) -> None:
            await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

        if chat:
            await send({**env, "choices": [{"index": 0, "delta": {"role": "assistant"},
                                            "finish_reason": None}]})
        prev = 0.0
        while True:
            ev = await q.get()
            prev = self._observe(req, ev, prev)
            reason = "length" if ev.done else None
            choice = ({"index": 0, "delta": {"content": " token"}, "finish_reason": reason}
                      if chat else {"index": 0, "text": " token", "finish_reason": reason,
                                    "logprobs": None})
            await send({**env, "choices": [choice]})
            if ev.done:
                break
        if usage:
            await send({**env, "choices": [], "usage": self._usage(req)})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def app(self) -> web.Application:
        app = openai_app(self)

        async def on_startup(_: web.Application) -> None:
            self.loop.start()

        async def on_cleanup(_: web.Application) -> None:
            await self.loop.stop()

        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)
        return app


async def serve(cfg: EmulatorConfig, instances: int, host: str, port: int,
                ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                engines: list[EmulatedEngine] | None = None, first: int = 0) -> None:
    """Run ``instances`` emulated engines on ports ``port .. port + instances - 1`` until
    ``stop`` is set (or SIGINT/SIGTERM), then shut down gracefully. ``first``: the index of the
    first engine (response ids carry it), when several processes share the work."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # not available off the main thread or on some platforms: then Ctrl-C ends asyncio.run
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runners: list[web.AppRunner] = []
    built = [EmulatedEngine(cfg, first + i) for i in range(instances)]
    if engines is not None:
        engines.extend(built)
    try:
        for i, eng in enumerate(built):
            runner = web.AppRunner(eng.app(), handler_cancellation=True, access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port + i).start()
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def ports(port: int, instances: int) -> Sequence[int]:
    return range(port, port + instances)


def split(instances: int, processes: int) -> list[tuple[int, int]]:
    """``(first index, count)`` of each process's engines: contiguous blocks, sizes differing by
    at most one, in port order (engine i is on port P + i whatever the split)."""
    out = []
    first = 0
    for k in range(processes):
        n = instances // processes + (1 if k < instances % processes else 0)
        out.append((first, n))
        first += n
    return out


def _process_main(cfg: EmulatorConfig, host: str, port: int, first: int, count: int,
                  conn) -> None:
    """One process of :func:`run_emulators` (spawned by :func:`.supervisor.supervise`)."""
    from .supervisor import run_worker, worker_logging

    worker_logging(f"emulate process {first}..{first + count - 1}")
    run_worker(conn, lambda ready, stop: serve(cfg, count, host, port + first, ready=ready,
                                               stop=stop, first=first))


def run_emulators(cfg: EmulatorConfig, instances: int, processes: int, host: str,
                  port: int) -> int:
    """``instances`` engines on ports ``port .. port + instances - 1``, served by ``processes``
    processes (each a block of consecutive ports, :func:`split`), so a fleet uses every core;
    the ports, and so a gateway's backend list, do not depend on ``processes``. One process:
    in this one. Returns the exit code."""
    if processes <= 1:
        asyncio.run(serve(cfg, instances, host, port))
        return 0
    from .supervisor import supervise

    return supervise("emulate", _process_main,
                     [(cfg, host, port, first, n) for first, n in split(instances, processes)],
                     grace_s=5.0)

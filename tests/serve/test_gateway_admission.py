"""The gateway's default admission path, its scrape reconciliation and its rate limits, driven by
an injected clock and a stub backend the test holds and releases, so every assert is about counts
and orderings the code guarantees, never about how long something took.

Numbers the tests lean on (llama3.1-8b@h100, the gateway's latency model): a 10-token prompt on
an idle backend is predicted to see its first token after ~6 ms; behind one in-flight 7,000-token
prefill after ~0.24 s; behind 40 scraped waiting requests (padded as 512-token prompts) ~0.39 s.
The classes' SLOs sit far from those: 100 ms (late behind work, on time when idle) and 2 s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from tests.serve.helpers import until

from proserve.cluster.view import predicted_ttft
from proserve.core.request import Request, Status
from proserve.latency.profiles import load_profile
from proserve.serve.emulator import EmulatedEngine, EmulatorConfig
from proserve.serve.gateway import Backend, Gateway, TokenBucket
from proserve.serve.gateway_config import GatewayConfig

MODEL = "m"
# fast: late behind any real work; relaxed: same work is on time for its TTFT, but its TPOT SLO
# is tight (a gateway comparing the prediction against the wrong SLO flips both).
# relaxed outweighs fast: the gateway predicts a request behind work of its own weight or more
# (a priority engine serves heavier work first), so the big relaxed request delays fast ones
CLASSES = "fast:w=2,ttft=100ms,tpot=1s;relaxed:w=4,ttft=2s,tpot=10ms;bulk:w=1,ttft=100ms,tpot=1s"
FAST = {"Authorization": "Bearer k-fast"}
RELAXED = {"Authorization": "Bearer k-relaxed"}
BIG = 7000  # prompt tokens of the request that keeps the backend busy
SMALL = 10  # prompt tokens of the request under test (other small ones use 11, 12, ...)


class FakeClock:
    """The gateway's clock: frozen unless the test advances it."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class Stub:
    """A backend that logs ("start"/"end", prompt length) per request and, for prompt lengths in
    ``hold``, answers only once the test sets that event. ``metrics`` is its /metrics text;
    ``reply`` (status, body, content type) answers every completion with that instead."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self.hold: dict[int, asyncio.Event] = {}
        self.metrics = ""
        self.reply: tuple[int, bytes, str] | None = None
        self.server: TestServer | None = None

    async def complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = len(body["prompt"])
        self.log.append(("start", n))
        if self.reply is not None:
            status, data, ctype = self.reply
            return web.Response(status=status, body=data, content_type=ctype)
        if n in self.hold:
            await self.hold[n].wait()
        self.log.append(("end", n))
        if body.get("stream"):  # one token, then the end
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            chunk = {"choices": [{"index": 0, "text": " token", "finish_reason": "length"}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.json_response({
            "choices": [{"index": 0, "text": " token", "finish_reason": "length"}],
            "usage": {"prompt_tokens": n, "completion_tokens": 1, "total_tokens": n + 1}})

    async def start(self) -> str:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=self.metrics)

        async def ok(_: web.Request) -> web.Response:
            return web.Response()

        app = web.Application()
        app.router.add_post("/v1/completions", self.complete)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", ok)
        self.server = TestServer(app)
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    def started(self, n: int) -> bool:
        return ("start", n) in self.log

    def release(self) -> None:
        """Let every held request finish (a failing test must not leave one hanging)."""
        for e in self.hold.values():
            e.set()


async def gateway(urls: list[str], clock: FakeClock, **over) -> tuple[Gateway, TestClient]:
    doc = {
        "model": MODEL, "classes": CLASSES, "router": "go",
        "backends": [{"url": u, "kind": "proserve"} for u in urls],
        "tenants": [{"name": "f", "api_keys": ["k-fast"], "class": "fast"},
                    {"name": "r", "api_keys": ["k-relaxed"], "class": "relaxed"}],
        "health": {"interval_s": 0.05, "timeout_s": 5.0, "failures_to_eject": 3},
        "scrape_interval_s": 0.02,
        **over,
    }
    gw = Gateway(GatewayConfig.model_validate(doc), clock=clock)
    client = TestClient(TestServer(gw.app(), handler_cancellation=True))
    await client.start_server()
    return gw, client



def post(c: TestClient, n: int, headers: dict, **extra) -> asyncio.Task:
    body = {"model": MODEL, "prompt": [1] * n, "max_tokens": 1, **extra}
    return asyncio.ensure_future(c.post("/v1/completions", json=body, headers=headers))


def count_routes(gw: Gateway) -> Callable[[], int]:
    """Count admission evaluations (each asks the router): a queued request re-evaluates on
    every wake-up, so 'N more evaluations' means it has looked again N times."""
    calls = [0]
    orig = gw.router.choose

    def route(*a, **k):
        calls[0] += 1
        return orig(*a, **k)

    gw.router.choose = route
    return lambda: calls[0]


async def metric(c: TestClient, line_start: str) -> float:
    text = await (await c.get("/metrics")).text()
    hits = [x for x in text.splitlines() if x.startswith(line_start)]
    return float(hits[0].split()[-1]) if hits else 0.0


async def busy(stub: Stub, gw: Gateway, c: TestClient) -> asyncio.Task:
    """Put one big request in flight on the (single) backend and keep it there. It is sent as
    "relaxed": alone it is predicted at ~0.2 s, within that class's 2 s TTFT SLO."""
    stub.hold[BIG] = asyncio.Event()
    a = post(c, BIG, RELAXED)
    await until(lambda: stub.started(BIG), "the big request reached the backend")
    assert [r.prompt_len for r in gw.backends[0].inflight.values()] == [BIG]
    return a


# ---------------------------------------------------------------------------- admission
def test_default_path_queues_while_late_and_wakes_when_capacity_frees() -> None:
    async def go():
        stub, clock = Stub(), FakeClock()
        gw, c = await gateway([await stub.start()], clock)  # no class_settings: the defaults
        assert gw.cfg.settings("fast").queue_timeout_s > 0
        assert not gw.cfg.settings("fast").sheddable
        try:
            # idle backend: predicted well within the 100 ms SLO, forwarded without queueing
            r = await c.post("/v1/completions", headers=FAST,
                             json={"model": MODEL, "prompt": [1] * 12, "max_tokens": 1})
            assert r.status == 200 and stub.started(12)
            a = await busy(stub, gw, c)
            b = post(c, SMALL, FAST)
            await until(lambda: gw._queued["fast"] == 1 or b.done(), "B queued")
            assert not b.done() and not stub.started(SMALL)  # waits, not forwarded
            assert await metric(c, 'proserve_queue_depth{class="fast",model="m"}') == 1.0
            # the same load is on time for "relaxed" (2 s TTFT SLO; its 10 ms TPOT is not the
            # one that matters): forwarded at once, past the queued fast request
            d = post(c, SMALL + 1, RELAXED)
            await until(lambda: d.done() or gw._queued["relaxed"] > 0, "relaxed served")
            assert d.done() and (await d).status == 200 and gw._queued["relaxed"] == 0
            assert not b.done() and gw._queued["fast"] == 1
            # the clock never moves, so B's queue timeout never passes: only the big request
            # leaving the backend can let B through, and it must
            stub.hold[BIG].set()
            ra, rb = await asyncio.wait_for(asyncio.gather(a, b), timeout=60)
            assert ra.status == 200 and rb.status == 200
            assert stub.log.index(("end", BIG)) < stub.log.index(("start", SMALL))
            assert gw._queued["fast"] == 0
            assert await metric(c, 'proserve_queue_depth{class="fast",model="m"}') == 0.0
            assert await metric(
                c, 'proserve_requests_total{class="fast",code="200",model="m",tenant="f"}') == 2.0
            assert await metric(c, "proserve_shed_total") == 0.0
        finally:
            stub.release()
            await c.close()
            await stub.server.close()
    asyncio.run(go())


def test_served_late_once_its_queue_timeout_has_passed() -> None:
    async def go():
        stub, clock = Stub(), FakeClock()
        gw, c = await gateway([await stub.start()], clock,
                              class_settings={"fast": {"queue_timeout_s": 0.2}})
        evaluations = count_routes(gw)
        try:
            a = await busy(stub, gw, c)
            b = post(c, SMALL, FAST)
            await until(lambda: gw._queued["fast"] == 1 or b.done(), "B queued")
            assert not b.done()
            clock.advance(0.1)  # still inside the 0.2 s timeout: keeps waiting
            seen = evaluations()
            await until(lambda: evaluations() >= seen + 3 or b.done(), "B looked again")
            assert not b.done() and not stub.started(SMALL)
            clock.advance(0.2)  # past it; 0.3 s waited + 0.24 s predicted < 10 x 100 ms
            seen = evaluations()
            await until(lambda: stub.started(SMALL) or evaluations() >= seen + 3,
                        "B forwarded after its timeout")
            assert stub.started(SMALL) and not stub.log.count(("end", BIG))  # A still busy
            rb = await asyncio.wait_for(b, timeout=60)
            assert rb.status == 200 and gw._queued["fast"] == 0
            stub.hold[BIG].set()
            assert (await asyncio.wait_for(a, timeout=60)).status == 200
            assert await metric(c, "proserve_shed_total") == 0.0
        finally:
            stub.release()
            await c.close()
            await stub.server.close()
    asyncio.run(go())


def test_hopelessly_late_after_its_queue_timeout_gets_429_queue_timeout() -> None:
    async def go():
        stub, clock = Stub(), FakeClock()
        gw, c = await gateway([await stub.start()], clock,
                              class_settings={"fast": {"queue_timeout_s": 0.2}})
        try:
            a = await busy(stub, gw, c)
            b = post(c, SMALL, FAST)
            await until(lambda: gw._queued["fast"] == 1 or b.done(), "B queued")
            assert not b.done()
            clock.advance(2.0)  # 2 s waited + 0.24 s predicted >= 10 x the 100 ms SLO
            rb = await asyncio.wait_for(b, timeout=60)
            d = await rb.json()
            assert rb.status == 429 and d["error"]["code"] == "queue_timeout", d
            assert int(rb.headers["Retry-After"]) >= 1
            assert not stub.started(SMALL) and gw._queued["fast"] == 0
            assert await metric(c, 'proserve_shed_total{class="fast",model="m",tenant="f"}') == 1.0
            assert await metric(
                c, 'proserve_requests_total{class="fast",code="429",model="m",tenant="f"}') == 1.0
            stub.hold[BIG].set()
            assert (await asyncio.wait_for(a, timeout=60)).status == 200
        finally:
            stub.release()
            await c.close()
            await stub.server.close()
    asyncio.run(go())


def test_yield_share_sheds_what_the_plain_prediction_would_admit() -> None:
    """A sheddable class judged with yield_share 0.95: its prediction is stretched 20x. A small
    request on the idle backend still fits its 2 s SLO (a few ms x 20); the big one, predicted
    ~0.2 s alone (admitted without the share, as busy() relies on), does not: 429 at once."""
    async def go():
        stub, clock = Stub(), FakeClock()
        gw, c = await gateway([await stub.start()], clock, class_settings={
            "relaxed": {"sheddable": True, "yield_share": 0.95}})
        try:
            r = await c.post("/v1/completions", headers=RELAXED,
                             json={"model": MODEL, "prompt": [1] * SMALL, "max_tokens": 1})
            assert r.status == 200 and stub.started(SMALL)
            r = await c.post("/v1/completions", headers=RELAXED,
                             json={"model": MODEL, "prompt": [1] * BIG, "max_tokens": 1})
            d = await r.json()
            assert r.status == 429 and d["error"]["code"] == "capacity_shed", d
            assert not stub.started(BIG)
            assert await metric(
                c, 'proserve_shed_total{class="relaxed",model="m",tenant="r"}') == 1.0
        finally:
            stub.release()
            await c.close()
            await stub.server.close()
    asyncio.run(go())


def test_an_adaptive_share_follows_the_heavier_classs_first_tokens() -> None:
    """relaxed (rank 1) with yield_target 0.9: a fast (rank 0) request whose first token comes
    1 s after arrival (SLO 100 ms) raises relaxed's share by one step (0.02), one on time lowers
    it by 0.02 x 0.1 / 0.9; the gauge shows the share admission judges with."""
    async def go():
        stub, clock = Stub(), FakeClock()
        gw, c = await gateway([await stub.start()], clock, class_settings={
            "relaxed": {"sheddable": True, "yield_target": 0.9}})
        gauge = 'proserve_admission_yield_share{class="relaxed",model="m"}'
        try:
            assert await metric(c, gauge) == 0.0
            stub.hold[SMALL] = asyncio.Event()
            late = post(c, SMALL, FAST)
            await until(lambda: stub.started(SMALL), "the fast request reached the backend")
            clock.advance(1.0)
            stub.hold[SMALL].set()
            assert (await late).status == 200
            assert await metric(c, gauge) == pytest.approx(0.02)
            assert await metric(
                c, 'proserve_admission_yield_share{class="fast",model="m"}') == 0.0
            r = await post(c, SMALL + 1, FAST)  # the clock stands still: on time
            assert r.status == 200
            assert await metric(c, gauge) == pytest.approx(0.02 - 0.02 * 0.1 / 0.9)
            r = await post(c, SMALL + 2, RELAXED)  # its own outcomes do not count
            assert r.status == 200
            assert await metric(c, gauge) == pytest.approx(0.02 - 0.02 * 0.1 / 0.9)
            # streamed: the late first token counts once, as it arrives, not again at the end
            stub.hold[SMALL + 3] = asyncio.Event()
            late = post(c, SMALL + 3, FAST, stream=True)
            await until(lambda: stub.started(SMALL + 3), "the streamed request reached it")
            clock.advance(1.0)
            stub.hold[SMALL + 3].set()
            r = await late
            assert r.status == 200 and "[DONE]" in await r.text()
            assert await metric(c, gauge) == pytest.approx(0.04 - 0.02 * 0.1 / 0.9)
        finally:
            stub.release()
            await c.close()
            await stub.server.close()
    asyncio.run(go())


def test_yield_share_outside_0_1_is_a_config_error() -> None:
    base = {"model": MODEL, "classes": CLASSES, "backends": [{"url": "http://x:1"}],
            "tenants": [{"name": "f", "api_keys": ["k"], "class": "fast"}]}
    for bad in (-0.5, 1.0):
        with pytest.raises(ValueError, match="yield_share"):
            GatewayConfig.model_validate({**base, "class_settings": {
                "fast": {"sheddable": True, "yield_share": bad}}})
    with pytest.raises(ValueError, match="yield_target"):
        GatewayConfig.model_validate({**base, "class_settings": {
            "fast": {"sheddable": True, "yield_target": 1.0}}})
    with pytest.raises(ValueError, match="at most"):
        GatewayConfig.model_validate({**base, "class_settings": {
            "fast": {"sheddable": True, "yield_share": 0.99, "yield_target": 0.9}}})


# ---------------------------------------------------------------------------- scraping
def test_apply_scrape_reads_vllm_and_sglang_names() -> None:
    m = load_profile("llama3.1-8b@h100")
    b = Backend(0, "http://x", "vllm", m)
    Gateway._apply_scrape(b, "\n".join([
        "# TYPE vllm:kv_cache_usage_perc gauge",
        'vllm:kv_cache_usage_perc{model_name="m",engine="0"} 0.25',
        'vllm:kv_cache_usage_perc{model_name="m",engine="1"} 0.5',
        "# TYPE vllm:num_requests_waiting gauge",
        'vllm:num_requests_waiting{model_name="m",engine="0"} 3',
        'vllm:num_requests_waiting{model_name="m",engine="1"} 4',
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{model_name="m"} 99', ""]))
    assert b.scraped_kv_usage == pytest.approx(0.75) and b.scraped_waiting == 7  # summed
    Gateway._apply_scrape(b, "# TYPE other gauge\nother 5\n")  # nothing known: kept as is
    assert b.scraped_kv_usage == pytest.approx(0.75) and b.scraped_waiting == 7
    s = Backend(1, "http://y", "sglang", m)
    Gateway._apply_scrape(s, "sglang:token_usage 0.4\nsglang:num_queue_reqs 12\n")
    assert s.scraped_kv_usage == pytest.approx(0.4) and s.scraped_waiting == 12
    Gateway._apply_scrape(s, "sglang:num_queue_reqs 0\n")  # a drained queue is news too
    assert s.scraped_waiting == 0 and s.scraped_kv_usage == pytest.approx(0.4)


def test_apply_scrape_reads_the_emulators_own_metrics() -> None:
    eng = EmulatedEngine(EmulatorConfig(kv_blocks=200, policy="vllm-fcfs"))
    for i in range(6):  # 6 x 1,000 tokens; 200 blocks hold 3,200: some run, the rest wait
        assert eng.scheduler.add_request(Request(
            id=i, arrival=0.0, prompt_len=1000, output_len=8, ttft_slo=1.0, tpot_slo=1.0), 0.0)
    eng.scheduler.schedule(0.0)
    waiting = sum(1 for r in eng.scheduler.requests() if r.status == Status.WAITING)
    assert 0 < waiting < 6 and eng.scheduler.kv.usage > 0
    b = Backend(0, "http://x", "proserve", load_profile("llama3.1-8b@h100"))
    Gateway._apply_scrape(b, generate_latest(eng.registry).decode())
    assert b.scraped_waiting == waiting
    assert b.scraped_kv_usage == pytest.approx(eng.scheduler.kv.usage)


def _req(i: int, prompt: int, generated: int = 0) -> Request:
    r = Request(id=i, arrival=0.0, prompt_len=prompt, output_len=50, ttft_slo=1.0, tpot_slo=1.0)
    r.generated = generated
    return r


def test_view_pads_scraped_waiting_and_floors_kv_usage() -> None:
    m = load_profile("llama3.1-8b@h100").with_kv_blocks(1000)
    b = Backend(0, "http://x", "proserve", m)
    v = b.view(5.0).load
    assert (v.prefill, v.decodes, v.free_blocks, v.total_blocks) == ([], 0, 1000, 1000)
    # unknown queued work: mean-sized (512 when the gateway knows none) prompts, arriving now
    b.scraped_waiting = 3
    v = b.view(5.0).load
    assert [(p[0], p[3]) for p in v.prefill] == [(512, 5.0)] * 3
    # own work: two prefills (100 and 300 tokens) and one decode; the scrape says 5 waiting
    b.inflight = {1: _req(1, 100), 2: _req(2, 300), 3: _req(3, 64, generated=16)}
    b.scraped_waiting = 5
    v = b.view(5.0).load
    assert sorted(p[0] for p in v.prefill) == [100, 200, 200, 200, 300]  # 3 padded at the mean
    assert (v.decodes, v.decode_context) == (1, 80)
    own = m.blocks_for(101) + m.blocks_for(301) + m.blocks_for(80)
    assert v.free_blocks == 1000 - own
    # fewer waiting than the gateway's own prefills: nothing padded, nothing removed
    b.scraped_waiting = 1
    assert len(b.view(5.0).load.prefill) == 2
    # the scrape says the cache is fuller than the gateway's record: trust the scrape
    b.scraped_kv_usage = 0.9
    assert b.view(5.0).load.free_blocks == 100
    # ...but never emptier than the gateway's own record
    b.scraped_kv_usage = own / 1000 / 4
    assert b.view(5.0).load.free_blocks == 1000 - own
    # padding makes the prediction later, monotonically
    r = _req(9, SMALL)
    b.inflight = {}
    preds = []
    for n in (0, 10, 40):
        b.scraped_waiting = n
        preds.append(predicted_ttft(b.view(0.0), r.prompt_len))
    assert preds == sorted(preds) and preds[0] < preds[1] < preds[2]


def test_scraped_queue_holds_requests_until_the_backend_reports_it_drained() -> None:
    async def go():
        stub, clock = Stub(), FakeClock()
        stub.metrics = 'vllm:num_requests_waiting{model_name="m"} 40\n'  # others' work
        gw, c = await gateway([await stub.start()], clock)
        try:
            await until(lambda: gw.backends[0].scraped_waiting == 40, "scrape applied")
            b = post(c, SMALL, FAST)
            await until(lambda: gw._queued["fast"] == 1 or b.done(), "B queued")
            assert not b.done() and not stub.started(SMALL)
            stub.metrics = 'vllm:num_requests_waiting{model_name="m"} 0\n'  # drained
            rb = await asyncio.wait_for(b, timeout=60)  # the clock is frozen: only the scrape
            assert rb.status == 200 and gw.backends[0].scraped_waiting == 0
            assert gw._queued["fast"] == 0
        finally:
            stub.release()
            await c.close()
            await stub.server.close()
    asyncio.run(go())


# ---------------------------------------------------------------------------- limits
def test_token_bucket_with_explicit_times() -> None:
    b = TokenBucket(rate=2.0, burst=2.0, now=10.0)
    assert b.take(1, 10.0) == 0 and b.take(1, 10.0) == 0  # the burst
    assert b.take(1, 10.0) == pytest.approx(0.5)  # empty: one token in 0.5 s
    assert b.take(1, 10.25) == pytest.approx(0.25)  # half refilled; a refusal takes nothing
    assert b.take(1, 10.5) == 0  # exactly refilled
    assert b.take(1, 10.5) == pytest.approx(0.5)
    assert b.take(2, 100.0) == 0  # a long idle refills to the burst, no further
    assert b.take(1, 100.0) == pytest.approx(0.5)
    # more than the burst at once: allowed only when full, then the bucket owes the excess
    c = TokenBucket(rate=10.0, burst=10.0, now=0.0)
    assert c.take(4, 0.0) == 0
    assert c.take(25, 0.0) == pytest.approx(0.4)  # 6 of 10: full in 0.4 s
    assert c.take(25, 0.4) == 0  # full: goes through, level -15
    assert c.take(1, 0.4) == pytest.approx(1.6)  # 16 tokens short at 10/s
    assert c.take(1, 2.5) == 0
    d = TokenBucket(rate=0.5)  # default burst: at least one request
    assert d.burst == 1.0 and d.take(1, d.t) == 0 and d.take(1, d.t) == pytest.approx(2.0)


def test_tokens_per_second_limit_counts_prompt_plus_max_tokens() -> None:
    async def go():
        stub, clock = Stub(), FakeClock()
        gw, c = await gateway([await stub.start()], clock, tenants=[
            {"name": "f", "api_keys": ["k-fast"], "class": "fast", "max_tokens_per_s": 100},
            {"name": "r", "api_keys": ["k-relaxed"], "class": "relaxed"}])

        async def send(headers=FAST):
            return await c.post("/v1/completions", headers=headers, json={
                "model": MODEL, "prompt": [1] * 40, "max_tokens": 10})  # 50 tokens

        try:
            assert [(await send()).status for _ in range(2)] == [200, 200]  # 100-token burst
            r = await send()
            d = await r.json()
            assert r.status == 429 and d["error"]["code"] == "rate_limited"
            assert "tokens/s" in d["error"]["message"] and r.headers["Retry-After"] == "1"
            assert (await send(RELAXED)).status == 200  # another tenant: its own limits
            clock.advance(0.25)  # 25 tokens back, 50 needed
            assert (await send()).status == 429
            clock.advance(0.25)  # 50 back (refusals took nothing)
            assert (await send()).status == 200
            assert (await send()).status == 429
            assert len([x for x in stub.log if x[0] == "start"]) == 4  # refused never forwarded
            assert await metric(
                c, 'proserve_requests_total{class="fast",code="429",model="m",tenant="f"}') == 3.0
        finally:
            stub.release()
            await c.close()
            await stub.server.close()
    asyncio.run(go())


# ---------------------------------------------------------------------------- 4xx pass-through
@pytest.mark.parametrize("stream", [False, True])
def test_backend_4xx_is_passed_through_unchanged_and_not_retried(stream: bool) -> None:
    async def go():
        stubs, clock = [Stub(), Stub()], FakeClock()
        refusal = json.dumps({"error": {"message": "engine says no", "type": "BadRequestError",
                                        "param": "prompt", "code": "engine_refused"}}).encode()
        stubs[0].reply = stubs[1].reply = (422, refusal, "application/json")
        gw, c = await gateway([await s.start() for s in stubs], clock, router="round-robin")
        try:
            r = await c.post("/v1/completions", headers=FAST, json={
                "model": MODEL, "prompt": [1] * SMALL, "max_tokens": 1, "stream": stream})
            assert r.status == 422 and await r.read() == refusal
            assert r.content_type == "application/json"
            stubs[0].reply = stubs[1].reply = (400, b"plain refusal", "text/plain")
            r = await c.post("/v1/completions", headers=FAST, json={
                "model": MODEL, "prompt": [1] * SMALL, "max_tokens": 1, "stream": stream})
            assert r.status == 400 and await r.read() == b"plain refusal"
            assert r.content_type == "text/plain"
            # one forward per request: a refusal is the engine's answer, not a failure
            assert sum(len(s.log) for s in stubs) == 2
            assert all(b.healthy and b.failures == 0 and not b.inflight for b in gw.backends)
            assert await metric(c, "proserve_retries_total") == 0.0
            assert await metric(
                c, 'proserve_requests_total{class="fast",code="422",model="m",tenant="f"}') == 1.0
            assert await metric(
                c, 'proserve_requests_total{class="fast",code="400",model="m",tenant="f"}') == 1.0
        finally:
            await c.close()
            for s in stubs:
                await s.server.close()
    asyncio.run(go())

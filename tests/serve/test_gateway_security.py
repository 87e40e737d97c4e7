"""Issue 9: a tenant cannot raise its own priority through any scheduling field it sends.

Every client-supplied scheduling field goes through a real gateway to a recording backend of each
kind (vllm, sglang, proserve); what arrives must carry the tenant's own class, weight and SLOs.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proserve.core.classes import parse_classes
from proserve.core.sched_fields import (
    SCHED_XARGS,
    FieldLimits,
    resolve_fields,
    scrub_client_fields,
)
from proserve.latency.profiles import load_profile
from proserve.serve.gateway import Gateway
from proserve.serve.gateway_config import GatewayConfig

MODEL = "m"
CLASSES = "top:w=8,ttft=200ms,tpot=20ms;mid:w=2;low:w=1,ttft=20s,tpot=500ms"
LOW = {"Authorization": "Bearer k-low"}
MID = {"Authorization": "Bearer k-mid"}

# Everything a client could send to raise its priority, alone and together.
ATTACKS: list[dict] = [
    {"priority": -100},
    {"priority": 0},
    {"vllm_xargs": {"class": "top"}},
    {"vllm_xargs": {"weight": 1000}},
    {"vllm_xargs": {"ttft_slo_ms": 1, "tpot_slo_ms": 1}},
    {"vllm_xargs": {"Class": "top", "WEIGHT": 1000, " ttft_slo_ms": 1}},  # other spellings
    {"priority": 0, "vllm_xargs": {"class": "top", "weight": 1000, "ttft_slo_ms": 1,
                                   "tpot_slo_ms": 1}},
    {"priority_class": "low", "vllm_xargs": {"class": "top", "weight": 1000}},
]


async def recording_backend(seen: list[dict]) -> TestServer:
    """An OpenAI-ish backend that records each request body and answers one token."""

    async def complete(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            return resp
        return web.json_response({"choices": [{"index": 0, "text": "x"}],
                                  "usage": {"completion_tokens": 1}})

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_get("/health", ok)
    app.router.add_get("/metrics", ok)
    s = TestServer(app)
    await s.start_server()
    return s


async def gateway(url: str, kind: str) -> tuple[Gateway, TestClient]:
    gw = Gateway(GatewayConfig.model_validate({
        "model": MODEL, "classes": CLASSES,
        "backends": [{"url": url, "kind": kind}],
        "class_settings": {c: {"queue_timeout_s": 0} for c in ("top", "mid", "low")},
        "tenants": [{"name": "cheap", "api_keys": ["k-low"], "class": "low"},
                    {"name": "mid", "api_keys": ["k-mid"], "class": "mid"}]}))
    c = TestClient(TestServer(gw.app()))
    await c.start_server()
    return gw, c


def expected(gw: Gateway, cls: str, prompt_len: int, n_out: int) -> dict:
    c = gw.by_name[cls]
    m = gw.backends[0].model
    return {"class": cls, "weight": c.weight,
            "ttft_slo_ms": pytest.approx(c.ttft.resolve(m.unloaded_ttft(prompt_len)) * 1000),
            "tpot_slo_ms": pytest.approx(
                c.tpot.resolve(m.unloaded_tpot(prompt_len + n_out // 2)) * 1000)}


@pytest.mark.parametrize("kind", ["vllm", "sglang", "proserve"])
@pytest.mark.parametrize("stream", [False, True])
def test_client_scheduling_fields_never_reach_the_engine(kind: str, stream: bool) -> None:
    async def go():
        seen: list[dict] = []
        backend = await recording_backend(seen)
        gw, c = await gateway(str(backend.make_url("")).rstrip("/"), kind)
        prompt = list(range(40))
        try:
            for attack in ATTACKS:
                for path, base in (("/v1/completions", {"prompt": prompt}),
                                   ("/v1/chat/completions",
                                    {"messages": [{"role": "user", "content": "hi " * 20}]})):
                    body = {"model": MODEL, "max_tokens": 4, "stream": stream, **base, **attack}
                    r = await c.post(path, json=body, headers=LOW)
                    assert r.status == 200, (attack, await r.text())
                    await r.read()
                    got = seen.pop()
                    assert "priority_class" not in got
                    if kind == "sglang":  # higher = more urgent: low is the bottom of 3
                        assert got["priority"] == 0, (attack, got)
                        xargs = got.get("vllm_xargs") or {}
                        assert not {k.strip().lower() for k in xargs} & set(SCHED_XARGS)
                        continue
                    assert got["priority"] == 2, (attack, got)  # low's rank: lower = urgent
                    xargs = got["vllm_xargs"]
                    # exactly the gateway's fields: no other spelling of ours survives
                    assert {k.strip().lower() for k in xargs} == set(SCHED_XARGS), xargs
                    # the low class's own values (its SLOs are absolute: 20 s, 500 ms)
                    assert xargs == expected(gw, "low", len(prompt), 4), (attack, xargs)
            # other vllm_xargs keys are the client's business and pass through
            r = await c.post("/v1/completions", headers=LOW, json={
                "model": MODEL, "prompt": prompt, "max_tokens": 4, "stream": stream,
                "vllm_xargs": {"trace_id": "abc", "class": "top"}})
            assert r.status == 200
            await r.read()
            got = seen.pop()
            if kind != "sglang":
                assert got["vllm_xargs"]["trace_id"] == "abc"
                assert got["vllm_xargs"]["class"] == "low"
            # asking for a lower class is honoured; the fields follow it
            r = await c.post("/v1/completions", headers={**MID, "x-priority-class": "low"},
                             json={"model": MODEL, "prompt": prompt, "max_tokens": 4,
                                   "vllm_xargs": {"class": "top"}, "priority": 0})
            assert r.status == 200
            await r.read()
            got = seen.pop()
            assert got["priority"] == (0 if kind == "sglang" else 2)
            if kind != "sglang":
                assert got["vllm_xargs"] == expected(gw, "low", len(prompt), 4)
            # and a higher one is refused before anything is forwarded
            r = await c.post("/v1/completions", headers={**LOW, "x-priority-class": "top"},
                             json={"model": MODEL, "prompt": prompt, "max_tokens": 4})
            assert r.status == 403 and not seen
        finally:
            await c.close()
            await backend.close()
    asyncio.run(go())


def test_low_tenant_with_top_class_xargs_reaches_vllm_as_low() -> None:
    """The issue's acceptance case, verbatim."""
    async def go():
        seen: list[dict] = []
        backend = await recording_backend(seen)
        gw, c = await gateway(str(backend.make_url("")).rstrip("/"), "vllm")
        try:
            r = await c.post("/v1/completions", headers=LOW, json={
                "model": MODEL, "prompt": "hello", "max_tokens": 4,
                "vllm_xargs": {"class": "top", "weight": 1000, "ttft_slo_ms": 1,
                               "tpot_slo_ms": 1}})
            assert r.status == 200
            (got,) = seen
            assert got["priority"] == 2
            assert got["vllm_xargs"]["class"] == "low" and got["vllm_xargs"]["weight"] == 1.0
            assert got["vllm_xargs"]["ttft_slo_ms"] == pytest.approx(20000.0)
            assert got["vllm_xargs"]["tpot_slo_ms"] == pytest.approx(500.0)
        finally:
            await c.close()
            await backend.close()
    asyncio.run(go())


def test_scrub_drops_every_spelling_and_keeps_the_rest() -> None:
    raw = {"model": "m", "priority": 0, "priority_class": "x",
           "vllm_xargs": {"CLASS": "a", "Weight": 3, "tpot_slo_ms ": 1, "keep": [1]}}
    assert scrub_client_fields(raw) == {"model": "m", "vllm_xargs": {"keep": [1]}}
    assert scrub_client_fields({"vllm_xargs": {"class": "a"}}) == {}
    assert scrub_client_fields({"vllm_xargs": "junk"}) == {}
    assert raw["vllm_xargs"]["CLASS"] == "a"  # the input is not mutated


def test_engines_refuse_fields_outside_their_limits() -> None:
    classes = parse_classes("top:w=4,ttft=300ms,tpot=30ms;low:w=1,ttft=5s,tpot=200ms")
    m = load_profile("llama3.1-8b@h100")
    ut, up = m.unloaded_ttft(100), m.unloaded_tpot(110)
    lim = FieldLimits()

    def res(prio, x, limits=lim):
        return resolve_fields(classes, prio, x, limits, ut, up)

    ok = res(1, {"class": "low", "weight": 2, "ttft_slo_ms": 400, "tpot_slo_ms": 100})
    assert not ok.problems and (ok.label, ok.weight, ok.ttft_slo, ok.tpot_slo) == (
        "low", 2.0, 0.4, 0.1)
    bad = res(1, {"class": "vip", "weight": 1000, "ttft_slo_ms": 1, "tpot_slo_ms": 29})
    assert [p for p, _ in bad.problems] == ["vllm_xargs.class", "vllm_xargs.weight",
                                            "vllm_xargs.ttft_slo_ms", "vllm_xargs.tpot_slo_ms"]
    # every refused field falls back to the class's (priority 1 = low) default
    assert (bad.label, bad.weight, bad.ttft_slo, bad.tpot_slo) == ("low", 1.0, 5.0, 0.2)
    assert res(7, None).label == "low" and res(-3, None).label == "top"  # clamped ranks
    # explicit limits replace the class-derived ones
    tight = FieldLimits.parse("weight=1:2,ttft_slo_ms=1000:,tpot_slo_ms=:150")
    r = res(0, {"weight": 3, "ttft_slo_ms": 500, "tpot_slo_ms": 200}, tight)
    assert len(r.problems) == 3
    assert FieldLimits.parse({"weight": [1, 2]}).weight == (1.0, 2.0)
    for spec in ("weight=3:1", "speed=1:2", "weight=1", "weight=a:b", "weight=-1:2"):
        with pytest.raises(ValueError):
            FieldLimits.parse(spec)

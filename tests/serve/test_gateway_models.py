"""Several models behind one gateway: routing by the body's ``model`` (names and aliases), 404 for
an unknown model, a tenant's ``models`` allow-list (403), ``/v1/models`` per key, the ``model``
label on every metric, each model's own router, classes, context length, backends and (polyserve)
fleet, SIGHUP per model, and config errors that name the path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from tests.serve.helpers import record_submits

from proserve.serve.emulator import EmulatedEngine, EmulatorConfig
from proserve.serve.gateway import WORKER_HEADER, Gateway
from proserve.serve.gateway_config import GatewayConfig, load_gateway_config

CLASSES = "gold:w=4;bronze:w=1"
QWEN_CLASSES = "gold:w=8;bronze:w=2"  # same names, the model's own weights
ALL = {"Authorization": "Bearer k-all"}
LLAMA_ONLY = {"Authorization": "Bearer k-llama"}


async def engines(name: str, n: int, classes: str) -> tuple[list[EmulatedEngine], list[str],
                                                             list[TestServer]]:
    es = [EmulatedEngine(EmulatorConfig(model_name=name, classes=classes, time_scale=0.02), i)
          for i in range(n)]
    servers = []
    for e in es:
        s = TestServer(e.app())
        await s.start_server()
        servers.append(s)
    return es, [str(s.make_url("")).rstrip("/") for s in servers], servers


def config(llama: list[str], qwen: list[str], **over) -> dict:
    return {
        "classes": CLASSES,
        "models": [
            {"name": "llama-8b", "aliases": ["llama"], "router": "round-robin",
             "backends": [{"url": u} for u in llama]},
            {"name": "qwen-7b", "classes": QWEN_CLASSES, "max_model_len": 100,
             "backends": [{"url": u} for u in qwen]},
        ],
        "tenants": [
            {"name": "all", "api_keys": ["k-all"], "class": "gold"},
            {"name": "llama-only", "api_keys": ["k-llama"], "class": "bronze",
             "models": ["llama"]},  # an alias in the allow-list: the model it names
        ],
        "health": {"interval_s": 0.05, "timeout_s": 5.0, "failures_to_eject": 3},
        "scrape_interval_s": 0.05,
        **over,
    }


async def gateway(doc: dict) -> tuple[Gateway, TestClient]:
    gw = Gateway(GatewayConfig.model_validate(doc))
    c = TestClient(TestServer(gw.app(), handler_cancellation=True))
    await c.start_server()
    return gw, c


def body(model: str, n: int = 4, **kw) -> dict:
    return {"model": model, "prompt": [1] * n, "max_tokens": 2, **kw}


def test_requests_route_by_model_and_alias_to_that_models_backends() -> None:
    async def go():
        le, lu, ls = await engines("llama-8b", 2, CLASSES)
        qe, qu, qs = await engines("qwen-7b", 1, QWEN_CLASSES)
        lsub = [record_submits(e) for e in le]
        qsub = record_submits(qe[0])
        gw, c = await gateway(config(lu, qu))
        try:
            for i, m in enumerate(["llama-8b", "llama", "llama-8b", "llama"]):
                r = await c.post("/v1/completions", json=body(m, 10 + i, stream=i % 2 == 0),
                                 headers=ALL)
                assert r.status == 200, await r.text()  # the engine 404s any other model id
                assert r.headers[WORKER_HEADER] == "0"
            r = await c.post("/v1/chat/completions", headers=ALL, json={
                "model": "qwen-7b", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2})
            assert r.status == 200 and (await r.json())["model"] == "qwen-7b"
            # llama's round-robin over its own two backends; qwen's request on its own
            assert [x.prompt_len for x in lsub[0]] == [10, 12]
            assert [x.prompt_len for x in lsub[1]] == [11, 13]
            assert len(qsub) == 1
            # each model's classes: gold weighs 4 on llama, 8 on qwen
            assert {x.weight for x in lsub[0] + lsub[1]} == {4.0} and qsub[0].weight == 8.0
            assert type(gw.pools["qwen-7b"].router) is not type(gw.pools["llama-8b"].router)
            # the model's own context length
            r = await c.post("/v1/completions", json=body("qwen-7b", 150), headers=ALL)
            assert r.status == 400 and "maximum context length is 100" in (
                await r.json())["error"]["message"]
            r = await c.post("/v1/completions", json=body("llama-8b", 150), headers=ALL)
            assert r.status == 200
            health = await (await c.get("/health")).json()
            assert health == {"healthy_backends": 3, "backends": 3, "models": {
                "llama-8b": {"healthy_backends": 2, "backends": 2},
                "qwen-7b": {"healthy_backends": 1, "backends": 1}}}
        finally:
            await c.close()
            for s in ls + qs:
                await s.close()
    asyncio.run(go())


def test_unknown_model_404_allow_list_403_and_v1_models_per_key() -> None:
    async def go():
        _, lu, ls = await engines("llama-8b", 1, CLASSES)
        qe, qu, qs = await engines("qwen-7b", 1, QWEN_CLASSES)
        qsub = record_submits(qe[0])
        gw, c = await gateway(config(lu, qu))
        try:
            r = await c.post("/v1/completions", json=body("gpt-5"), headers=ALL)
            d = await r.json()
            assert r.status == 404 and d["error"]["code"] == "model_not_found"
            assert d["error"]["param"] == "model" and d["error"]["type"] == "not_found_error"
            assert "`llama-8b`" in d["error"]["message"] and "`qwen-7b`" in d["error"]["message"]
            # the error lists only what the caller may use
            r = await c.post("/v1/completions", json=body("gpt-5"), headers=LLAMA_ONLY)
            d = await r.json()
            assert r.status == 404 and "qwen" not in d["error"]["message"]
            r = await c.post("/v1/completions", json=body("qwen-7b"), headers=LLAMA_ONLY)
            d = await r.json()
            assert r.status == 403 and d["error"]["code"] == "model_not_allowed"
            assert d["error"]["type"] == "permission_error" and qsub == []  # never forwarded
            for m in ("llama-8b", "llama"):
                r = await c.post("/v1/completions", json=body(m), headers=LLAMA_ONLY)
                assert r.status == 200
            # /v1/models: what the key may use; no key, no list
            d = await (await c.get("/v1/models", headers=ALL)).json()
            assert [(m["id"], m.get("aliases"), m["max_model_len"]) for m in d["data"]] == [
                ("llama-8b", ["llama"], 8192), ("qwen-7b", None, 100)]
            d = await (await c.get("/v1/models", headers=LLAMA_ONLY)).json()
            assert [m["id"] for m in d["data"]] == ["llama-8b"]
            r = await c.get("/v1/models")
            assert r.status == 401
            r = await c.get("/v1/models", headers={"Authorization": "Bearer nope"})
            assert r.status == 401
            # every request counted with its model (an unknown one as "")
            text = await (await c.get("/metrics")).text()
            for line in (
                    'proserve_requests_total{class="gold",code="404",model="",tenant="all"} 1.0',
                    'proserve_requests_total{class="bronze",code="403",model="qwen-7b",'
                    'tenant="llama-only"} 1.0',
                    'proserve_requests_total{class="bronze",code="200",model="llama-8b",'
                    'tenant="llama-only"} 2.0',
                    'proserve_ttft_seconds_count{class="bronze",model="llama-8b",'
                    'tenant="llama-only"} 2.0',
                    f'proserve_backend_healthy{{backend="{qu[0]}",model="qwen-7b"}} 1.0',
                    f'proserve_backend_inflight{{backend="{lu[0]}",model="llama-8b"}} 0.0',
                    'proserve_queue_depth{class="gold",model="qwen-7b"} 0.0'):
                assert line in text, line
            # every proserve_ sample carries a model label, except the limit store's own
            for line in text.splitlines():
                if line.startswith("proserve_") and not line.startswith("proserve_limit_store"):
                    assert 'model="' in line, line
        finally:
            await c.close()
            for s in ls + qs:
                await s.close()
    asyncio.run(go())


def test_each_model_has_its_own_router_and_polyserve_fleet() -> None:
    tight = "gold:w=4,ttft=10s,tpot=5ms;bronze:w=1,ttft=10s,tpot=1s"

    async def go():
        _, au, as_ = await engines("a", 2, tight)
        _, bu, bs = await engines("b", 1, CLASSES)
        doc = config([], [], classes=tight, models=[
            {"name": "a", "router": "polyserve",
             "router_args": {"check_period_s": 60.0}, "backends": [{"url": u} for u in au]},
            {"name": "b", "router": "go", "classes": "gold:w=4;bronze:w=1",
             "backends": [{"url": u} for u in bu]}],
            tenants=[{"name": "all", "api_keys": ["k-all"], "class": "gold"}])
        gw, c = await gateway(doc)
        try:
            assert gw.pools["a"].fleet is not None and gw.pools["b"].fleet is None
            assert gw.pools["a"].fleet.fleet.pool == [0, 1]  # a's own two backends
            for m in ("a", "b", "a"):
                r = await c.post("/v1/completions", json=body(m), headers=ALL)
                assert r.status == 200, await r.text()
            text = await (await c.get("/metrics")).text()
            tiers = [x for x in text.splitlines() if x.startswith("proserve_tier_instances{")]
            assert tiers and all('model="a"' in x for x in tiers)
            assert 'proserve_pool_instances{model="a"}' in text
            assert 'model="b"' not in "".join(
                x for x in text.splitlines() if x.startswith(("proserve_tier", "proserve_pool")))
        finally:
            await c.close()
            for s in as_ + bs:
                await s.close()
    asyncio.run(go())


def test_sighup_reload_applies_each_models_backend_list(tmp_path: Path) -> None:
    async def go():
        _, lu, ls = await engines("llama-8b", 2, CLASSES)
        _, qu, qs = await engines("qwen-7b", 1, QWEN_CLASSES)
        doc = config(lu[:1], qu)
        gw, c = await gateway(doc)
        p = tmp_path / "gw.json"
        try:
            doc["models"][0]["backends"] = [{"url": u} for u in lu]  # llama gets a second
            doc["models"].append({"name": "new-model", "backends": [{"url": qu[0]}]})
            p.write_text(json.dumps(doc))
            assert gw.reload(p) == {"added": [lu[1]], "removed": [], "updated": []}
            assert [b.url for b in gw.pools["llama-8b"].backends] == lu
            assert [b.url for b in gw.pools["qwen-7b"].backends] == qu
            assert "new-model" not in gw.pools  # a new model needs a restart
            for i in range(2):
                r = await c.post("/v1/completions", json=body("llama", 10 + i), headers=ALL)
                assert r.status == 200
        finally:
            await c.close()
            for s in ls + qs:
                await s.close()
    asyncio.run(go())


def test_single_model_files_are_one_model() -> None:
    cfg = GatewayConfig.model_validate({
        "model": "m", "router": "round-robin", "backends": [{"url": "http://127.0.0.1:1"}],
        "tenants": [{"name": "a", "api_keys": ["k"], "class": "high"}]})
    (spec,) = cfg.model_specs()
    assert (spec.name, spec.aliases, spec.router, spec.max_model_len) == (
        "m", [], "round-robin", 8192)
    assert [b.url for b in spec.backends] == ["http://127.0.0.1:1"]


def test_config_errors_name_the_path(tmp_path: Path) -> None:
    base = config(["http://127.0.0.1:1"], ["http://127.0.0.1:2"])
    p = tmp_path / "gw.yaml"

    def models(**m1) -> list[dict]:
        return [base["models"][0], {**base["models"][1], **m1}]

    for over, words in [
        ({"models": models(backends=[{"url": "ftp://x"}])}, ["models.1.backends.0.url"]),
        ({"models": models(backends=[])}, ["models.1.backends"]),
        ({"models": models(aliases=["llama"])},
         ["models.1.aliases.0", "'llama' already names model 'llama-8b'"]),
        ({"models": models(name="llama-8b")}, ["models.1.name", "already names"]),
        ({"models": models(classes="bronze:w=1;gold:w=4")},
         ["models.1.classes", "gold, bronze", "in that order"]),
        ({"models": models(router="nope")}, ["models.1.router", "unknown router"]),
        ({"models": models(router="polyserve")}, ["models.1.classes", "relative TPOT"]),
        ({"models": models(class_settings={"vip": {}})}, ["models.1.class_settings", "'vip'"]),
        ({"models": models(bogus=1)}, ["models.1.bogus"]),
        ({"tenants": [{"name": "x", "api_keys": ["k"], "class": "gold",
                       "models": ["llama", "gpt-5"]}]},
         ["tenants.0.models.1", "unknown model 'gpt-5'"]),
        ({"backends": [{"url": "http://127.0.0.1:3"}]}, ["backends", "not both"]),
        ({"model": "m"}, ["model", "not both"]),
        ({"models": []}, ["models"]),
    ]:
        p.write_text(json.dumps({**base, **over}))
        with pytest.raises(ValueError) as e:
            load_gateway_config(p)
        for w in words:
            assert w in str(e.value), (over, str(e.value))
        assert str(p) in str(e.value)
    p.write_text(json.dumps({k: v for k, v in base.items() if k != "models"}))
    with pytest.raises(ValueError, match="backends: Field required"):
        load_gateway_config(p)
    p.write_text(json.dumps(base))
    cfg = load_gateway_config(p)
    assert [s.name for s in cfg.model_specs()] == ["llama-8b", "qwen-7b"]
    assert cfg.tenant_models(cfg.tenants[1]) == {"llama-8b"}


def test_the_docs_example_config_is_valid() -> None:
    import re

    import yaml

    text = (Path(__file__).parents[2] / "docs" / "GATEWAY.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    cfg = GatewayConfig.model_validate(yaml.safe_load(block))
    specs = cfg.model_specs()
    assert [(s.name, s.router, len(s.backends)) for s in specs] == [
        ("llama-8b", "go", 2), ("qwen3-32b", "polyserve", 2)]
    assert cfg.tenant_models(cfg.tenants[1]) == {"llama-8b"} and cfg.workers == 2
    assert cfg.limits.backend == "redis" and cfg.limits.on_error == "open"
    gw = Gateway(cfg)  # builds: profiles, routers, polyserve tiers from the model's classes
    assert [t.tpot for t in gw.pools["qwen3-32b"].fleet.tiers] == [0.08, 0.4]

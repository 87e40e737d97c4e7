"""Bad input at scale: property-based fuzzing of every gateway endpoint (hypothesis).

What is fuzzed, against one gateway in front of two healthy emulated engines per example:

* arbitrary JSON values as whole bodies of POST /v1/completions and /v1/chat/completions;
* "nearly valid" bodies: a valid completion or chat body with one field (``model``, ``prompt``,
  ``messages``, ``max_tokens``, ``stream``, ``temperature``, ``priority``, ``priority_class``,
  ``vllm_xargs``, ``stream_options``, ``n``, ``stop``, ...) removed or replaced by a random JSON
  value or a plausible one;
* raw bytes: random bytes, invalid UTF-8 inside a valid body, truncated JSON, deep nesting;
* headers: ``Authorization`` (missing, empty, wrong scheme, unknown key, huge), ``Content-Type``,
  ``x-priority-class``; every route and a few methods/paths that are not routes (GET
  /v1/models, /metrics and /health too);
* ``Content-Encoding`` (gzip, deflate) with the body encoded as said, or not;
* ``Content-Length`` that does not match the body (raw sockets: shorter, longer, then EOF);
* stream cut-offs: valid requests (streaming or not) whose client reads a random number of bytes
  or lines and then closes the connection, or gives up before the response headers.

What is asserted, for every request:

* the status is below 500 (the backends are healthy, so no 502/503/504 is legitimate either);
* an error from a gateway route is OpenAI-style JSON ``{"error": {"message": str, "type": str}}``;
  a 200 stream ends with ``data: [DONE]`` and carries no error event;
* the response arrives within :data:`TIMEOUT` seconds (no hang);

and after all of an example's requests: no backend's ``inflight`` record, no tenant
concurrency slot, no admission-queue count and no emulated engine request is left over (aborted
requests are freed); a long request whose client hung up was aborted on the engine, not run to
its end.

Gateway bugs this fuzzing found, each fixed and kept as a regression test at the end of this
file: a JSON list or object as the body's ``priority_class`` (a 500: unhashable); a body that is
not the gzip/deflate its ``Content-Encoding`` says (a 500: aiohttp's ``RequestPayloadError``
escaped); a client hanging up mid-stream counted as a failure of the backend (two hang-ups ejected
a healthy backend, 503 after).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import zlib
from collections.abc import Awaitable
from typing import Any

from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tests.serve.helpers import record_submits, sse
from tests.serve.test_gateway import BRONZE, GOLD, MODEL, emulators, gateway_for, url

from proserve.serve.emulator import EmulatedEngine
from proserve.serve.gateway import Gateway

TIMEOUT = 10.0  # seconds any one request may take before it counts as a hang
SETTLE_S = 5.0  # seconds the gateway and engines get to free everything after the last request
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
POSTS = (COMPLETIONS, CHAT)
GETS = ("/v1/models", "/metrics", "/health")
ROUTES = {("POST", p) for p in POSTS} | {("GET", p) for p in GETS}
CLASS_NAMES = ("gold", "silver", "bronze", "scrap")
TENANTS = [
    {"name": "acme", "api_keys": ["k-gold"], "class": "gold", "max_concurrency": 64},
    {"name": "cheap", "api_keys": ["k-bronze"], "class": "bronze", "max_concurrency": 3,
     "max_rps": 50},
    {"name": "junk", "api_keys": ["k-scrap"], "class": "scrap", "max_concurrency": 8},
    {"name": "walled", "api_keys": ["k-walled"], "class": "silver", "models": [],
     "max_concurrency": 8},
]
KEYS = ("k-gold", "k-bronze", "k-gold", "k-scrap", "k-walled")  # (tenants' keys, gold twice)
FIELDS = ("temperature", "prompt", "messages", "max_tokens", "max_completion_tokens", "stream",
          "model", "priority", "priority_class", "vllm_xargs", "stream_options", "n", "stop")
# No shrinking: every assertion names the failing request itself, and shrinking lists of
# requests that each need a live gateway takes minutes.
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=20,
                phases=(Phase.explicit, Phase.generate),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])

Case = dict[str, Any]  # method, path, body (bytes), headers; optional "cut" for cut-offs


# ---------------------------------------------------------------------------- strategies
json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text(max_size=24) | st.sampled_from(["", "gold", MODEL, "user", "[DONE]"]))
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), kids, max_size=4),
    max_leaves=12)
json_objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values,
                               max_size=6)
prompts = (st.text(min_size=1, max_size=80)
           | st.lists(st.integers(0, 50_000), min_size=1, max_size=24)
           | st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=1))
contents = st.none() | st.text(max_size=80) | st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40)}), max_size=3)
messages = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant", "tool", "developer"]),
    "content": contents}), min_size=1, max_size=4)
# a plausible (often valid) value per field: keeps many mutated bodies on the 200 path
plausible: dict[str, st.SearchStrategy] = {
    "model": st.sampled_from([MODEL, MODEL.upper(), "other", ""]),
    "prompt": prompts,
    "messages": messages,
    "max_tokens": st.integers(-2, 10) | st.sampled_from([None, 2.0, 2.5, "3", 10**6, 10**30]),
    "max_completion_tokens": st.integers(-1, 8) | st.none(),
    "stream": st.booleans() | st.sampled_from([None, 0, 1, "true", "yes"]),
    "temperature": st.floats() | st.none(),
    "priority": st.integers() | st.sampled_from([-1, 0, 3, 10**20, "0"]),
    "priority_class": st.sampled_from([*CLASS_NAMES, "GOLD", "platinum", "", None, 0, 1.5,
                                       ["bronze"], {"name": "bronze"}]),
    "vllm_xargs": st.dictionaries(
        st.sampled_from(["class", "weight", "ttft_slo_ms", "tpot_slo_ms", "CLASS", " Weight ",
                         "x"]),
        st.sampled_from(["gold", "nope", 100, 0.001, -1, [1, "a"], float("inf")]),
        max_size=4) | st.none(),
    "stream_options": st.fixed_dictionaries(
        {}, optional={"include_usage": st.booleans(), "x": json_scalars}) | st.none(),
    "n": st.sampled_from([1, 2, 0, None]),
    "stop": st.none() | st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=3),
}


@st.composite
def valid_bodies(draw: st.DrawFn, stream: bool | None = None) -> tuple[str, dict[str, Any]]:
    """A valid completion or chat body (max_tokens <= 8)."""
    path = draw(st.sampled_from(POSTS))
    body: dict[str, Any] = {"model": MODEL, "max_tokens": draw(st.integers(1, 8)),
                            "stream": draw(st.booleans()) if stream is None else stream}
    if path == COMPLETIONS:
        body["prompt"] = draw(prompts)
    else:
        body["messages"] = draw(messages)
    if body["stream"] and draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    return path, body


@st.composite
def headers(draw: st.DrawFn) -> dict[str, str]:
    """Authorization, Content-Type and x-priority-class, each possibly absent or odd."""
    h: dict[str, str] = {}
    printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
    key = st.sampled_from(KEYS)
    auth = draw(st.sampled_from(["key"] * 6 + ["none", "odd"]))
    if auth == "key":
        h["Authorization"] = "Bearer " + draw(key)
    elif auth == "odd":
        h["Authorization"] = draw(st.sampled_from([
            "", "Bearer", "Bearer ", "Bearer    ", "bearer k-gold", "Basic k-gold", "k-gold",
            "Bearer k-gold k-gold", "Bearer " + "x" * 4000, "Token k-bronze"])
            | printable | printable.map(lambda s: "Bearer " + s))
    # (hypothesis favours a list's first entries: the common case comes first)
    ctype = draw(st.sampled_from(["json", "json", "none", "odd"]))
    if ctype == "json":
        h["Content-Type"] = "application/json"
    elif ctype == "odd":
        h["Content-Type"] = draw(st.sampled_from([
            "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz", "garbage", ""]) | printable)
    prio = draw(st.sampled_from(["none", "none", "none", "class", "odd"]))
    if prio == "class":
        h["x-priority-class"] = draw(st.sampled_from(CLASS_NAMES))
    elif prio == "odd":
        h["x-priority-class"] = draw(st.sampled_from(["", "GOLD", "platinum", " gold"])
                                     | printable)
    return h


def dumps(v: Any) -> bytes:
    return json.dumps(v).encode()  # NaN/Infinity too: the gateway's parser must cope


@st.composite
def arbitrary_json_cases(draw: st.DrawFn) -> Case:
    path = draw(st.sampled_from(POSTS))
    body = draw(json_values | json_objects | json_objects.map(lambda d: {"model": MODEL, **d}))
    return {"method": "POST", "path": path, "body": dumps(body), "headers": draw(headers())}


@st.composite
def nearly_valid_cases(draw: st.DrawFn) -> Case:
    path, body = draw(valid_bodies())
    field = draw(st.sampled_from(FIELDS))
    how = draw(st.sampled_from(["plausible", "plausible", "random", "remove"]))
    if how == "remove":
        body.pop(field, None)
    else:
        body[field] = draw(json_values if how == "random" else plausible[field])
    if draw(st.booleans()):  # and sometimes one more field, kept plausible
        other = draw(st.sampled_from(FIELDS))
        body[other] = draw(plausible[other])
    return {"method": "POST", "path": path, "body": dumps(body), "headers": draw(headers())}


@st.composite
def raw_body_cases(draw: st.DrawFn) -> Case:
    path, body = draw(valid_bodies())
    good = dumps(body)
    kind = draw(st.sampled_from(["bytes", "bad_utf8", "truncated", "deep", "empty", "bom",
                                 "surrogate"]))
    if kind == "bytes":
        raw = draw(st.binary(max_size=96))
    elif kind == "bad_utf8":
        at = draw(st.integers(0, len(good)))
        raw = good[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00",
                                                b"\xf4\x90\x80\x80"])) + good[at:]
    elif kind == "truncated":
        raw = good[:draw(st.integers(0, max(len(good) - 1, 0)))]
    elif kind == "deep":
        n = draw(st.integers(1, 3000))
        raw = draw(st.sampled_from([b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n,
                                    b"[" * n]))
    elif kind == "empty":
        raw = b""
    elif kind == "bom":
        raw = b"\xef\xbb\xbf" + good
    else:  # a lone surrogate escape where a string goes
        raw = good.replace(b'"max_tokens"', b'"x": "\\ud800", "max_tokens"', 1)
    h = draw(headers())
    # Content-Encoding: a body the server must decode, encoded as said or not (br/zstd left
    # out: aiohttp's HTTP parser answers those itself, depending on optional packages)
    enc = draw(st.sampled_from(["none"] * 4 + ["gzip", "deflate", "identity", "x-unknown"]))
    if enc != "none":
        h["Content-Encoding"] = enc
        if enc in ("gzip", "deflate") and draw(st.booleans()):
            raw = gzip.compress(raw) if enc == "gzip" else zlib.compress(raw)
    return {"method": "POST", "path": path, "body": raw, "headers": h}


@st.composite
def endpoint_cases(draw: st.DrawFn) -> Case:
    """GET routes with odd headers, and methods/paths that are not routes."""
    if draw(st.booleans()):
        method, path = "GET", draw(st.sampled_from(GETS))
    else:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                                       "HEAD"]))
        path = draw(st.sampled_from([*POSTS, *GETS, "/", "/v1", "/v1/completions/x",
                                     "/v1/models?x=%ff", "/%2e%2e/etc", "/health/"]))
    body = draw(st.none() | json_values.map(dumps))
    return {"method": method, "path": path, "body": body, "headers": draw(headers())}


any_bad_case = (arbitrary_json_cases() | nearly_valid_cases() | raw_body_cases()
                | endpoint_cases())


# headers a tenant may send: its key, and its own class or a lower one
polite_headers = st.sampled_from([
    {"Authorization": "Bearer k-gold"}, {"Authorization": "Bearer k-gold"},
    {"Authorization": "Bearer k-gold", "x-priority-class": "silver"},
    {"Authorization": "Bearer k-bronze"},
    {"Authorization": "Bearer k-bronze", "x-priority-class": "bronze"},
]).map(lambda h: {**h, "Content-Type": "application/json"})


@st.composite
def cutoff_cases(draw: st.DrawFn) -> Case:
    path, body = draw(valid_bodies(stream=draw(st.sampled_from([True, True, True, False]))))
    cut = draw(st.sampled_from(["bytes", "lines", "cancel", "full"]))
    amount: float = draw({"bytes": st.integers(0, 400), "lines": st.integers(0, 8),
                          "cancel": st.floats(0, 0.03), "full": st.just(0)}[cut])
    return {"method": "POST", "path": path, "body": dumps(body),
            "headers": draw(polite_headers),
            "cut": (cut, amount)}


# ---------------------------------------------------------------------------- checks
def undecodable(case: Case) -> bool:
    """A body that is not the gzip/deflate its ``Content-Encoding`` says."""
    enc = case["headers"].get("Content-Encoding")
    if enc not in ("gzip", "deflate"):
        return False
    try:
        (gzip.decompress if enc == "gzip" else zlib.decompress)(case["body"] or b"")
    except (OSError, EOFError, zlib.error):
        return True
    return False


def check(case: Case, status: int, ctype: str, raw: bytes) -> None:
    """The per-response assertions of the module docstring."""
    post = case["method"] == "POST" and case["path"] in POSTS
    if post and undecodable(case) and not ctype.startswith("application/json"):
        # aiohttp's HTTP parser may refuse the body itself (a plain-text 400) before the
        # gateway reads it; else the gateway's JSON 400
        assert status == 400, (status, raw[:500], case)
        return
    assert status < 500, (status, raw[:500], case)
    if case["method"] == "HEAD" or (case["method"], case["path"]) not in ROUTES:
        return  # aiohttp's own 404/405 (plain text): only the status matters
    if status >= 400:
        d = json.loads(raw)
        assert isinstance(d, dict) and isinstance(d.get("error"), dict), (status, raw, case)
        err = d["error"]
        assert isinstance(err.get("message"), str) and isinstance(err.get("type"), str), d
        return
    if case["path"] not in POSTS:
        if case["path"] != "/metrics":
            json.loads(raw)
        return
    if ctype.startswith("text/event-stream"):
        chunks = sse(raw.decode())
        assert chunks and chunks[-1] == "[DONE]", (raw[-300:], case)
        assert not any(isinstance(c, dict) and "error" in c for c in chunks), (raw, case)
    else:
        d = json.loads(raw)
        assert d.get("choices"), (d, case)


async def within(aw: Awaitable, case: Case) -> Any:
    try:
        return await asyncio.wait_for(aw, TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError(f"no response within {TIMEOUT} s: {case}") from None


async def send(c: TestClient, case: Case) -> None:
    async def go() -> tuple[int, str, bytes]:
        async with c.request(case["method"], case["path"], data=case["body"],
                             headers=case["headers"]) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()

    check(case, *await within(go(), case))


def leftovers(gw: Gateway, engines: list[EmulatedEngine]) -> list[str]:
    """Everything still held after the last request ended (empty when all was freed)."""
    out = []
    for p in gw.pools.values():
        out += [f"backend {b.url} in flight: {sorted(b.inflight)}" for b in p.backends
                if b.inflight]
        out += [f"queued {cls}: {n}" for cls, n in p._queued.items() if n]
    slots = getattr(gw.limiter, "inflight", {})
    out += [f"tenant {t} holds {n} concurrency slot(s)" for t, n in slots.items() if n]
    if getattr(gw, "_stream_outcome", None):  # per-request bookkeeping of streams that failed
        out.append(f"stream-outcome marks left: {sorted(gw._stream_outcome)}")
    for e in engines:
        if e.scheduler.has_unfinished():
            out.append(f"engine {e.index} has unfinished requests")
        if e.loop._streams:
            out.append(f"engine {e.index} streams open: {sorted(e.loop._streams)}")
    return out


async def settled(gw: Gateway, engines: list[EmulatedEngine]) -> None:
    """Poll (a few seconds at most) until nothing is left held; else fail naming what is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_S
    while leftovers(gw, engines):
        if loop.time() > deadline:
            raise AssertionError(f"leaked after {SETTLE_S} s: {leftovers(gw, engines)}")
        await asyncio.sleep(0.01)


async def against_gateway(cases: list[Case], concurrency: int = 1, **over: Any) -> Gateway:
    """Send ``cases`` (``concurrency`` at a time) to a fresh gateway in front of two emulated
    engines, check every response, then that everything was freed. ``over``: config fields."""
    engines, servers = await emulators(2)
    gw, c = await gateway_for([url(s) for s in servers], tenants=TENANTS, max_model_len=128,
                              **over)
    try:
        for i in range(0, len(cases), concurrency):
            await asyncio.gather(*(send(c, k) if "cut" not in k else cut_off(c, k)
                                   for k in cases[i:i + concurrency]))
        await settled(gw, engines)
    finally:
        await c.close()
        for s in servers:
            await s.close()
    return gw


# ---------------------------------------------------------------------------- bad input
@FUZZ
@given(cases=st.lists(arbitrary_json_cases(), min_size=30, max_size=30))
def test_arbitrary_json_bodies_never_5xx(cases: list[Case]) -> None:
    asyncio.run(against_gateway(cases))


@FUZZ
@given(cases=st.lists(nearly_valid_cases(), min_size=30, max_size=30))
def test_nearly_valid_bodies_never_5xx(cases: list[Case]) -> None:
    asyncio.run(against_gateway(cases))


@FUZZ
@given(cases=st.lists(raw_body_cases() | endpoint_cases(), min_size=30, max_size=30))
def test_raw_bodies_headers_and_endpoints_never_5xx(cases: list[Case]) -> None:
    asyncio.run(against_gateway(cases))


@FUZZ
@given(cases=st.lists(any_bad_case, min_size=30, max_size=30))
def test_bad_input_in_parallel_never_5xx_nor_leaks(cases: list[Case]) -> None:
    asyncio.run(against_gateway(cases, concurrency=6))


# ---------------------------------------------------------------------------- Content-Length
async def raw_http(port: int, request: bytes, eof: bool) -> tuple[int, str, bytes] | None:
    """Send a hand-made request (with ``eof``: then half-close); the first response's status,
    Content-Type and body, or None if the server closed without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        if eof:
            writer.write_eof()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            assert not e.partial, e.partial  # nothing, or a whole response head
            return None
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(x.split(": ", 1) for x in lines[1:] if ": " in x)
        n = int(fields.get("Content-Length", "0"))
        return (int(lines[0].split(" ")[1]), fields.get("Content-Type", ""),
                await reader.readexactly(n))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@FUZZ
@given(cases=st.lists(st.tuples(valid_bodies(stream=False), st.integers(-40, 40)),
                      min_size=15, max_size=15))
def test_content_length_mismatch_never_5xx_nor_hangs(
        cases: list[tuple[tuple[str, dict[str, Any]], int]]) -> None:
    """A body shorter than its Content-Length (then EOF: the server may just close) or longer
    (the rest is, to the HTTP parser, the start of a next request: aiohttp's parser may answer
    a plain-text 400 for the whole exchange before the gateway sees the first one)."""
    async def go() -> None:
        engines, servers = await emulators(2)
        gw, c = await gateway_for([url(s) for s in servers], tenants=TENANTS,
                                  max_model_len=128)
        try:
            for (path, body), delta in cases:
                raw = dumps(body)
                n = max(len(raw) + delta, 0)
                head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k-gold\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n")
                case: Case = {"method": "POST", "path": path, "body": raw[:n],
                              "headers": {"Content-Length": str(n)}, "sent": len(raw)}
                got = await within(raw_http(c.server.port, head.encode() + raw, delta > 0),
                                   case)
                if got is None:  # only a body cut short by EOF may go unanswered
                    assert delta > 0, case
                    continue
                status, ctype, answer = got
                assert status == (200 if delta == 0 else 400), (status, answer, case)
                if ctype.startswith("application/json"):
                    check(case, status, ctype, answer)
                else:  # aiohttp's own HTTP parser refused the bytes after the body
                    assert delta < 0 and ctype.startswith("text/plain"), (answer, case)
            await settled(gw, engines)
        finally:
            await c.close()
            for s in servers:
                await s.close()
    asyncio.run(go())


# ---------------------------------------------------------------------------- cut-offs


async def cut_off(c: TestClient, case: Case) -> None:
    """Send a valid request and hang up as ``case["cut"]`` says."""
    cut, amount = case["cut"]

    async def go() -> None:
        r = await c.request("POST", case["path"], data=case["body"], headers=case["headers"])
        try:
            if r.status != 200 or cut == "full":  # 429 (concurrency, rate) or read it all
                check(case, r.status, r.headers.get("Content-Type", ""), await r.read())
            elif cut == "bytes":
                got = 0
                while got < amount:
                    part = await r.content.read(int(amount) - got)
                    if not part:
                        break
                    got += len(part)
            elif cut == "lines":
                for _ in range(int(amount)):
                    if not await r.content.readline():
                        break
        finally:
            r.close()  # hang up (a no-op once the body was read to its end)

    if cut == "cancel":  # gives up before (or while) the response starts
        task = asyncio.ensure_future(go())
        await asyncio.sleep(amount)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await within(task, case)
        return
    await within(go(), case)


@FUZZ
@given(cases=st.lists(cutoff_cases(), min_size=24, max_size=24))
def test_stream_cutoffs_free_every_slot_and_engine_request(cases: list[Case]) -> None:
    gw = asyncio.run(against_gateway(cases, concurrency=4))
    assert all(b.routable for b in gw.backends)


@settings(FUZZ, max_examples=6)
@given(cases=st.lists(cutoff_cases(), min_size=6, max_size=6))
def test_cut_long_streams_are_aborted_on_the_engine(cases: list[Case]) -> None:
    """The same cut-offs on requests of 4000 tokens (seconds of work even at time_scale 0.02):
    a request the client hung up on must be aborted on the engine, not run to its end."""
    for k in cases:  # streams (a non-streaming answer comes only at the end); none read whole
        body = json.loads(k["body"])
        k["body"] = dumps({**body, "max_tokens": 4000,
                           "stream": body["stream"] or k["cut"][0] != "cancel"})
        if k["cut"][0] == "full":
            k["cut"] = ("lines", 3)

    async def go() -> None:
        engines, servers = await emulators(2)
        seen = [record_submits(e) for e in engines]
        gw, c = await gateway_for([url(s) for s in servers], tenants=TENANTS,
                                  max_model_len=8192)
        try:
            for i in range(0, len(cases), 3):
                await asyncio.gather(*(cut_off(c, k) for k in cases[i:i + 3]))
            await settled(gw, engines)
            ran = [(r.id, r.generated) for reqs in seen for r in reqs
                   if r.generated >= r.output_len]
            assert not ran, f"cut requests generated to their end on the engine: {ran}"
        finally:
            await c.close()
            for s in servers:
                await s.close()
    asyncio.run(go())


# ---------------------------------------------------------------------------- bugs found (fixed)
def test_unhashable_priority_class_is_a_400_not_a_500() -> None:
    async def go() -> list[int]:
        _, servers = await emulators(1)
        _, c = await gateway_for([url(servers[0])])
        try:
            codes = []
            for bad in (["gold"], {"name": "gold"}):
                r = await c.post(COMPLETIONS, headers=GOLD, json={
                    "model": MODEL, "prompt": "hi", "max_tokens": 2, "priority_class": bad})
                codes.append(r.status)
                if r.status == 400:
                    assert (await r.json())["error"]["param"] == "priority_class"
            r = await c.post(CHAT, headers=BRONZE, json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2, "priority_class": []})
            codes.append(r.status)
            return codes
        finally:
            await c.close()
            for s in servers:
                await s.close()
    assert asyncio.run(go()) == [400, 400, 400]


def test_client_hangups_mid_stream_are_not_backend_failures() -> None:
    async def go() -> None:
        _, servers = await emulators(1)
        # probes far apart: only forwards can change the backend's health here
        gw, c = await gateway_for([url(servers[0])], health={
            "interval_s": 60, "timeout_s": 0.5, "failures_to_eject": 2})
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 500, "stream": True}
        try:
            rs = [await c.post(COMPLETIONS, headers=GOLD, json=body) for _ in range(2)]
            for r in rs:
                assert r.status == 200
                await r.content.readline()
            for r in rs:
                r.close()  # two clients hang up mid-stream
            await asyncio.sleep(0.2)
            errs = [s for m in gw.m_stream_err.collect() for s in m.samples
                    if s.name.endswith("_total") and s.value]
            assert not errs, errs
            assert gw.backends[0].failures == 0 and gw.backends[0].routable
            r = await c.post(COMPLETIONS, headers=GOLD, json={**body, "max_tokens": 2})
            assert r.status == 200, await r.text()  # was: 503 no_backend
        finally:
            await c.close()
            for s in servers:
                await s.close()
    asyncio.run(go())


def test_undecodable_content_encoding_is_a_400_not_a_500() -> None:
    async def go() -> None:
        _, servers = await emulators(1)
        _, c = await gateway_for([url(servers[0])])
        body = dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2})
        try:
            for enc in ("gzip", "deflate"):
                r = await c.post(COMPLETIONS, data=body, headers={
                    **GOLD, "Content-Type": "application/json", "Content-Encoding": enc})
                assert r.status == 400, (enc, r.status, await r.text())  # was: 500
                assert isinstance((await r.json())["error"]["message"], str)
        finally:
            await c.close()
            for s in servers:
                await s.close()
    asyncio.run(go())

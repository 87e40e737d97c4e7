"""``proserve bench --target URL``: an open-loop load generator for OpenAI-compatible endpoints.

It replays the simulator's workloads (traces, rates, Poisson/gamma arrivals, priority classes)
against any endpoint (our gateway, vLLM, an emulator, LiteLLM...): each request is sent at its
arrival time whatever happened to earlier ones (open loop, so overload shows as queueing, not as a
slower client), streams its tokens, and every token's arrival time updates the same online
counters the simulator uses. The result has the same keys as ``proserve simulate`` (tdg_ratio,
slo_attainment, per_class, percentiles, goodput) plus error counts, so a simulated prediction and
a measured run compare field by field.

Prompts are sent as token ids of the trace's prompt length (the request id and a per-run salt,
then ``1``s: no two requests, and no two runs against one server, share a cached block unless the
workload gives them a shared prefix), which vLLM, SGLang and our emulator accept, with
``ignore_eos`` so outputs have the trace's length; ``--prompt-format text`` sends words instead
for endpoints that only take text. Classes map to API keys (``--keys high=sk-1,low=sk-2``) and
to vLLM's ``priority`` field (class rank).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..core.metrics import clean_floats, summarize
from ..core.request import Request, Status
from .openai import IncompleteStream, chunk_tokens, sse_json


@dataclass
class BenchConfig:
    target: str
    model: str = "proserve-emulated"
    keys: dict[str, str] = field(default_factory=dict)  # class -> API key
    prompt_format: str = "ids"  # or "text"
    timeout_s: float = 300.0  # per request
    max_duration_s: float = 3600.0  # whole run, after the last arrival
    send_priority: bool = True
    chat: bool = False
    #: Spelled into every prompt so that two runs against one server share no cached block
    #: (request ids repeat between runs). None: a fresh salt per run; fix it to make two runs
    #: send identical prompts on purpose (a warm-cache measurement).
    salt: int | None = None


@dataclass
class _Outcome:
    code: str = "ok"
    detail: str = ""
    at: float = -1.0  # when a refusal (429) came back, s from the run's start


#: How many distinct salts :func:`unique_ids` can spell (two base-990 tokens).
SALTS = 990**2


def unique_ids(rid: int, n: int, salt: int = 0) -> list[int]:
    """A token-id prompt of length ``n`` that no other (request id, salt) shares a first block
    with.

    Engines with prefix caching (vLLM's is on by default) would otherwise serve most of an
    all-equal prompt from cache and the replay would measure cache hits, not the trace. The
    first three tokens spell the request id in base 990 (ids 10..999: valid in any vocabulary of
    1,000+), the next two the run's ``salt``: request ids restart at 0 in every workload, so
    without the salt a second run against the same server finds each request's whole prompt
    cached by the first (a profile-then-measure script measured 10 ms TTFTs for 2,000-token
    prompts that way). Block hashes chain, so the whole prompt is distinct.
    """
    head = ([10 + (rid // 990**k) % 990 for k in range(3)]
            + [10 + (salt // 990**k) % 990 for k in range(2)])[:n]
    return head + [1] * (n - len(head))


def prompt_token_ids(r: Request, salt: int = 0) -> list[int]:
    """The token-id prompt sent for ``r``: its prefix identity spelled out, then unique tokens.

    A request with a :class:`~proserve.core.request.Prefix` (Mooncake ``hash_ids``, a tenant's
    ``--shared-prefix`` system prompt) gets, for each of its keyed chunks, ``block`` tokens
    derived from that chunk's id alone (blake2b of the id, tokens 10..999). Ids are prefix
    chained, so two requests' token lists agree exactly on the chunks their ids share and differ
    from the first chunk they do not: an engine that caches prefixes by block hash (vLLM) then
    hits exactly what the simulator's block manager hits for the same requests, as long as the
    chunk size is a multiple of the engine's block size. The rest of the prompt is unique to the
    request (:func:`unique_ids`' scheme, shifted to start after the prefix). ``salt`` enters
    every chunk's tokens too: requests of one run share their prefixes, two runs share nothing.
    """
    import hashlib

    p = r.prefix
    if p is None:
        return unique_ids(r.id, r.prompt_len, salt)
    out: list[int] = []
    for cid in p.ids:
        if len(out) >= r.prompt_len:
            break
        seed = hashlib.blake2b(repr((salt, cid)).encode(), digest_size=16).digest()
        n = min(p.block, r.prompt_len - len(out))
        chunk: list[int] = []
        k = 0
        while len(chunk) < n:  # 16 bytes per digest: 16 tokens, then the digest re-hashed
            chunk += [10 + (b * 7 + k) % 990 for b in seed][: n - len(chunk)]
            seed = hashlib.blake2b(seed, digest_size=16).digest()
            k += 1
        out += chunk
    rest = r.prompt_len - len(out)
    if rest > 0:
        out += unique_ids(r.id, rest, salt)
    return out


async def _one(session: aiohttp.ClientSession, cfg: BenchConfig, r: Request, t0: float,
               outcome: _Outcome, salt: int) -> None:
    body: dict[str, Any] = {"model": cfg.model, "max_tokens": r.output_len, "stream": True,
                            "ignore_eos": True}
    if cfg.chat:
        body["messages"] = [{"role": "user",
                             "content": f"{r.id}-{salt} " + "hi " * max(r.prompt_len - 5, 0)}]
    elif cfg.prompt_format == "ids":
        body["prompt"] = prompt_token_ids(r, salt)
        body["return_token_ids"] = True  # vLLM without a tokenizer streams ids, not text
    else:
        body["prompt"] = f"{r.id}-{salt} " + "hi " * max(r.prompt_len - 1, 0)
    if cfg.send_priority:
        body["priority"] = r.priority
    headers = {}
    key = cfg.keys.get(r.cls)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    path = "/v1/chat/completions" if cfg.chat else "/v1/completions"
    try:
        async with session.post(cfg.target.rstrip("/") + path, json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as resp:
            if resp.status != 200:
                outcome.code = str(resp.status)
                outcome.detail = (await resp.text())[:300]
                outcome.at = time.monotonic() - t0
                return
            async for chunk in sse_json(resp.content):
                if "error" in chunk:
                    outcome.code = "stream_error"
                    outcome.detail = str(chunk["error"].get("message", ""))[:300]
                    return
                t = time.monotonic() - t0
                for ch in chunk.get("choices") or ():
                    for _ in range(chunk_tokens(ch)):
                        if r.generated < r.output_len:
                            r.emit_token(t)
    except IncompleteStream:
        outcome.code = "truncated"
    except asyncio.TimeoutError:
        outcome.code = "timeout"
    except (aiohttp.ClientError, OSError, ValueError) as e:
        outcome.code = "connection_error"
        outcome.detail = f"{type(e).__name__}: {e}"[:300]


async def run_bench(cfg: BenchConfig, requests: list[Request],
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Send ``requests`` at their arrival times; return the simulate-compatible summary."""
    outcomes = [_Outcome() for _ in requests]
    if cfg.salt is not None and not 0 <= cfg.salt < SALTS:
        raise ValueError(f"salt must be in [0, {SALTS}), got {cfg.salt}")
    salt = cfg.salt if cfg.salt is not None else secrets.randbelow(SALTS)
    finished = 0
    t0 = time.monotonic()
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def fire(i: int, r: Request) -> None:
            nonlocal finished
            delay = r.arrival - (time.monotonic() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            await _one(session, cfg, r, t0, outcomes[i], salt)
            finished += 1
            if progress is not None:
                progress(finished, len(requests))

        last = requests[-1].arrival if requests else 0.0
        tasks = [asyncio.ensure_future(fire(i, r)) for i, r in enumerate(requests)]
        _, pending = await asyncio.wait(tasks, timeout=last + cfg.max_duration_s)
        for t in pending:
            t.cancel()
        for i, t in enumerate(tasks):
            if t in pending:
                outcomes[i].code = "cut_off"
    wall = time.monotonic() - t0
    for r, o in zip(requests, outcomes):
        ok = o.code == "ok" and r.generated >= r.output_len
        r.status = Status.FINISHED if ok else Status.UNFINISHED
        r.finish_time = r.last_token_time if r.generated else wall
        if o.code == "429" and not r.generated:
            # refused (admission shed or timed out, or a tenant limit): what the simulator's
            # --admission counts as rejected: no gain, a miss in attainment, not a latency
            r.status = Status.REJECTED
            r.finish_time = o.at
    classes = list(dict.fromkeys(r.cls for r in sorted(requests, key=lambda x: x.priority)))
    res = summarize(requests, class_order=classes)
    codes = Counter(o.code for o in outcomes)
    errors = {k: v for k, v in codes.items() if k != "ok"}
    examples = {}
    for o in outcomes:
        if o.code != "ok" and o.code not in examples:
            examples[o.code] = o.detail
    out = {
        "target": cfg.target,
        "requests": res["requests"],
        **{k: v for k, v in res.items() if k not in ("per_class", "requests")},
        "per_class": res["per_class"],
        "errors": errors,
        "error_examples": examples,
        "ok": codes.get("ok", 0),
        "bench_wall_s": wall,
        "prompt_salt": salt,
    }
    return clean_floats(out)

"""Tenant limits: requests per second, tokens per second and requests in flight.

Two stores, one interface (:meth:`admit` -> a :class:`Lease` to :meth:`release` when the request
ends, or a :class:`Refusal` to answer with):

* :class:`LocalLimiter` (``limits: {backend: local}``, the default): token buckets and a counter
  in this process, on the gateway's clock. With several workers or hosts each has its own, so a
  tenant gets up to N times its limits across N processes.
* :class:`RedisLimiter` (``limits: {backend: redis, url: ...}``): one Redis shared by every
  worker and host. Rates use the ``limits`` library with its async Redis storage (the ``redis``
  client underneath):

  - requests/s: **moving window** (``MovingWindowRateLimiter``), one second (or the shortest
    window that makes a fractional rate whole, e.g. 0.5/s = 1 per 2 s). Exact: no window of
    that length ever admits more than the limit, wherever it starts, so there is no burst of 2x
    at a fixed window's edge. It keeps one timestamp per admitted request (a Redis list of at
    most ``max_rps`` entries), which is cheap at request rates.
  - tokens/s: **sliding window counter** (``SlidingWindowCounterRateLimiter``): two counters,
    the previous window's weighted by how much of it still overlaps. A moving window would
    push one list entry per *token* (thousands per request); the counter is O(1) per request
    and within a few percent of exact for steady traffic. Fixed windows were not chosen for
    either: they admit up to twice the limit around a window boundary.
  - concurrency: a sorted set per tenant of leases, each scored with its expiry (Redis server
    time + ``lease_ttl_s``), in one Lua script: drop expired leases, refuse if the count is at
    the limit, else add. Release removes the lease; a background task renews this process's
    live leases every ``lease_ttl_s / 3``, so a long stream keeps its slot, and a slot held by
    a process that died frees itself after at most ``lease_ttl_s`` (the TTL guard).

  Redis unreachable (an error, or no answer within ``timeout_s``): the failure is counted
  (``proserve_limit_store_errors_total{op}``; each request judged without Redis in
  ``proserve_limit_store_unavailable_total{model,on_error}``), logged once per outage (and
  once when Redis answers again), and for ``retry_s`` requests skip Redis altogether (no
  per-request connect timeouts during an outage). Meanwhile ``on_error: open`` (default) judges
  each request by this process's own limits, as :class:`LocalLimiter` would, and ``on_error:
  closed`` refuses it with 503 ``limit_store_unavailable`` + Retry-After. See docs/GATEWAY.md
  for why open is the default.

Rate windows use wall-clock time (the ``limits`` library stamps entries with the client's
``time.time()``): hosts sharing one Redis need synchronised clocks (NTP), as any distributed
rate limiter does. Concurrency leases use the Redis server's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from .gateway_config import LimitsConfig, TenantConfig

log = logging.getLogger("proserve.gateway")


@dataclass
class Refusal:
    status: int  # 429 (over a limit) or 503 (limit store unavailable, on_error: closed)
    code: str
    message: str
    retry_after: int


@dataclass
class Lease:
    """A request admitted for ``tenant``; ``slot`` names its concurrency slot, if it took one:
    ("local", "") or ("redis", lease id)."""

    tenant: str
    slot: tuple[str, str] | None = None
    degraded: bool = False  # judged by this process's limits: the shared store was unreachable


class TokenBucket:
    """A classic token bucket; ``take`` returns 0 if allowed, else seconds until it would be."""

    __slots__ = ("rate", "burst", "level", "t")

    def __init__(self, rate: float, burst: float | None = None, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self.level = self.burst
        self.t = time.monotonic() if now is None else now  # on the clock ``take`` is given

    def take(self, n: float, now: float) -> float:
        self.level = min(self.burst, self.level + (now - self.t) * self.rate)
        self.t = now
        if n > self.burst:  # can never fit at once: allow when the bucket is full
            if self.level >= self.burst:
                self.level -= n
                return 0.0
            return (self.burst - self.level) / self.rate
        if self.level >= n:
            self.level -= n
            return 0.0
        return (n - self.level) / self.rate


def _rate_refusal(tenant: str, what: str, wait: float) -> Refusal:
    return Refusal(429, "rate_limited", f"tenant {tenant!r} is over its {what} limit; retry in "
                                        f"{wait:.2f} s", max(1, math.ceil(wait)))


def _concurrency_refusal(t: TenantConfig) -> Refusal:
    return Refusal(429, "concurrency_limited",
                   f"tenant {t.name!r} already has {t.max_concurrency} request(s) in flight "
                   f"(its max_concurrency); retry when one finishes", 1)


class LocalLimiter:
    """Limits kept in this process, on ``clock`` (the gateway's, injectable in tests)."""

    shared = False

    def __init__(self, tenants: list[TenantConfig], clock: Callable[[], float]) -> None:
        self._clock = clock
        self.tenants = {t.name: t for t in tenants}
        self.rps: dict[str, TokenBucket] = {}
        self.tps: dict[str, TokenBucket] = {}
        self.inflight: dict[str, int] = {t.name: 0 for t in tenants}
        for t in tenants:
            if t.max_rps:
                self.rps[t.name] = TokenBucket(t.max_rps, now=clock())
            if t.max_tokens_per_s:
                self.tps[t.name] = TokenBucket(t.max_tokens_per_s, now=clock())

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def admit(self, t: TenantConfig, tokens: int) -> Lease | Refusal:
        return self.admit_now(t, tokens)

    def admit_now(self, t: TenantConfig, tokens: int) -> Lease | Refusal:
        # concurrency first: a request refused for it takes nothing from the rates
        if t.max_concurrency and self.inflight[t.name] >= t.max_concurrency:
            return _concurrency_refusal(t)
        now = self._clock()
        for bucket, amount, what in ((self.rps.get(t.name), 1, "requests/s"),
                                     (self.tps.get(t.name), tokens, "tokens/s")):
            if bucket is not None:
                wait = bucket.take(amount, now)
                if wait > 0:
                    return _rate_refusal(t.name, what, wait)
        if t.max_concurrency:
            self.inflight[t.name] += 1
            return Lease(t.name, ("local", ""))
        return Lease(t.name)

    async def release(self, lease: Lease) -> None:
        self.release_now(lease)

    def release_now(self, lease: Lease) -> None:
        if lease.slot is not None and lease.slot[0] == "local":
            self.inflight[lease.tenant] = max(0, self.inflight[lease.tenant] - 1)


def rate_window(rate: float) -> tuple[int, int]:
    """``(amount, seconds)``: a whole number of requests (or tokens) per whole seconds that is
    ``rate`` per second, for the ``limits`` library's integer items. The shortest window that
    makes the amount whole to within 1%; else a minute, rounded."""
    for seconds in (1, 2, 3, 4, 5, 10, 20, 30, 60):
        amount = rate * seconds
        if amount >= 1 and abs(amount - round(amount)) <= 0.01 * amount:
            return int(round(amount)), seconds
    return max(1, int(round(rate * 60))), 60


_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1)
return 1
"""

# Re-add (not only update) each live lease: after Redis lost its data (a restart without
# persistence) the requests still in flight count again.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
end
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1)
return #ARGV - 1
"""


class RedisLimiter:
    """Limits kept in Redis, shared by every worker and host (module docstring)."""

    shared = True

    def __init__(self, cfg: LimitsConfig, tenants: list[TenantConfig],
                 clock: Callable[[], float],
                 on_store_error: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.tenants = {t.name: t for t in tenants}
        self.local = LocalLimiter(tenants, clock)  # on_error: open, while Redis is away
        self._on_store_error = on_store_error or (lambda op: None)
        self._down_until = 0.0  # time.monotonic(): skip Redis until then
        self._down = False  # in an outage (logged once)
        self.leases: dict[str, set[str]] = {t.name: set() for t in tenants}
        self._unreleased: list[tuple[str, str]] = []  # releases Redis did not get
        self._task: asyncio.Task | None = None
        self._closing = False  # the renewal loop ends at its next turn
        self.redis = None
        self.storage = None
        self._rps: dict[str, object] = {}
        self._tps: dict[str, object] = {}

    @property
    def up(self) -> bool:
        return not self._down

    async def start(self) -> None:
        import redis.asyncio as aioredis
        from limits import RateLimitItemPerSecond
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import (
            MovingWindowRateLimiter,
            SlidingWindowCounterRateLimiter,
        )

        c = self.cfg
        opts = {"socket_timeout": c.timeout_s, "socket_connect_timeout": c.timeout_s}
        self.storage = RedisStorage("async+" + str(c.url), implementation="redispy",
                                    wrap_exceptions=True, key_prefix=c.key_prefix, **opts)
        self.redis = aioredis.Redis.from_url(str(c.url), **opts)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self.moving = MovingWindowRateLimiter(self.storage)
        self.sliding = SlidingWindowCounterRateLimiter(self.storage)
        for t in self.tenants.values():
            if t.max_rps:
                self._rps[t.name] = RateLimitItemPerSecond(*rate_window(t.max_rps),
                                                           namespace="rps")
            if t.max_tokens_per_s:
                self._tps[t.name] = RateLimitItemPerSecond(*rate_window(t.max_tokens_per_s),
                                                           namespace="tps")
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=2 * c.timeout_s)
            log.info("tenant limits in Redis at %s, shared by every worker and host "
                     "(on_error: %s)", _safe(c.url), c.on_error)
        except Exception as e:  # noqa: BLE001 - any failure to reach it is an outage
            self._failed("ping", e)
        self._task = asyncio.get_running_loop().create_task(self._renew_loop())

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            # Bounded, not ``await self._task``: a cancellation that lands inside a redis-py
            # command can be swallowed (redis/redis-py#2028, #2665), and the loop then runs on;
            # it ends at its next turn (``_closing``), so this waits at most one period plus
            # one renewal. Unbounded, it hung a test run (and would hang a shutdown) for good.
            await asyncio.wait({self._task}, timeout=self.cfg.lease_ttl_s / 3
                               + 8 * self.cfg.timeout_s + 1.0)
        for tenant, ids in self.leases.items():  # give back what this process still holds
            for lid in list(ids):
                self._unreleased.append((tenant, lid))
            ids.clear()
        if self._unreleased and not self._skipping():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush_releases(), timeout=2 * self.cfg.timeout_s)
        for client in (self.redis, getattr(self.storage, "bridge", None)):
            conn = getattr(client, "storage", client)
            with contextlib.suppress(Exception):
                await conn.aclose()

    # ------------------------------------------------------------------ outage handling
    def _skipping(self) -> bool:
        return time.monotonic() < self._down_until

    def _failed(self, op: str, e: BaseException) -> None:
        self._down_until = time.monotonic() + self.cfg.retry_s
        self._on_store_error(op)
        if not self._down:
            self._down = True
            how = ("judging requests by this process's own limits (on_error: open)"
                   if self.cfg.on_error == "open" else
                   "refusing requests with 503 (on_error: closed)")
            log.warning("limit store %s unreachable (%s: %s): %s until it answers again",
                        _safe(self.cfg.url), type(e).__name__, e, how)

    def _ok(self) -> None:
        if self._down:
            self._down = False
            log.warning("limit store %s answers again: tenant limits are shared again",
                        _safe(self.cfg.url))

    def _degraded(self, t: TenantConfig, tokens: int) -> Lease | Refusal:
        if self.cfg.on_error == "closed":
            return Refusal(503, "limit_store_unavailable",
                           "tenant limits cannot be checked now (the limit store is "
                           "unreachable); retry shortly", max(1, math.ceil(self.cfg.retry_s)))
        out = self.local.admit_now(t, tokens)
        if isinstance(out, Lease):
            out.degraded = True
        return out

    # ------------------------------------------------------------------ admit / release
    async def admit(self, t: TenantConfig, tokens: int) -> Lease | Refusal:
        if not (t.max_rps or t.max_tokens_per_s or t.max_concurrency):
            return Lease(t.name)
        if self._skipping():
            return self._degraded(t, tokens)
        try:
            out = await asyncio.wait_for(self._admit(t, tokens), timeout=4 * self.cfg.timeout_s)
        except Exception as e:  # noqa: BLE001 - StorageError, RedisError, OSError, timeout
            self._failed("admit", e)
            return self._degraded(t, tokens)
        self._ok()
        if self._unreleased:
            asyncio.get_running_loop().create_task(self._flush_quietly())
        return out

    async def _admit(self, t: TenantConfig, tokens: int) -> Lease | Refusal:
        # concurrency first: a request refused for it takes nothing from the rates
        lease = Lease(t.name)
        if t.max_concurrency:
            lid = uuid.uuid4().hex
            got = await self._acquire(keys=[self._ckey(t.name)],
                                      args=[t.max_concurrency, self.cfg.lease_ttl_s, lid])
            if not got:
                return _concurrency_refusal(t)
            self.leases[t.name].add(lid)
            lease = Lease(t.name, ("redis", lid))
        try:
            for limiter, item, cost, what in (
                    (self.moving, self._rps.get(t.name), 1, "requests/s"),
                    (self.sliding, self._tps.get(t.name), tokens, "tokens/s")):
                if item is None:
                    continue
                cost = min(cost, item.amount)  # more than a window holds: into an empty one
                if not await limiter.hit(item, t.name, cost=cost):
                    stats = await limiter.get_window_stats(item, t.name)
                    await self.release(lease)
                    return _rate_refusal(t.name, what,
                                         max(stats.reset_time - time.time(), 0.0))
        except BaseException:
            if lease.slot is not None:  # given back by the renewal loop once Redis answers
                self.leases[t.name].discard(lease.slot[1])
                self._unreleased.append((t.name, lease.slot[1]))
            raise
        return lease

    async def release(self, lease: Lease) -> None:
        if lease.slot is None:
            return
        if lease.slot[0] == "local":
            self.local.release_now(lease)
            return
        lid = lease.slot[1]
        self.leases[lease.tenant].discard(lid)
        self._unreleased.append((lease.tenant, lid))
        if self._skipping():
            return  # the renewal loop gives it back once Redis answers (or its TTL frees it)
        try:
            await asyncio.wait_for(self._flush_releases(), timeout=4 * self.cfg.timeout_s)
        except Exception as e:  # noqa: BLE001
            self._failed("release", e)

    async def _flush_releases(self) -> None:
        while self._unreleased:
            tenant, lid = self._unreleased[0]
            await self.redis.zrem(self._ckey(tenant), lid)
            self._unreleased.pop(0)

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush_releases(), timeout=4 * self.cfg.timeout_s)

    def _ckey(self, tenant: str) -> str:
        return f"{self.cfg.key_prefix}:inflight:{tenant}"

    async def _renew_loop(self) -> None:
        period = self.cfg.lease_ttl_s / 3
        while not self._closing:
            await asyncio.sleep(min(period, max(self.cfg.retry_s, 0.05)) if self._down
                                else period)
            if self._skipping():
                continue
            try:
                if self._down:  # probe: the outage may be over
                    await asyncio.wait_for(self.redis.ping(), timeout=2 * self.cfg.timeout_s)
                for tenant, ids in self.leases.items():
                    if ids:
                        await asyncio.wait_for(
                            self._renew(keys=[self._ckey(tenant)],
                                        args=[self.cfg.lease_ttl_s, *sorted(ids)]),
                            timeout=4 * self.cfg.timeout_s)
                await asyncio.wait_for(self._flush_releases(), timeout=4 * self.cfg.timeout_s)
                self._ok()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                self._failed("renew", e)


def _safe(url: str | None) -> str:
    """The URL without a password, for logs."""
    u = str(url)
    if "@" in u and "://" in u:
        scheme, rest = u.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return u


def make_limiter(cfg: LimitsConfig, tenants: list[TenantConfig], clock: Callable[[], float],
                 on_store_error: Callable[[str], None] | None = None
                 ) -> LocalLimiter | RedisLimiter:
    if cfg.backend == "redis":
        return RedisLimiter(cfg, tenants, clock, on_store_error)
    return LocalLimiter(tenants, clock)

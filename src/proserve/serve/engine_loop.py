"""Drive an engine scheduler in real time on asyncio: the heart of ``proserve emulate``.

The same policy object as in the simulator runs here; only the clock differs. Each iteration:
``schedule(now)``, sleep for the latency model's predicted duration (times ``time_scale``: 1.0
is real time, 0.1 ten times faster for tests), ``update_from_output(out, now)``, then hand each
request's new tokens to its stream. An idle engine waits on an event instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..core.request import Request
from ..engine.base import BaseScheduler


class EngineFull(Exception):
    """The request can never fit in this engine's KV cache."""


@dataclass(slots=True)
class TokenEvent:
    """One output token (``done`` on the last one) at loop time ``t``."""

    t: float
    index: int  # 1-based output token number
    done: bool


class EngineLoop:
    """Real-time driver of one scheduler; one instance per emulated engine."""

    def __init__(self, scheduler: BaseScheduler, *, time_scale: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_step: Callable[[float, int, int], None] | None = None) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.scheduler = scheduler
        self.time_scale = time_scale
        self._clock = clock
        self._t0 = clock()
        self.on_step = on_step  # (duration, batch size, preemptions) per iteration
        self._streams: dict[int, asyncio.Queue[TokenEvent]] = {}
        self._wake = asyncio.Event()
        self._ids = itertools.count()
        self._task: asyncio.Task | None = None
        self.steps = 0

    def now(self) -> float:
        """Engine time in seconds: wall time divided by the time scale, so the policy's
        deadlines and the latency model keep their units whatever the speed."""
        return (self._clock() - self._t0) / self.time_scale

    def next_id(self) -> int:
        return next(self._ids)

    # ------------------------------------------------------------------ requests
    def submit(self, req: Request) -> asyncio.Queue[TokenEvent]:
        """Queue ``req`` (its ``arrival`` is set to now); returns the queue its tokens arrive on."""
        req.arrival = self.now()
        q: asyncio.Queue[TokenEvent] = asyncio.Queue()
        if not self.scheduler.add_request(req, req.arrival):
            kv = self.scheduler.kv
            raise EngineFull(f"request needs {req.prompt_len + req.output_len} tokens of KV; "
                             f"the engine holds {kv.total * kv.block_size}")
        self._streams[req.id] = q
        self._wake.set()
        return q

    def abort(self, req: Request) -> None:
        """Stop serving ``req`` (client gone); frees its KV at once."""
        self._streams.pop(req.id, None)
        self.scheduler.abort_request(req, self.now())

    # ------------------------------------------------------------------ loop
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        sched = self.scheduler
        while True:
            started = self._clock()
            out = sched.schedule(self.now())
            if out.empty:
                self._wake.clear()
                if not sched.has_unfinished():
                    await self._wake.wait()
                else:  # work exists but none fits now (cannot happen with our policies)
                    await asyncio.sleep(0.001)
                continue
            # Sleep to the step's end measured from its start, so the time spent scheduling and
            # delivering tokens is part of the step, not added to it (the predicted duration is
            # what a real engine's step takes, bookkeeping included).
            # KV copies of offload preemption (engine/offload.py) lengthen the step as they do in
            # the simulator
            dur = sched.step_seconds(out.duration, out) if sched.transfer is not None else (
                out.duration)
            await asyncio.sleep(max(started + dur * self.time_scale - self._clock(), 0))
            gens = [r.generated for r in out.reqs]
            t = self.now()
            finished = sched.update_from_output(out, t)
            self.steps += 1
            if self.on_step is not None:
                self.on_step(dur, len(out.reqs), len(out.preempted))
            done = {r.id for r in finished}
            for r, g0 in zip(out.reqs, gens):
                if r.generated > g0:
                    q = self._streams.get(r.id)
                    if q is not None:
                        q.put_nowait(TokenEvent(t, r.generated, r.id in done))
            for r in finished:
                self._streams.pop(r.id, None)

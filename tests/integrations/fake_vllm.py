"""A fake of the few vLLM 0.32 modules the scheduler plug-in imports, so that its own logic runs in
the fast test suite without vLLM.

:func:`installed` puts fake ``vllm``, ``vllm.v1.core.sched.async_scheduler``,
``vllm.v1.core.sched.request_queue`` and ``vllm.v1.request`` modules into ``sys.modules``,
imports ``proserve.integrations.vllm.scheduler`` fresh under them, and on exit removes both and
puts back whatever was there before (a real vLLM, or nothing).

:class:`AsyncScheduler` has exactly what the plug-in touches, with vLLM v1's semantics
(``vllm/v1/core/sched/scheduler.py``, read, not copied):

* ``schedule()``: advances ``current_step``; RUNNING requests first, in list order (skipping
  those whose ``next_decode_eligible_step`` is above ``current_step``), each getting
  ``num_tokens - num_computed_tokens`` tokens within the token budget; when KV blocks run out the
  running request with the largest ``(priority, arrival_time)`` is preempted (priority mode; the
  last one in FCFS mode), unless ``_request_blocks_can_be_freed`` says its blocks would not come
  back now; a request that preempts itself is not scheduled. Then, only if nothing was preempted,
  WAITING requests in queue order (``peek``, allocate, ``pop``) while a sequence slot, token
  budget and KV blocks allow; a waiting request gets a chunk of up to the remaining budget
  (chunked prefill); the first one that does not fit stops admission. Finally every scheduled
  request's ``num_computed_tokens`` advances by its tokens (``_update_after_schedule``).
* A KV pool that counts blocks per request (``ceil(tokens / block_size)`` for the tokens a request
  has computed or is scheduled to compute), so preemption and freeing return exactly what the
  request held. No prefix caching, no lookahead, no watermark.
* ``_preempt_request``: frees the request's blocks, status PREEMPTED, ``num_computed_tokens = 0``,
  put back at the head of the waiting queue (``prepend_request``).
* ``_free_request`` (called for finished requests, from :meth:`AsyncScheduler.finish_step` and
  :meth:`AsyncScheduler.finish_requests`): frees blocks and forgets the request.

The engine side is simplified to the synchronous flow: the test calls ``schedule()`` and then
:meth:`AsyncScheduler.finish_step`, which samples one output token for each request whose tokens
are all computed (vLLM's ``update_from_output``) and frees those that reached ``max_tokens``. So
``num_output_placeholders`` stays 0 and there is no speculative decoding.

Every ``schedule()`` call records in :attr:`AsyncScheduler.at_entry` what vLLM's own scheduling
saw when it started (after the plug-in's work): running and waiting order, priorities, the token
budget, which is what the plug-in's tests assert on.
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import importlib
import itertools
import sys
import types
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

PLUGIN = "proserve.integrations.vllm.scheduler"
QUEUE = "proserve.integrations.vllm.queue"  # binds vLLM's RequestQueue at import: fresh too


# ---------------------------------------------------------------------- vllm.v1.request
class RequestStatus(enum.IntEnum):
    WAITING = enum.auto()
    WAITING_FOR_REMOTE_KVS = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    # everything after PREEMPTED is finished (vLLM's convention)
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @staticmethod
    def is_finished(status: RequestStatus) -> bool:
        return status > RequestStatus.PREEMPTED


@dataclass
class SamplingParams:
    max_tokens: int = 16
    extra_args: dict[str, Any] | None = None  # vLLM's home for the OpenAI body's vllm_xargs


class Request:
    """vLLM's ``Request``, the fields the plug-in and the fake scheduler read.

    Identity semantics (no ``__eq__``), ordered like vLLM's by (priority, arrival, id).
    """

    def __init__(self, request_id: str, prompt_tokens: int, max_tokens: int = 16, *,
                 priority: int = 0, arrival_time: float = 0.0,
                 extra_args: dict[str, Any] | None = None) -> None:
        self.request_id = request_id
        self.priority = priority
        self.arrival_time = arrival_time
        self.sampling_params = SamplingParams(max_tokens, extra_args)
        self.max_tokens = max_tokens
        self.num_prompt_tokens = prompt_tokens
        self._output_token_ids: list[int] = []
        self.num_computed_tokens = 0
        self.num_output_placeholders = 0
        self.num_preemptions = 0
        self.status = RequestStatus.WAITING
        self.next_decode_eligible_step = 0  # schedule() skips it while current_step is below

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + len(self._output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self._output_token_ids)

    def append_output_token_ids(self, token: int) -> None:
        self._output_token_ids.append(token)

    def is_finished(self) -> bool:
        return RequestStatus.is_finished(self.status)

    def __lt__(self, other: Request) -> bool:
        return ((self.priority, self.arrival_time, self.request_id)
                < (other.priority, other.arrival_time, other.request_id))

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, prio={self.priority}, "
                f"{self.num_computed_tokens}/{self.num_tokens}, {self.status.name})")


# ---------------------------------------------------------------------- request_queue
class SchedulingPolicy(enum.Enum):
    FCFS = "fcfs"
    PRIORITY = "priority"


class RequestQueue:
    """vLLM's abstract queue interface (the plug-in's queue subclasses it when vLLM is there)."""


class FCFSRequestQueue(deque, RequestQueue):
    def add_request(self, request: Request) -> None:
        self.append(request)

    def pop_request(self) -> Request:
        return self.popleft()

    def peek_request(self) -> Request:
        if not self:
            raise IndexError("peek from an empty queue")
        return self[0]

    def prepend_request(self, request: Request) -> None:
        self.appendleft(request)

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        self.extendleft(requests)

    def remove_request(self, request: Request) -> None:
        self.remove(request)

    def remove_requests(self, requests: Iterable[Request]) -> None:
        gone = set(requests)
        kept = [r for r in self if r not in gone]
        self.clear()
        self.extend(kept)


class PriorityRequestQueue(RequestQueue):
    def __init__(self) -> None:
        self._heap: list[Request] = []

    def add_request(self, request: Request) -> None:
        heapq.heappush(self._heap, request)

    def pop_request(self) -> Request:
        return heapq.heappop(self._heap)

    def peek_request(self) -> Request:
        if not self._heap:
            raise IndexError("peek from empty heap")
        return self._heap[0]

    prepend_request = add_request

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        for r in requests:
            self.add_request(r)

    def remove_request(self, request: Request) -> None:
        self._heap.remove(request)
        heapq.heapify(self._heap)

    def remove_requests(self, requests: Iterable[Request]) -> None:
        gone = set(requests)
        self._heap = [r for r in self._heap if r not in gone]
        heapq.heapify(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return iter(sorted(self._heap))


def create_request_queue(policy: SchedulingPolicy) -> RequestQueue:
    return PriorityRequestQueue() if policy == SchedulingPolicy.PRIORITY else FCFSRequestQueue()


# ---------------------------------------------------------------------- KV cache
class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.free = num_blocks

    def get_num_free_blocks(self) -> int:
        return self.free


class KVCacheManager:
    """Blocks held per request; a request holds ``ceil(tokens / block_size)`` blocks for the
    tokens it has computed or been scheduled."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_pool = BlockPool(num_blocks)
        self.block_size = block_size
        self.held: dict[str, int] = {}

    def allocate_slots(self, request: Request, num_new_tokens: int) -> list[int] | None:
        have = self.held.get(request.request_id, 0)
        want = -(-(request.num_computed_tokens + num_new_tokens) // self.block_size)
        extra = max(want - have, 0)
        if extra > self.block_pool.free:
            return None
        self.block_pool.free -= extra
        self.held[request.request_id] = have + extra
        return list(range(extra))  # the new blocks (vLLM returns a KVCacheBlocks, never None)

    def free(self, request: Request) -> None:
        self.block_pool.free += self.held.pop(request.request_id, 0)

    def check(self) -> None:
        assert self.block_pool.free + sum(self.held.values()) == self.block_pool.num_blocks
        assert self.block_pool.free >= 0


# ---------------------------------------------------------------------- the scheduler
@dataclass
class SchedulerOutput:
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    scheduled_new_reqs: list[Request] = field(default_factory=list)
    scheduled_resumed_reqs: list[Request] = field(default_factory=list)
    preempted_req_ids: set[str] = field(default_factory=set)

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())


@dataclass
class Entry:
    """What vLLM's ``schedule()`` saw when it started (after the plug-in's preparation)."""

    running: list[str]
    waiting: list[str]
    priority: dict[str, int]
    token_budget: int
    free_blocks: int


class AsyncScheduler:
    """vLLM 0.32's ``AsyncScheduler``, as far as the plug-in uses it (module docstring)."""

    def __init__(self, *, max_num_seqs: int = 8, max_num_batched_tokens: int = 2048,
                 num_gpu_blocks: int = 1000, block_size: int = 16,
                 policy: str = "fcfs") -> None:
        self.max_num_running_reqs = max_num_seqs
        self.max_num_scheduled_tokens = max_num_batched_tokens
        self.block_size = block_size
        self.policy = SchedulingPolicy(policy)
        self.waiting = create_request_queue(self.policy)
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.kv_cache_manager = KVCacheManager(num_gpu_blocks, block_size)
        self.finished_req_ids: set[str] = set()
        self.deferred_free: set[str] = set()  # ids whose blocks a KV connector still holds
        # vLLM's Scheduler: its KV connector (None, or e.g. the OffloadingConnector that
        # --kv-offloading-size builds) and the engine config it came from
        self.connector: object | None = None
        self.vllm_config: object | None = None
        self.at_entry: Entry | None = None
        self.current_step = 0
        self.outputs: list[SchedulerOutput] = []
        self._token = itertools.count(1000)

    # -------------------------------------------------------------- requests in and out
    def add_request(self, request: Request) -> None:
        assert request.request_id not in self.requests, "duplicate request id"
        self.waiting.add_request(request)
        self.requests[request.request_id] = request

    def _request_blocks_can_be_freed(self, request: Request) -> bool:
        """False while a KV connector defers freeing the request's blocks: preempting it would
        not make room now."""
        return request.request_id not in self.deferred_free

    def _preempt_request(self, request: Request, timestamp: float) -> None:
        # the caller has removed it from self.running
        assert request.status == RequestStatus.RUNNING, "only running requests are preempted"
        assert request not in self.running
        self.kv_cache_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.waiting.prepend_request(request)

    def _free_request(self, request: Request, delay_free_blocks: bool = False) -> None:
        assert request.is_finished()
        self.finished_req_ids.add(request.request_id)
        if not delay_free_blocks:
            self.kv_cache_manager.free(request)
            del self.requests[request.request_id]

    def finish_requests(self, request_ids: str | Iterable[str],
                        status: RequestStatus = RequestStatus.FINISHED_ABORTED) -> None:
        """Abort (vLLM's path for a client that went away): out of the queues, then freed."""
        ids = {request_ids} if isinstance(request_ids, str) else set(request_ids)
        reqs = [self.requests[i] for i in ids if i in self.requests]
        self.running = [r for r in self.running if r not in reqs]
        self.waiting.remove_requests(reqs)
        for r in reqs:
            r.status = status
            self._free_request(r)

    def finish_step(self, out: SchedulerOutput) -> list[Request]:
        """The model ran ``out``: every scheduled request whose tokens are now all computed gets
        one output token; those at ``max_tokens`` finish and are freed. Returns them."""
        done = []
        for rid in out.num_scheduled_tokens:
            r = self.requests.get(rid)
            if r is None or r.is_finished() or r.num_computed_tokens < r.num_tokens:
                continue  # gone, or a prefill chunk: nothing sampled
            r.append_output_token_ids(next(self._token))
            if r.num_output_tokens >= r.max_tokens:
                r.status = RequestStatus.FINISHED_LENGTH_CAPPED
                done.append(r)
        if done:
            self.running = [r for r in self.running if r not in done]
            for r in done:
                self._free_request(r)
        return done

    # -------------------------------------------------------------- scheduling
    def schedule(self) -> SchedulerOutput:
        self.current_step += 1
        kv = self.kv_cache_manager
        self.at_entry = Entry(
            running=[r.request_id for r in self.running],
            waiting=[r.request_id for r in self.waiting],
            priority={rid: r.priority for rid, r in self.requests.items()},
            token_budget=self.max_num_scheduled_tokens,
            free_blocks=kv.block_pool.get_num_free_blocks(),
        )
        out = SchedulerOutput()
        sched = out.num_scheduled_tokens
        preempted: list[Request] = []
        budget = self.max_num_scheduled_tokens

        # RUNNING first
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if n <= 0 or self.current_step < req.next_decode_eligible_step:
                i += 1
                continue
            while True:
                blocks = kv.allocate_slots(req, n)
                if blocks is not None:
                    break
                if self.policy == SchedulingPolicy.PRIORITY:
                    victim = max(self.running, key=lambda r: (r.priority, r.arrival_time))
                else:
                    victim = self.running[-1]
                if not self._request_blocks_can_be_freed(victim):
                    break
                at = self.running.index(victim)
                del self.running[at]
                if at < i:
                    i -= 1
                if victim.request_id in sched:
                    budget += sched.pop(victim.request_id)
                self._preempt_request(victim, 0.0)
                preempted.append(victim)
                if victim is req:
                    break
            if blocks is None:
                break
            sched[req.request_id] = n
            budget -= n
            i += 1

        # then WAITING, in queue order, unless this step preempted
        if not preempted:
            while self.waiting and budget > 0:
                if len(self.running) >= self.max_num_running_reqs:
                    break
                req = self.waiting.peek_request()
                n = min(req.num_tokens - req.num_computed_tokens, budget)
                assert n > 0
                if kv.allocate_slots(req, n) is None:
                    break
                popped = self.waiting.pop_request()
                assert popped is req
                self.running.append(req)
                if req.status == RequestStatus.PREEMPTED:
                    out.scheduled_resumed_reqs.append(req)
                else:
                    out.scheduled_new_reqs.append(req)
                req.status = RequestStatus.RUNNING
                sched[req.request_id] = n
                budget -= n

        assert out.total_num_scheduled_tokens <= self.max_num_scheduled_tokens
        assert len(self.running) <= self.max_num_running_reqs
        out.preempted_req_ids = {r.request_id for r in preempted}
        for rid, n in sched.items():  # _update_after_schedule
            self.requests[rid].num_computed_tokens += n
        kv.check()
        self.outputs.append(out)
        return out


# ---------------------------------------------------------------------- installing the fake
def _module(name: str, **attrs: Any) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__path__ = []  # a package, so that submodule imports resolve through sys.modules
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


def fake_modules(version: str = "0.32.0") -> dict[str, types.ModuleType]:
    mods = {
        "vllm": _module("vllm", __version__=version),
        "vllm.v1": _module("vllm.v1"),
        "vllm.v1.core": _module("vllm.v1.core"),
        "vllm.v1.core.sched": _module("vllm.v1.core.sched"),
        "vllm.v1.core.sched.async_scheduler": _module(
            "vllm.v1.core.sched.async_scheduler", AsyncScheduler=AsyncScheduler,
            SchedulerOutput=SchedulerOutput),
        "vllm.v1.core.sched.request_queue": _module(
            "vllm.v1.core.sched.request_queue", SchedulingPolicy=SchedulingPolicy,
            RequestQueue=RequestQueue, FCFSRequestQueue=FCFSRequestQueue,
            PriorityRequestQueue=PriorityRequestQueue,
            create_request_queue=create_request_queue),
        "vllm.v1.request": _module("vllm.v1.request", Request=Request,
                                   RequestStatus=RequestStatus),
    }
    for name, m in mods.items():  # parent.child attributes, as a real import sets them
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(mods[parent], child, m)
    return mods


@contextlib.contextmanager
def installed(version: str = "0.32.0") -> Iterator[types.ModuleType]:
    """The plug-in module, imported fresh under fake vLLM modules; everything put back after."""
    def ours(k: str) -> bool:
        return k == "vllm" or k.startswith("vllm.") or k in (PLUGIN, QUEUE)

    pkg = importlib.import_module("proserve.integrations.vllm")
    attrs = {a: vars(pkg)[a] for a in ("scheduler", "queue") if a in vars(pkg)}
    saved = {k: sys.modules.pop(k) for k in [k for k in sys.modules if ours(k)]}
    sys.modules.update(fake_modules(version))
    try:
        yield importlib.import_module(PLUGIN)
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        for a in ("scheduler", "queue"):
            if a in attrs:
                setattr(pkg, a, attrs[a])
            elif a in vars(pkg):
                delattr(pkg, a)

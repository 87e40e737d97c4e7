"""Running-first continuous batching: vLLM v1, Sarathi-Serve and weighted VTC.

Semantics copied from vLLM v1's ``Scheduler.schedule`` (see docs/ARCHITECTURE.md):

1. Walk the running requests in order; each gets ``min(pending, token budget left)`` tokens
   (chunked prefill for partly prefilled ones, one token for decodes).
2. If a running request cannot get KV blocks, preempt (recompute) a victim and retry: FCFS takes
   the newest running request, priority mode the worst ``(priority, arrival)``. If the victim is the
   request itself, stop walking the running list.
3. Only if nothing was preempted this step, admit waiting requests in queue order while the token
   budget, ``max_num_seqs`` and free KV allow (a request's cached prompt prefix counts as
   computed, as vLLM's ``get_computed_blocks`` makes it). The first waiting request that does
   not fit stops admission: a waiting request never preempts running work (vLLM issue #40004).

Sarathi-Serve (OSDI'24) differs in two ways, both parameters here: decodes are scheduled before any
prefill chunk (stall-free batching), and the per-iteration token budget is small and fixed (default
2048; Sarathi-Serve uses 512 for strict and 2048 for relaxed TBT SLOs). ``sarathi-priority`` also
orders the running set strictly by (priority, arrival).

Weighted VTC keeps vLLM's running-first loop but admits from a :class:`VTCQueue`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core.request import Request, Status
from ..latency.model import LatencyModel
from .base import BaseScheduler, SchedulerOutput, register_policy
from .queues import FCFSQueue, PriorityQueue, VTCQueue


def _prio_key(r: Request) -> tuple[int, float, int]:
    return (r.priority, r.arrival, r.id)


class RunningFirstScheduler(BaseScheduler):
    """vLLM v1-style scheduler; the variants differ only in the parameters below.

    Args:
        priority: admit waiting requests by (priority, arrival) and preempt the worst such
            running request; otherwise FCFS admission and newest-first preemption.
        decode_first: schedule decode steps before prefill chunks (Sarathi stall-free batching).
        sort_running: walk the running set in (priority, arrival) order (strict priority).
        fairness: ``None``, or ``"cls"``/``"tenant"`` for weighted VTC admission.
    """

    def __init__(
        self,
        model: LatencyModel,
        *,
        priority: bool = False,
        decode_first: bool = False,
        sort_running: bool = False,
        fairness: str | None = None,
        vtc_w_in: float = 1.0,
        vtc_w_out: float = 2.0,
        **kw,
    ) -> None:
        super().__init__(model, **kw)
        self.priority = priority
        self.decode_first = decode_first
        self.sort_running = sort_running
        self.orders_by_value = priority and fairness is None
        self.running: list[Request] = []
        self.vtc: VTCQueue | None = None
        if fairness is not None:
            self.vtc = VTCQueue(fairness, vtc_w_in, vtc_w_out)
            self.waiting: FCFSQueue | PriorityQueue | VTCQueue = self.vtc
        elif priority:
            self.waiting = PriorityQueue()
        else:
            self.waiting = FCFSQueue()

    # ------------------------------------------------------------------ hooks
    def _enqueue(self, req: Request, now: float) -> None:
        self.waiting.push(req)

    def _on_preempted(self, req: Request) -> None:
        self.running.remove(req)
        self.waiting.prepend(req)

    def _on_finished(self, req: Request) -> None:
        if req in self.running:
            self.running.remove(req)
        else:
            self.waiting.remove(req)

    def requests(self) -> Iterable[Request]:
        yield from self.running
        yield from self.waiting

    def has_unfinished(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    # ------------------------------------------------------------------ policy
    def _victim(self) -> Request | None:
        if not self.running:
            return None
        if self.priority:
            return max(self.running, key=_prio_key)
        return self.running[-1]

    def _schedule(self, now: float) -> SchedulerOutput:
        out = self.new_output()
        m = self.model
        cap = self.max_num_batched_tokens
        running = self.running
        if self.sort_running:
            running.sort(key=_prio_key)
        if self.decode_first:
            order = [r for r in running if not r.in_prefill] + [r for r in running if r.in_prefill]
        else:
            order = list(running)
        # Hot loop: one pass per running request per step. KV allocation (and with it the
        # preemption machinery) only runs when the request crosses a block boundary.
        bs = self.kv.block_size
        max_seqs = self.max_num_seqs
        is_running = Status.RUNNING
        seq_time = m.seq_time
        for r in order:
            if r.status != is_running:  # preempted earlier in this step
                continue
            budget = cap - out.prefill_tokens - out.decodes
            if budget <= 0 or len(out.reqs) >= max_seqs:
                break
            p = r.computed
            q = min(r.prompt_len + r.generated - p, budget)
            if r.blocks * bs < p + q:
                n_pre = len(out.preempted)
                ok = self._allocate_or_preempt(r, q, out, self._victim)
                if len(out.preempted) > n_pre:
                    self._remove_from_batch(out, out.preempted[n_pre:])
                if not ok:
                    break
            self._add(out, r, q, seq_time(q, p))
        if not out.preempted:
            waiting = self.waiting
            pc = self.prefix_active
            kv = self.kv
            trim = self.mode.copy_budget
            while len(waiting) and len(running) < self.max_num_seqs:
                budget = cap - out.prefill_tokens - out.decodes
                if budget <= 0:
                    break
                r = waiting.peek()
                if trim and not r.blocks and r.host_blocks:
                    self._trim_reload(r)  # copy budget: reload what hides, recompute the rest
                # prefix cache: a cached prompt prefix counts as computed before the chunk is
                # sized; its blocks are taken only if the rest of the chunk fits too
                if pc and r.prefix is not None and not r.blocks and not r.computed:
                    hit, evictable = kv.match_prefix(r)
                    if hit:
                        q = min(r.pending - hit * bs, budget)
                        if -(-(hit * bs + q) // bs) - hit > kv.free - evictable:
                            break
                        self._prefix_hit(r, hit)
                q = min(r.pending, budget)
                if not kv.allocate(r, r.computed + q):
                    break
                waiting.pop()
                running.append(r)
                self._add(out, r, q, m.seq_time(q, r.computed))
        if not out.reqs and out.preempted:
            # the request that needed KV was itself the victim and vLLM's loop stopped there:
            # vLLM then runs no model step and schedules again at once (its preemption freed
            # KV); do the same, so a caller never sees an empty step from an engine with work.
            # Terminates: every pass preempts a running request.
            again = self._schedule(now)
            again.preempted[:0] = out.preempted
            return again
        return out

    def update_from_output(self, out: SchedulerOutput, now: float) -> list[Request]:
        if self.vtc is not None:
            for r, q in zip(out.reqs, out.num_tokens):
                self.vtc.charge(r, q, q == 1 and r.computed > 0)
        return super().update_from_output(out, now)


register_policy(
    "vllm-fcfs", RunningFirstScheduler,
    "vLLM v1 FCFS: running first, chunked prefill, token budget 8192, newest-first recompute "
    "preemption, no waiting-queue preemption",
)
register_policy(
    "vllm-priority", RunningFirstScheduler,
    "vLLM v1 --scheduling-policy priority: waiting heap by (priority, arrival), preempts the "
    "worst-priority running request only when KV runs out",
    priority=True,
)
register_policy(
    "sarathi-fcfs", RunningFirstScheduler,
    "Sarathi-Serve: decode-first stall-free batching, fixed token budget 2048, FCFS",
    decode_first=True, max_num_batched_tokens=2048,
)
register_policy(
    "sarathi-priority", RunningFirstScheduler,
    "Sarathi-Serve with strict (priority, arrival) order for running and waiting requests",
    decode_first=True, priority=True, sort_running=True, max_num_batched_tokens=2048,
)
register_policy(
    "vtc", RunningFirstScheduler,
    "Weighted Virtual Token Counter fairness between priority classes (VTC, OSDI'24): admits "
    "from the class with the least weighted service; w_in=1, w_out=2",
    fairness="cls",
)

"""SlideBatching's batch decision for an engine that forms its own batches (the vLLM plug-in).

Our simulator and emulator walk the ranked queue with our KV block manager
(``UnifiedQueueScheduler._walk``). vLLM owns KV allocation and batch formation, so the plug-in
cannot hand it a batch; what it can set each step is vLLM's token budget
(``max_num_scheduled_tokens``), the order of its running list and waiting queue, and which
running requests sit this step out (``Request.next_decode_eligible_step``, the per-request skip
vLLM's own scheduler honours, which its diffusion scheduler uses the same way).

:func:`plan_batch` walks the ranked order as SlideBatching's step 7 does, without KV: the
predicted step time starts at c0; a decode adds its step cost and ends the walk if it would pass
the latency budget; a prefill takes the largest chunk that fits the time left (the *time-sized
chunk*), and ends the walk if that chunk is under ``min_chunk`` unless it finishes the prompt;
the first item is always taken (an empty batch would stall the engine). Waiting requests need a
free sequence slot, running ones hold theirs. The result is a :class:`BatchPlan`: the tokens the
walk scheduled (vLLM's token budget for the step), and the running requests it did not reach
(*decode pacing*: they are ahead of their deadlines, or less valuable, and sit out one step so
the step's time goes to what the order ranks first). Each part can be switched off:

* ``latency_budget`` off: the walk's budget is unbounded, only the token and sequence caps hold;
* ``time_chunks`` off: a prefill takes all its pending tokens up to the token cap (vLLM's rule);
* ``pacing`` off: no running request sits out; the token budget grows by one token per running
  request the walk did not reach, so that their decodes still run (vLLM runs running requests
  first; a running prefill among them gets one more token, not its chunk).

Cost: the walk stops at the budget, so it touches the batch plus the waiting requests it skips
for want of a slot, not the whole queue. Pure Python over the plug-in's shadow requests; no vLLM
import, so it is unit-tested without vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...core.request import Request
from ...latency.model import LatencyModel


@dataclass(slots=True)
class BatchPlan:
    """What the plug-in imposes on vLLM's next ``schedule()``."""

    token_budget: int  # vLLM's max_num_scheduled_tokens for the step
    paced: list[Any] = field(default_factory=list)  # running vLLM requests that sit out
    taken_running: int = 0  # running requests the walk scheduled
    admitted: int = 0  # waiting requests the walk scheduled
    predicted_s: float = 0.0  # predicted step time of the planned batch (with c0)
    # what ended the walk of the order: "tokens" (the token cap), "time" (the latency budget),
    # "" (it reached the end of what it could take); diagnostics (PROSERVE_PLUGIN_TIMING)
    stop: str = ""


def plan_batch(
    order: Sequence[Request],
    budget: float,
    model: LatencyModel,
    *,
    running: Collection[Any],
    free_slots: int,
    token_cap: int,
    min_chunk: int,
    latency_budget: bool = True,
    time_chunks: bool = True,
    pacing: bool = True,
    late: Sequence[Request] = (),
    late_budget: float = 0.0,
    late_tokens: int = 0,
    running_order: Sequence[tuple[int, Request]] | None = None,
) -> BatchPlan:
    """Walk ``order`` (shadow requests whose ``handle`` is the vLLM request) under ``budget``.

    ``running`` holds the vLLM requests in vLLM's running list (a set, for membership);
    ``free_slots`` is how many more requests vLLM may admit this step. ``late`` is walked first
    under ``late_budget`` and ``late_tokens`` (``slide-bounded``'s late slice,
    :meth:`Ranker.late_work`); the step's
    time then carries on into the walk of ``order``, which skips what the slice took.
    ``running_order``, the running shadows with their positions in ``order`` (ascending), lets
    the walk jump over the waiting requests once no sequence slot is left (under overload most of
    a long queue), so the walk costs the batch, not the queue.
    """
    if not latency_budget:
        budget = math.inf
    d1, d2 = model.d1, model.d2
    st = _Walk(t=model.c0, free_slots=free_slots)

    def walk(items: Sequence[Request], limit: float, skip: set[int],
             jump: Sequence[tuple[int, Request]] | None = None, cap: int = token_cap) -> None:
        for i, sh in enumerate(items):
            room = cap - st.tokens
            if room <= 0:
                st.stop = "tokens"
                return
            if id(sh) in skip:
                continue
            h = sh.handle
            is_running = h in running
            if jump is not None and not is_running and st.free_slots <= 0:
                # only running requests can still be taken: walk them alone from here on
                walk([r for pos, r in jump if pos > i], limit, skip, cap=cap)
                return
            p = sh.computed
            pend = sh.prompt_len + sh.generated - p
            left = limit - st.t
            if sh.generated > 0 and pend <= 1:  # decode stage
                cost = d1 + d2 * (p + 1)
                if cost > left and st.tokens:
                    st.stop = "time"
                    return
                q = 1
            else:
                if not is_running and st.free_slots <= 0:
                    continue  # no sequence slot: vLLM would not admit it; running ones may run
                pend = max(pend, 1)
                q = model.max_chunk(left, p, min(pend, room)) if time_chunks else min(pend, room)
                if q < pend and q < min_chunk:
                    if st.tokens:
                        st.stop = "time"
                        return
                    q = min(pend, room, min_chunk)
                cost = model.seq_time(q, p)
            if is_running:
                st.taken.add(id(h))
            else:
                st.free_slots -= 1
                st.admitted += 1
            st.took.add(id(sh))
            st.tokens += q
            st.t += cost

    if late and late_budget > 0:
        walk(late, late_budget, set(), cap=min(late_tokens or token_cap, token_cap))
        st.stop = ""  # the slice's own limits end the slice, not the step
    walk(order, budget, st.took, running_order)
    plan = BatchPlan(token_budget=max(st.tokens, 1), taken_running=len(st.taken),
                     admitted=st.admitted, predicted_s=st.t, stop=st.stop)
    left_out = [h for h in running if id(h) not in st.taken]
    if pacing:
        plan.paced = left_out
    else:
        plan.token_budget = min(plan.token_budget + len(left_out), token_cap)
    return plan


@dataclass(slots=True)
class _Walk:
    """The walk's running totals."""

    t: float
    free_slots: int
    tokens: int = 0
    admitted: int = 0
    stop: str = ""
    taken: set[int] = field(default_factory=set)  # id() of running vLLM requests taken
    took: set[int] = field(default_factory=set)  # id() of shadows taken

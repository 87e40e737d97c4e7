"""SlideBatching (ProServe, section 2 of docs/reference): the engine-tier policy.

Every iteration, for each request r in the one queue:

1. ``t_hat(r)``: its predicted cost this iteration without c0 (all remaining prompt tokens for a
   prefill-stage request, one decode step for a decode-stage one).
2. ``remain(r)``: time left until its next token's deadline. The reference code's anchored form
   (default) for decode-stage requests: ``first_token_time + generated * TPOT_SLO - now``; the
   strict TDG form ``arrival + TTFT_SLO + generated * TPOT_SLO - now`` with
   ``deadline_mode="strict"``. The TDG *metric* always uses the strict form.
3. Latency budget ``B = max(min remain over feasible r, eps)`` with feasible meaning
   ``remain >= t_hat + c0`` and ``eps = eps_frac * min TPOT SLO``; unbounded if none is feasible.
4. Load judgment ``Phi = sum(t_hat) * B / (B - c0)``: time to drain the queue when each batch pays
   c0 (infinite when ``B <= c0``: every batch would be all overhead).
5. URGENT iff ``remain < lam * Phi``. Light load: nothing is urgent and the order is EDF; as load
   rises the boundary slides and more of the queue is ordered by gain density.
6. Order: URGENT before NORMAL. URGENT decodes by density ``w_d * w / t_hat`` descending; then
   URGENT prefills: STARVED ones (``remain < -tau_s * TTFT_SLO``) by remain ascending, then the
   rest by density ``w_p * w / t_hat`` descending, partly prefilled before fresh. NORMAL: remain
   ascending (EDF). Ties: earlier arrival, then id.
7-8. The time-budgeted walk and tail preemption shared with the other unified-queue policies
   (:meth:`UnifiedQueueScheduler._walk`).

Ablations (the paper's): ``order="deadline"`` (pure EDF), ``order="density"`` (everything urgent),
``budget="tokens"`` (a fixed token budget instead of the latency budget). Ours: ``slide-nostarve``
(``tau_s = inf``). Under *sustained* overload the queue grows without bound, so with the
reference's ``tau_s = 1`` nearly every queued prefill soon counts as STARVED; STARVED prefills go
first by remain ascending, i.e. oldest first, and the policy degenerates to FCFS exactly when
gain-aware ordering matters most. Without the guard, requests that can no longer earn gain stay
behind those that still can.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from ..core.request import Request
from ..latency.model import LatencyModel
from .base import register_policy
from .deadline import UnifiedQueueScheduler
from .head_index import HeadIndex, IndexOutOfStep
from .table import strict_deadline

log = logging.getLogger(__name__)


def anchored_deadline(r: Request) -> float:
    """The reference code's form: once a request has its first token, its next token's deadline
    is anchored on that first token's actual time.

    It stays anchored while the request recomputes after a preemption: falling back to the
    strict form there would move a late request's deadline *earlier* (to the head of the EDF
    order) until it is one token short, then back later (to the tail), where another recomputing
    request preempts it before it decodes; two such requests then swap forever (a livelock the
    invariant tests found).
    """
    if r.generated > 0 and r.first_token_time >= 0:
        return r.first_token_time + r.generated * r.tpot_slo
    return strict_deadline(r)


class SlideBatching(UnifiedQueueScheduler):
    """SlideBatching with every parameter of the reference exposed.

    Args:
        lam: aggressiveness lambda of the sliding boundary (reference: 0.8-1.0 works best).
        eps_frac: floor of the latency budget as a fraction of the tightest TPOT SLO (0.65).
        tau_s: starvation guard; a prefill more than ``tau_s`` TTFT SLOs late goes first.
        min_chunk: smallest prefill chunk worth scheduling unless it finishes the prompt (50).
        w_p, w_d: first-token and decode-token weights of TDG used in the densities.
        deadline_mode: ``"anchored"`` (default: the authors' code, decode deadlines from the
            actual first-token time) or ``"strict"`` (the TDG metric's fixed deadlines).
        order: ``"slide"`` (default), ``"deadline"`` or ``"density"`` (ablations).
        budget: ``"latency"`` (default) or ``"tokens"`` (ablation: only the token/seq caps).
    """

    def __init__(
        self,
        model: LatencyModel,
        *,
        lam: float = 1.0,
        eps_frac: float = 0.65,
        tau_s: float = 1.0,
        w_p: float = 1.0,
        w_d: float = 1.0,
        deadline_mode: str = "anchored",
        order: str = "slide",
        budget: str = "latency",
        **kw,
    ) -> None:
        if deadline_mode not in ("strict", "anchored"):
            raise ValueError("deadline_mode must be 'strict' or 'anchored'")
        super().__init__(
            model, deadline=anchored_deadline if deadline_mode == "anchored" else strict_deadline,
            **kw,
        )
        if order not in ("slide", "deadline", "density"):
            raise ValueError("order must be 'slide', 'deadline' or 'density'")
        if budget not in ("latency", "tokens"):
            raise ValueError("budget must be 'latency' or 'tokens'")
        if lam < 0 or eps_frac < 0 or tau_s < 0:
            raise ValueError("lam, eps_frac and tau_s must be >= 0")
        self.lam = lam
        self.eps_frac = eps_frac
        self.tau_s = tau_s
        self.w_p = w_p
        self.w_d = w_d
        self.order = order
        self.orders_by_value = order != "deadline"  # density by weight, unless pure EDF
        self.use_latency_budget = budget == "latency"
        # Introspection for timelines / tests: the last iteration's budget, Phi and urgent count.
        self.last_budget = math.inf
        self.last_phi = 0.0
        self.last_urgent = 0
        self.head_index: HeadIndex | None = None
        self.index_rebuilds = 0  # times the head index was found out of step and rebuilt

    def use_head_index(self) -> None:
        """Answer :meth:`ordered_head` from an incrementally kept index in plain Python instead
        of numpy over the whole queue each step (engine/head_index.py says why; the vLLM
        plug-in turns it on). Same order; only the ``slide`` order with ``w_p > 0`` has one."""
        if self.order != "slide" or not self.w_p > 0:
            raise ValueError("the head index needs order='slide' and w_p > 0")
        if self.head_index is None:
            self.head_index = HeadIndex(self)
            self.table.index = self.head_index

    def ordered_head(self, now: float, k: int,
                     must: Sequence[Request] = ()) -> tuple[list[Request], float]:
        if self.head_index is not None and len(self.table) > self.small_queue:
            try:
                return self.head_index.head(now, k, must)
            except IndexOutOfStep:  # a bug, never seen: inside vLLM, keep serving (numpy path)
                log.exception("SlideBatching's head index disagreed with its table; rebuilt")
                self.index_rebuilds += 1
                self.head_index = self.table.index = None
                self.use_head_index()
        return super().ordered_head(now, k, must)

    def budget_and_phi(self, min_feasible: float, min_tpot: float,
                       sum_t: float) -> tuple[float, float]:
        """Steps 3-4: latency budget B and load judgment Phi from the queue's aggregates."""
        c0 = self.model.c0
        budget = math.inf
        if self.use_latency_budget and min_feasible < math.inf:
            budget = max(min_feasible, self.eps_frac * min_tpot)
        if budget == math.inf:
            return budget, sum_t
        if budget > c0:
            return budget, sum_t * budget / (budget - c0)
        return budget, math.inf  # every batch would be all overhead

    def row_key(self, r: Request, t_hat: float, rem: float,
                urgent: bool) -> tuple[int, float]:
        """Step 6 for one request in plain Python, (group, key): what :meth:`plan_keys`
        computes with numpy, for the short-queue path and the head index's running rows."""
        if not urgent:
            return 4, rem
        density = r.weight / t_hat if t_hat > 0 else math.inf
        if not r.in_prefill:
            return 0, -density * self.w_d
        if rem < -self.tau_s * r.ttft_slo:
            return 1, rem
        return (2 if r.computed > 0 else 3), -density * self.w_p

    def plan_keys(self, now: float,
                  slots: np.ndarray) -> tuple[tuple[np.ndarray, ...], float]:
        t = self.table
        c0 = self.model.c0
        t_hat = t.t_hat[slots]
        rem = t.dl[slots] - now
        pre = t.pre[slots]
        feasible = rem >= t_hat + c0
        min_feasible = float(rem[feasible].min()) if feasible.any() else math.inf
        budget, phi = self.budget_and_phi(
            min_feasible, float(t.tpot[slots].min()), float(t_hat.sum()))
        # 5. sliding boundary
        if self.order == "deadline":
            urgent = np.zeros(slots.size, bool)
        elif self.order == "density":
            urgent = np.ones(slots.size, bool)
        else:
            urgent = rem < self.lam * phi
        # 6. order: group 0 urgent decodes, 1 starved prefills, 2 partial prefills,
        #    3 fresh prefills (1-3 urgent), 4 normal; then the group's key; ties arrival, id
        starved = rem < -self.tau_s * t.ttft[slots]
        group = np.where(
            ~urgent, 4,
            np.where(~pre, 0, np.where(starved, 1, np.where(t.partial[slots], 2, 3))),
        )
        with np.errstate(divide="ignore"):
            density = t.weight[slots] / t_hat
        key = np.where(
            (group == 1) | (group == 4), rem,
            -density * np.where(pre, self.w_p, self.w_d),
        )
        self.last_budget, self.last_phi = budget, phi
        self.last_urgent = int(urgent.sum())
        return (t.rid[slots], t.arrival[slots], key, group), budget

    def plan_small(self, now: float) -> tuple[list[Request], float]:
        t = self.table
        dl, th = t.py_dl, t.py_t_hat
        c0 = self.model.c0
        rows = []
        sum_t = 0.0
        min_feasible = math.inf
        min_tpot = math.inf
        for s, r in t.items():
            t_hat = th[s]
            rem = dl[s] - now
            sum_t += t_hat
            if rem >= t_hat + c0 and rem < min_feasible:
                min_feasible = rem
            if r.tpot_slo < min_tpot:
                min_tpot = r.tpot_slo
            rows.append((r, t_hat, rem))
        budget, phi = self.budget_and_phi(min_feasible, min_tpot, sum_t)
        bound = self.lam * phi
        mode = self.order
        keys = []
        urgent = 0
        row_key = self.row_key
        for r, t_hat, rem in rows:
            if mode == "deadline":
                is_urgent = False
            elif mode == "density":
                is_urgent = True
            else:
                is_urgent = rem < bound
            urgent += is_urgent
            keys.append((*row_key(r, t_hat, rem, is_urgent), r.arrival, r.id, r))
        keys.sort()
        self.last_budget, self.last_phi, self.last_urgent = budget, phi, urgent
        return [k[4] for k in keys], budget


register_policy(
    "slide", SlideBatching,
    "ProServe SlideBatching as published (paper + authors' code: anchored decode deadlines, "
    "tau_s = 1): latency budget, load judgment, URGENT/NORMAL sliding boundary, density + EDF "
    "orders, starvation guard, fractional chunked prefill, tail preemption",
)
register_policy(
    "slide-deadline-only", SlideBatching,
    "SlideBatching ablation: pure EDF order (nothing urgent), latency budget kept",
    order="deadline",
)
register_policy(
    "slide-density-only", SlideBatching,
    "SlideBatching ablation: pure gain-density order (everything urgent), latency budget kept",
    order="density",
)
register_policy(
    "slide-nostarve", SlideBatching,
    "SlideBatching without the starvation guard (tau_s = inf): under sustained overload the "
    "reference guard (tau_s = 1) marks most queued prefills STARVED and serves them oldest-first, "
    "i.e. FCFS; see docs/BENCHMARKS.md",
    tau_s=math.inf,
)
register_policy(
    "slide-token-budget", SlideBatching,
    "SlideBatching ablation: fixed token budget (2048) instead of the latency budget",
    budget="tokens", max_num_batched_tokens=2048,
)

"""SlideBatching (ProServe, section 2 of docs/reference): the engine-tier policy.

Every iteration, for each request r in the one queue:

1. ``t_hat(r)``: its predicted cost this iteration without c0 (all remaining prompt tokens for a
   prefill-stage request, one decode step for a decode-stage one).
2. ``remain(r)``: time left until its next token's deadline. Strict TDG form (default):
   ``arrival + TTFT_SLO + generated * TPOT_SLO - now``; the reference code's anchored form for
   decode-stage requests: ``first_token_time + generated * TPOT_SLO - now``.
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
``budget="tokens"`` (a fixed token budget instead of the latency budget).
"""

from __future__ import annotations

import math

from ..core.request import Request
from ..latency.model import LatencyModel
from .base import SchedulerOutput, register_policy
from .deadline import UnifiedQueueScheduler


class SlideBatching(UnifiedQueueScheduler):
    """SlideBatching with every parameter of the reference exposed.

    Args:
        lam: aggressiveness lambda of the sliding boundary (reference: 0.8-1.0 works best).
        eps_frac: floor of the latency budget as a fraction of the tightest TPOT SLO (0.65).
        tau_s: starvation guard; a prefill more than ``tau_s`` TTFT SLOs late goes first.
        min_chunk: smallest prefill chunk worth scheduling unless it finishes the prompt (50).
        w_p, w_d: first-token and decode-token weights of TDG used in the densities.
        deadline_mode: ``"strict"`` (TDG deadlines) or ``"anchored"`` (reference code).
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
        deadline_mode: str = "strict",
        order: str = "slide",
        budget: str = "latency",
        **kw,
    ) -> None:
        super().__init__(model, **kw)
        if deadline_mode not in ("strict", "anchored"):
            raise ValueError("deadline_mode must be 'strict' or 'anchored'")
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
        self.anchored = deadline_mode == "anchored"
        self.order = order
        self.use_latency_budget = budget == "latency"
        # Introspection for timelines / tests: the last iteration's budget, Phi and urgent count.
        self.last_budget = math.inf
        self.last_phi = 0.0
        self.last_urgent = 0

    def schedule(self, now: float) -> SchedulerOutput:
        out = self.new_output()
        if not self.active:
            return out
        m = self.model
        c0, c1, c2, c3, c4, d1, d2 = m.c0, m.c1, m.c2, m.c3, m.c4, m.d1, m.d2
        anchored = self.anchored
        # Pass 1: per-request cost and slack (plain Python: for the queue sizes an engine holds
        # this beats building numpy arrays from objects; see benchmarks/bench_scheduler.py).
        rows: list[tuple[Request, float, float, bool]] = []
        sum_t = 0.0
        min_feasible = math.inf
        min_tpot = math.inf
        for r in self.active.values():
            g = r.generated
            p = r.computed
            pend = r.prompt_len + g - p
            if g == 0 or pend > 1:
                t = c1 * pend * pend + (c2 + c3 * p) * pend + c4 * p
                pre = True
                rem = r.arrival + r.ttft_slo + g * r.tpot_slo - now
            else:
                t = d1 + d2 * (p + 1)
                pre = False
                if anchored:
                    rem = r.first_token_time + g * r.tpot_slo - now
                else:
                    rem = r.arrival + r.ttft_slo + g * r.tpot_slo - now
            sum_t += t
            if rem >= t + c0 and rem < min_feasible:
                min_feasible = rem
            if r.tpot_slo < min_tpot:
                min_tpot = r.tpot_slo
            rows.append((r, t, rem, pre))
        budget = math.inf
        if self.use_latency_budget and min_feasible < math.inf:
            budget = max(min_feasible, self.eps_frac * min_tpot)
        if budget == math.inf:
            phi = sum_t
        elif budget > c0:
            phi = sum_t * budget / (budget - c0)
        else:
            phi = math.inf
        # Pass 2: sort keys. Group 0 urgent decodes, 1 starved prefills, 2 partial prefills,
        # 3 fresh prefills (1-3 urgent), 4 normal.
        bound = self.lam * phi
        mode = self.order
        tau_s = self.tau_s
        wp, wd = self.w_p, self.w_d
        keys = []
        urgent = 0
        for r, t, rem, pre in rows:
            if mode == "deadline":
                is_urgent = False
            elif mode == "density":
                is_urgent = True
            else:
                is_urgent = rem < bound
            if not is_urgent:
                keys.append((4, rem, r.arrival, r.id, r))
                continue
            urgent += 1
            if not pre:
                keys.append((0, -wd * r.weight / t if t > 0 else -math.inf, r.arrival, r.id, r))
            elif rem < -tau_s * r.ttft_slo:
                keys.append((1, rem, r.arrival, r.id, r))
            else:
                dens = -wp * r.weight / t if t > 0 else -math.inf
                keys.append((2 if r.computed > 0 else 3, dens, r.arrival, r.id, r))
        keys.sort()
        self.last_budget, self.last_phi, self.last_urgent = budget, phi, urgent
        self._walk([k[4] for k in keys], budget, out)
        return out


register_policy(
    "slide", SlideBatching,
    "ProServe SlideBatching: latency budget, load judgment, URGENT/NORMAL sliding boundary, "
    "density + EDF orders, starvation guard, fractional chunked prefill, tail preemption",
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
    "slide-token-budget", SlideBatching,
    "SlideBatching ablation: fixed token budget (2048) instead of the latency budget",
    budget="tokens", max_num_batched_tokens=2048,
)

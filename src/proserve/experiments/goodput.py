"""``proserve goodput``: the largest request rate a fleet sustains at a target attainment, and the
fluid bound it is measured against (polyserve.md section 1).

**Goodput** (the DistServe/PolyServe convention): the largest rate at which at least
``threshold`` (default 90%) of requests meet the deadline SLO, every token by
``arrival + TTFT + i * TPOT``. Found by a parallel k-section search: each round simulates
``workers`` rates spread over the current bracket at once (independent points, one process each),
keeps the highest passing and lowest failing rate, and stops when the bracket is within
``rel_tol`` of its lower end. The first bracket comes from doubling/halving a guess.

**Optimal bound** (fluid per-request packing, no queueing, fragmentation or scaling lag): a
request of prompt p, output o, TPOT SLO T and mean context L = p + o/2 costs
``prefill_time(p) + o * step(B) / B`` server-seconds, where B is the largest decode batch whose
iteration ``step(B) = c0 + B * (d1 + d2 * L)`` stays within T and whose KV (B * (p + o) tokens)
fits (the prefill shares the iterations whose c0 the decodes pay, and takes the cheapest uniform
chunking, :func:`min_prefill_s`); optimal goodput per instance =
requests / the ideal server-seconds of the cheapest ``threshold`` of them (a schedule meeting
90% may leave the dearest 10% late), the rate one server could sustain. It assumes every
instance runs only requests of one TPOT (PolyServe's binning taken to the limit), so no schedule
can beat it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from typing import Any

import numpy as np

from ..core.request import Request
from ..latency.model import LatencyModel
from ..sim.run import SimConfig, build_workload, load_model, run


def _point(cfg: dict) -> dict:
    # a python-mode dump, not JSON: JSON turns inf (e.g. policy_args tau_s) into null
    r = run(SimConfig.model_validate(cfg))
    r["sim_wall_s"] = 0.0
    return r


def min_prefill_s(m: LatencyModel, q: int) -> float:
    """Cheapest prefill of a ``q``-token prompt over uniform chunkings (one chunk, powers of two
    from 16 tokens, and the size minimising ``c1*q*s + c4*q^2/(2s)``): the fitted model charges a
    whole-prompt prefill ``c1*q^2`` but a chunked one mostly ``c3*q*p``, and the bound must be
    no dearer than any schedule the simulator can run."""
    if q <= 1:
        return m.prefill_time(max(q, 0))
    cand = {q} | {1 << k for k in range(4, max(q.bit_length(), 5)) if (1 << k) < q}
    if m.c1 > 0:
        cand.add(max(1, min(q, int(math.sqrt(m.c4 * q / (2 * m.c1))))))
    best = math.inf
    for c in cand:
        n = -(-q // c)
        last = q - (n - 1) * c
        full = n - 1  # chunks of size c at prefixes 0, c, ..., (n-2)c
        pre = c * full * (full - 1) / 2  # sum of their prefixes
        cost = (n * m.c5 + m.c1 * (full * c * c + last * last) + m.c2 * q
                + m.c3 * (c * pre + last * full * c) + m.c4 * (pre + full * c))
        best = min(best, cost)
    return best


def request_cost_s(m: LatencyModel, r: Request) -> float:
    """Ideal server-seconds of one request (module docstring)."""
    ctx = r.prompt_len + r.output_len / 2
    per_seq = m.d1 + m.d2 * ctx
    b_tpot = math.floor((r.tpot_slo - m.c0) / per_seq) if r.tpot_slo > m.c0 else 0
    b_kv = m.kv_tokens // max(r.prompt_len + r.output_len, 1)
    b = max(1, min(b_tpot, b_kv))  # one request at a time is always possible (it may be late)
    step = m.c0 + b * per_seq
    # the prefill rides in batches whose c0 the decodes already pay: only its own cost counts
    return min_prefill_s(m, r.prompt_len) + (r.output_len - 1) * step / b


def optimal_per_instance(cfg: SimConfig, rate: float, threshold: float = 1.0) -> float:
    """Fluid bound on goodput per instance (req/s) for the workload at ``rate``: at an
    attainment ``threshold`` a schedule need only serve that fraction of the requests, so the
    bound pays for the cheapest ``threshold`` of them (with heavy-tailed prompts the dearest
    tenth can be a third of the work)."""
    m = load_model(cfg)
    reqs, _ = build_workload(cfg.model_copy(update={"rate": rate}), m)
    if not reqs:
        raise ValueError("the workload is empty")
    costs = np.sort([request_cost_s(m, r) for r in reqs])
    keep = max(1, math.ceil(threshold * len(costs) - 1e-9))
    return len(reqs) / float(np.sum(costs[:keep]))


def search(base: SimConfig, *, threshold: float = 0.9, guess: float | None = None,
           rel_tol: float = 0.02, workers: int | None = None, max_rounds: int = 30,
           on_point: Callable[[float, float], None] | None = None) -> dict[str, Any]:
    """Largest rate with deadline attainment >= ``threshold``; every simulated point is kept."""
    if not 0 < threshold <= 1:
        raise ValueError("threshold must be in (0, 1]")
    workers = max(1, workers or min(os.cpu_count() or 1, 4))
    points: dict[float, dict] = {}

    def evaluate(rates: list[float], ex) -> None:
        todo = [r for r in dict.fromkeys(rates) if r not in points]
        cfgs = [base.model_copy(update={"rate": r}).model_dump() for r in todo]
        results = list(ex.map(_point, cfgs)) if ex else [_point(c) for c in cfgs]
        for r, res in zip(todo, results):
            points[r] = res
            if on_point:
                on_point(r, res["deadline_attainment"])

    def ok(r: float) -> bool:
        return points[r]["deadline_attainment"] >= threshold

    def bracket() -> tuple[float | None, float | None]:
        """(highest passing rate below the lowest failing one, that failing rate)."""
        failing = [r for r in points if not ok(r)]
        hi = min(failing) if failing else None
        below = [r for r in points if ok(r) and (hi is None or r < hi)]
        return (max(below) if below else None), hi

    rate = guess or float(base.instances)
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as ex:
        evaluate([rate], ex)
        for _ in range(max_rounds):  # bracket: double up or halve down, several at once
            lo, hi = bracket()
            if lo is not None and hi is not None:
                break
            if hi is None:
                top = max(points)
                evaluate([top * 2 ** (k + 1) for k in range(workers)], ex)
            else:
                bottom = min(points)
                evaluate([bottom / 2 ** (k + 1) for k in range(workers)], ex)
            if max(points) > 1e6 or min(points) < 1e-3:
                raise ValueError(f"no rate between 0.001 and 1e6 req/s brackets a "
                                 f"{threshold:.0%} attainment")
        else:
            raise ValueError("no bracket found")
        for _ in range(max_rounds):  # k-section of [lo, hi]
            lo, hi = bracket()
            if hi - lo <= rel_tol * lo:
                break
            step = (hi - lo) / (workers + 1)
            evaluate([lo + step * (k + 1) for k in range(workers)], ex)
        lo, hi = bracket()
    best = points[lo]
    opt = optimal_per_instance(base, lo, threshold)
    fleet_n = base.instances if base.mode == "colocated" else (
        (base.prefill_instances or 0) + (base.decode_instances or 0))
    # per instance in use (PolyServe's convention: an auto-scaled fleet frees the rest), which
    # for a fixed fleet is the fleet size
    used = best.get("fleet", {}).get("mean_instances") or fleet_n
    per_inst = lo / used
    return {
        "goodput_rps": lo,
        "goodput_per_instance": per_inst,
        "mean_instances": used,
        "fleet_instances": fleet_n,
        "goodput_per_fleet_instance": lo / fleet_n,
        "optimal_goodput_per_instance": opt,
        "fraction_of_optimal": per_inst / opt if opt > 0 else None,
        "threshold": threshold,
        "attainment": best["deadline_attainment"],
        "server_seconds": base.instances * best["sim_end_s"],
        "first_failing_rps": hi,
        "per_class": {c: {k: v.get(k) for k in ("deadline_attainment", "slo_attainment",
                                                  "ttft_p99", "tpot_p99", "tdg_ratio")}
                      for c, v in best["per_class"].items()},
        "per_tier": {c: {k: v.get(k) for k in ("deadline_attainment", "ttft_p99", "tpot_p99")}
                     for c, v in best["per_class"].items()},
        "fleet": best.get("fleet"),
        "points": [{"rate": r, "deadline_attainment": p["deadline_attainment"],
                    "tdg_ratio": p["tdg_ratio"], "ttft_p99": p["ttft_p99"],
                    "mean_instances": p.get("fleet", {}).get("mean_instances")}
                   for r, p in sorted(points.items())],
        "config": best["config"],
    }


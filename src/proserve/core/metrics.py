"""Aggregate metrics: TDG gain and ratio, SLO attainment, goodput, percentiles; overall, per class.

Per-request counters are maintained online by :meth:`Request.emit_token`; this module only folds
them into summaries with numpy at the end of a run, so no per-token objects exist.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from .request import Request, Status

PERCENTILES = (50, 90, 99)


def _pct(values: np.ndarray, q: float) -> float | None:
    v = values[~np.isnan(values)]
    return float(np.percentile(v, q)) if v.size else None


def prefix_stats(reqs: Sequence[Request]) -> dict:
    """Prefix caching: ``prefix_cached_tokens``, the prompt tokens found in the cache when each
    request was first scheduled (its prefill skipped them), and ``prefix_hit_rate``, their share
    of the prompt tokens of the requests that reached the engine (were scheduled at least once:
    a request still queued when the run ended had no lookup). Hits when a preempted request
    recomputes are not counted (they show in the engines' ``prefix_hit_tokens``)."""
    cached = prompt = 0
    for r in reqs:
        if r.computed > 0 or r.generated > 0 or r.preemptions > 0:
            cached += r.cached_tokens
            prompt += r.prompt_len
    return {"prefix_cached_tokens": cached,
            "prefix_hit_rate": cached / prompt if prompt else 0.0}


def summarize_group(
    reqs: Sequence[Request], w_p: float = 1.0, w_d: float = 1.0, span_s: float | None = None
) -> dict:
    """Metrics for one group of requests.

    ``span_s`` is the time base for goodput (requests/s that met their SLO); by default the span
    from the first arrival to the last token of the group.
    """
    n = len(reqs)
    if n == 0:
        return {"requests": 0}
    gen = np.fromiter((r.generated for r in reqs), float, n)
    out_len = np.fromiter((r.output_len for r in reqs), float, n)
    weight = np.fromiter((r.weight for r in reqs), float, n)
    first_ok = np.fromiter((r.first_on_time for r in reqs), float, n)
    dec_ok = np.fromiter((r.decode_on_time for r in reqs), float, n)
    finished = np.fromiter((r.status == Status.FINISHED for r in reqs), bool, n)
    rejected = int(sum(r.status == Status.REJECTED for r in reqs))
    slo = np.fromiter((r.slo_met() for r in reqs), bool, n)
    # a request that never got its first token (unfinished when the run ended) waited at least
    # until then: its TTFT counts as that wait (a lower bound), so an unserved tail is never
    # hidden from the percentiles. Rejected requests were answered at once and count in
    # ``rejected``, not in latency.
    ttft = np.fromiter((r.ttft() if r.generated else (
        r.finish_time - r.arrival if r.status == Status.UNFINISHED and r.finish_time >= 0
        else math.nan) for r in reqs), float, n)
    tpot = np.fromiter((r.tpot() for r in reqs), float, n)
    e2e = np.fromiter((r.e2e() for r in reqs), float, n)
    gain = float(np.sum(weight * (w_p * first_ok + w_d * dec_ok)))
    max_gain = float(np.sum(weight * (w_p + w_d * np.maximum(out_len - 1, 0))))
    tokens_on_time = float(np.sum(first_ok + dec_ok))
    if span_s is None:
        t0 = min(r.arrival for r in reqs)
        t1 = max((r.last_token_time for r in reqs if r.generated), default=t0)
        span_s = t1 - t0
    res = {
        "requests": n,
        "finished": int(finished.sum()),
        "unfinished": int(n - finished.sum()) - rejected,
        "rejected": rejected,
        "tdg_gain": gain,
        "tdg_max": max_gain,
        "tdg_ratio": gain / max_gain if max_gain > 0 else 0.0,
        "slo_attainment": float(slo.mean()),
        "ttft_attainment": float(first_ok.mean()),  # first token within the TTFT SLO
        # PolyServe's deadline SLO: finished with *every* token by arrival + TTFT + i * TPOT
        "deadline_attainment": float(np.mean(finished & (first_ok > 0)
                                             & (dec_ok == np.maximum(out_len - 1, 0)))),
        "token_deadline_attainment": (
            tokens_on_time / float(out_len.sum()) if out_len.sum() else 0.0
        ),
        "goodput_rps": float(slo.sum()) / span_s if span_s > 0 else 0.0,
        "output_tokens": int(gen.sum()),
        "preemptions": int(sum(r.preemptions for r in reqs)),
        **prefix_stats(reqs),
    }
    for name, arr in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
        for q in PERCENTILES:
            res[f"{name}_p{q}"] = _pct(arr, q)
    # the longest time any request waited for its first token (censored waits included)
    waits = ttft[~np.isnan(ttft)]
    res["max_wait_s"] = float(waits.max()) if waits.size else None
    return res


def summarize(
    reqs: Iterable[Request], w_p: float = 1.0, w_d: float = 1.0, class_order: Sequence[str] = ()
) -> dict:
    """Overall metrics plus ``per_class``: a map from class name to the same metrics.

    Goodput uses one time base (the whole run's span) for every class so that per-class goodputs
    add up to the overall one.
    """
    reqs = list(reqs)
    overall = summarize_group(reqs, w_p, w_d)
    if not reqs:
        overall["per_class"] = {}
        return overall
    t0 = min(r.arrival for r in reqs)
    t1 = max((r.last_token_time for r in reqs if r.generated), default=t0)
    span = t1 - t0
    by_cls: dict[str, list[Request]] = {}
    for r in reqs:
        by_cls.setdefault(r.cls, []).append(r)
    names = [c for c in class_order if c in by_cls] + sorted(set(by_cls) - set(class_order))
    overall["per_class"] = {c: summarize_group(by_cls[c], w_p, w_d, span) for c in names}
    return overall


def clean_floats(obj):
    """Replace NaN/inf by None recursively so the JSON output is standard (and deterministic)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_floats(v) for v in obj]
    return obj

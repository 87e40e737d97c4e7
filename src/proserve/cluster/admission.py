"""Admission: serve a request now, let it wait for capacity, or refuse it (429).

One decision, used by the gateway (wall-clock time, real backends) and by the simulator
(``proserve simulate --admission``), so both decide the same way for the same state:

* **on time**: the request's predicted first token on the instance the router chose
  (:func:`proserve.cluster.view.predicted_ttft`) lands before its TTFT SLO -> admit;
* **late, sheddable class** -> refuse at once (``capacity_shed``, 429 + Retry-After): the caller
  would rather retry elsewhere or later than wait;
* **late, no queue timeout** (``queue_timeout_s = 0``, not sheddable) -> admit late: nothing to
  wait for;
* **late, waited less than the class's ``queue_timeout_s``** -> wait, and ask again when capacity
  frees (a request finishes) or the timeout passes;
* **late after the timeout** -> admit late, unless the prediction is past ``late_factor`` times
  the TTFT SLO (``queue_timeout``, 429): the backends are hopelessly behind, and an explicit
  refusal beats a response nobody will wait for.

No clock and no I/O: the caller passes ``now`` and how long the request has waited.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..core.request import Request

#: A request predicted past this many TTFT SLOs after its queue timeout is refused.
LATE_FACTOR = 10.0


class Decision(str, Enum):
    ADMIT = "admit"
    WAIT = "wait"
    SHED = "capacity_shed"  # sheddable class, late: 429 at once
    TIMEOUT = "queue_timeout"  # waited its class's timeout and still hopelessly late: 429


@dataclass(frozen=True, slots=True)
class ClassAdmission:
    """One class's admission settings (the gateway's ``class_settings``)."""

    queue_timeout_s: float = 5.0
    sheddable: bool = False


def decide(r: Request, predicted_s: float, now: float, waited_s: float,
           settings: ClassAdmission, late_factor: float = LATE_FACTOR) -> Decision:
    """What to do with ``r`` whose first token is predicted ``predicted_s`` from ``now``."""
    ttft = now + predicted_s - r.arrival
    if ttft < r.ttft_slo:
        return Decision.ADMIT
    if settings.sheddable:
        return Decision.SHED
    if settings.queue_timeout_s == 0:
        return Decision.ADMIT
    if waited_s < settings.queue_timeout_s:
        return Decision.WAIT
    return Decision.ADMIT if ttft < late_factor * r.ttft_slo else Decision.TIMEOUT

"""Admission control in the simulator, the gateway's own rule (``--admission``), under overload.

One trace at one rate, a sheddable low class, for each policy with and without admission: per
class SLO attainment (refused requests count as misses), how many were refused, and the longest
first-token wait of an *admitted* request against its class's queue timeout plus its TTFT SLO.
``--yield-shares`` adds rows with the low class judged with each ``yield_share`` (its predicted
TTFT stretched by ``1 / (1 - share)``, cluster/admission.py), at the first queue timeout;
``--yield-targets`` rows with an adaptive share instead (``yield_target``: it follows the high
class's SLO outcomes, cluster/admission.py's ``AdaptiveShare``).

    python benchmarks/admission_overload.py --trace azure-conv --rate 37.5 \\
        --yield-shares 0.5,0.75,0.9 --json docs/results/admission_azure-conv_37.5.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import table
from proserve.core.request import Status
from proserve.sim.run import SimConfig, run


def _point(args: tuple[dict, str, bool, float, float, float | None]) -> dict:
    base, policy, adm, timeout, share, target = args
    cfg = SimConfig(**base, policy=policy, admission=adm, shed_classes=["low"] if adm else [],
                    queue_timeout_s=timeout, yield_share=share, yield_target=target)
    r = run(cfg, keep_requests=True)
    reqs = r.pop("_requests")
    over = {}
    for c in r["per_class"]:
        adm_reqs = [q for q in reqs if q.cls == c and q.status != Status.REJECTED]
        # how far past (queue timeout + TTFT SLO) the worst admitted request got its first token
        # (a request that never got one counts with its wait until the run ended)
        excess = [(q.ttft() if q.generated else q.finish_time - q.arrival)
                  - (cfg.queue_timeout_s + q.ttft_slo) for q in adm_reqs]
        over[c] = {"admitted": len(adm_reqs), "over_bound": sum(e > 0 for e in excess),
                   "worst_excess_s": max(excess) if excess else None}
    return {"policy": policy, "admission": adm, "queue_timeout_s": timeout,
            "yield_share": share, "yield_target": target, "tdg_ratio": r["tdg_ratio"],
            "per_class": {c: {k: v[k] for k in ("slo_attainment", "rejected", "ttft_p99",
                                                 "max_wait_s", "tdg_ratio")}
                          for c, v in r["per_class"].items()},
            "admitted_wait": over}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--policies", default="slide-bounded,sarathi-priority")
    ap.add_argument("--queue-timeouts", default="5,0",
                    help="queue timeouts (s) to run with admission on (5 = the gateway default)")
    ap.add_argument("--yield-shares", default="",
                    help="comma-separated yield_share values for the sheddable low class "
                         "(rows with admission on at the first queue timeout); default: none")
    ap.add_argument("--yield-targets", default="",
                    help="comma-separated yield_target values: rows with the low class's "
                         "share adaptive instead of constant; default: none")
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    base = dict(trace=a.trace, rate=a.rate, duration=a.duration)
    timeouts = [float(x) for x in a.queue_timeouts.split(",")]
    shares = [float(x) for x in a.yield_shares.split(",") if x.strip()]
    bad = [x for x in shares if not 0 < x < 1]
    targets = [float(x) for x in a.yield_targets.split(",") if x.strip()]
    bad += [x for x in targets if not 0 < x < 1]
    if bad:
        raise SystemExit(f"--yield-shares/--yield-targets: each must be in (0, 1), got {bad}")
    pols = a.policies.split(",")
    jobs = [(base, p, False, 5.0, 0.0, None) for p in pols]
    jobs += [(base, p, True, t, 0.0, None) for p in pols for t in timeouts]
    jobs += [(base, p, True, timeouts[0], y, None) for p in pols for y in shares]
    jobs += [(base, p, True, timeouts[0], 0.0, g) for p in pols for g in targets]
    with ProcessPoolExecutor(max_workers=a.workers) as ex:
        res = list(ex.map(_point, jobs))
        # for reference: the high class's traffic alone (half the rate, every request high),
        # served by the first policy with nothing else on the engine and no admission. Not a
        # bound on admission: admission also holds back (and refuses) high requests that would
        # be late, which keeps them from delaying the others
        alone = ex.submit(run, SimConfig(trace=a.trace, rate=a.rate / 2, duration=a.duration,
                                         policy=a.policies.split(",")[0],
                                         classes="high:w=2,share=1")).result()
    rows = []
    for x in res:
        for c, m in x["per_class"].items():
            w = x["admitted_wait"][c]
            ex_s = w["worst_excess_s"]
            adm = f"on, {x['queue_timeout_s']:g} s" if x["admission"] else "off"
            if x["yield_share"]:
                adm += f", yield {x['yield_share']:g}"
            if x.get("yield_target") is not None:
                adm += f", target {x['yield_target']:g}"
            rows.append([x["policy"], adm, c,
                         f"{100 * m['slo_attainment']:.1f}", str(m["rejected"]),
                         f"{m['ttft_p99']:.1f}" if m["ttft_p99"] is not None else "-",
                         str(w["over_bound"]),
                         "-" if ex_s is None or math.isnan(ex_s) else f"{ex_s:.1f}"])
    print(f"{a.trace} @ {a.rate:g} req/s, {a.duration:g} s; low class sheddable when admission "
          f"is on (queue timeout as shown)")
    table(["policy", "admission", "class", "SLO att %", "refused", "TTFT p99 s",
           "admitted over timeout+SLO", "worst excess s"], rows)
    print(f"reference: the high class alone ({a.rate / 2:g} req/s, no low traffic, no "
          f"admission) attains "
          f"{100 * alone['slo_attainment']:.1f}%")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "config": base, "points": res,
            "high_alone": {"rate": a.rate / 2, "slo_attainment": alone["slo_attainment"]}},
            indent=1) + "\n")


if __name__ == "__main__":
    main()

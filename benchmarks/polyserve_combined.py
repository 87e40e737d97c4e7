"""Issue 12 item 7: ours (`polyserve-go`: PolyServe's tiers + GoRouting within a tier + a
deadline-ordered pending queue + slide-bounded engines) vs plain PolyServe (`polyserve` +
dynamic-chunk) vs plain ProServe (`go` + slide-bounded, a fixed fleet), on the same multi-tier
workload: TDG, deadline attainment and p99 TTFT at three rates, and goodput (>= 90% deadline
attainment), side by side in one run.

Workload: azure-conv lengths, Poisson arrivals, 4 TPOT tiers (20/30/40/60 ms, TTFT 5x unloaded)
with weights 4/3/2/1 (the tighter tier is the more valuable one), fleet of 8.

    python benchmarks/polyserve_combined.py --out docs/results/polyserve_combined.json
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import loadavg, table
from proserve.experiments.goodput import search
from proserve.sim.run import SimConfig, run

CLASSES = ("t20:w=4,tpot=20ms,ttft=5x;t30:w=3,tpot=30ms,ttft=5x;"
           "t40:w=2,tpot=40ms,ttft=5x;t60:w=1,tpot=60ms,ttft=5x")
SETUPS = {  # name: (router, engine policy)
    "ProServe (go + slide-bounded)": ("go", "slide-bounded"),
    "PolyServe (polyserve + dynamic-chunk)": ("polyserve", "dynamic-chunk"),
    "ours (polyserve-go + slide-bounded)": ("polyserve-go", "slide-bounded"),
}


def cfg(router: str, policy: str, rate: float, n: int, duration: float) -> SimConfig:
    return SimConfig(trace="azure-conv", synthetic_arrivals=True, rate=rate, duration=duration,
                     classes=CLASSES, instances=n, router=router, policy=policy, drain_s=60.0)


def point(args: tuple) -> dict:
    r = run(cfg(*args))
    return {k: r[k] for k in ("tdg_ratio", "deadline_attainment", "slo_attainment", "ttft_p99",
                              "tpot_p99")} | {"mean_instances": r["fleet"]["mean_instances"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/polyserve_combined.json"))
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--rates", default="120,160,200")
    ap.add_argument("--duration", type=float, default=20.0)
    a = ap.parse_args()
    rates = [float(x) for x in a.rates.split(",")]
    print(f"# host load {loadavg()}")
    jobs = [(rt, pol, rate, a.instances, a.duration) for rt, pol in SETUPS.values()
            for rate in rates]
    with ProcessPoolExecutor(2) as ex:
        pts = dict(zip(jobs, ex.map(point, jobs)))
    good = {name: search(cfg(rt, pol, float(a.instances), a.instances, a.duration),
                         guess=20.0 * a.instances, workers=2, rel_tol=0.05)
            for name, (rt, pol) in SETUPS.items()}
    rows = []
    for name, (rt, pol) in SETUPS.items():
        cells = [pts[(rt, pol, rate, a.instances, a.duration)] for rate in rates]
        g = good[name]
        rows.append([name,
                     *[f"{100 * c['tdg_ratio']:.1f} / {100 * c['deadline_attainment']:.1f} / "
                       f"{c['ttft_p99']:.2f}" for c in cells],
                     f"{g['goodput_rps']:.1f}", f"{g['goodput_per_instance']:.2f}",
                     f"{g['mean_instances']:.1f}"])
    table(["setup", *[f"@{r:g} req/s: TDG % / deadline att % / TTFT p99 s" for r in rates],
           "goodput req/s", "per instance in use", "instances in use"], rows)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"points": {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in pts.items()},
                                 "goodput": {k: {x: v[x] for x in (
                                     "goodput_rps", "goodput_per_instance", "mean_instances",
                                     "attainment", "per_tier")} for k, v in good.items()}},
                                indent=1) + "\n")


if __name__ == "__main__":
    main()

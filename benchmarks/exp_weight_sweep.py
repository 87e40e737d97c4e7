"""High-priority weight sweep: does raising the high class's weight buy it attainment?

For each policy and each high-class weight (low stays 1), simulate the same workload (same seed,
so the same requests and class draws) and print overall and per-class SLO attainment and TDG side
by side. A gain-aware policy should raise high-class attainment as its weight rises while overall
attainment stays within a few points; weight-blind policies stay flat.

    python benchmarks/exp_weight_sweep.py --trace azure-conv --rate 22.5 --duration 600
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor

from proserve.sim.run import SimConfig, run


def _point(args: tuple[str, float, dict]) -> tuple[str, float, dict]:
    policy, w, base = args
    cfg = SimConfig(**{**base, "policy": policy,
                       "classes": f"high:w={w:g},share=0.5;low:w=1,share=0.5"})
    return policy, w, run(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--rate", type=float, default=22.5)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--profile", default="llama3.1-8b@h100")
    ap.add_argument("--policies", default="slide,slide-nostarve,sarathi-priority,vllm-priority")
    ap.add_argument("--weights", default="2,4,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the table rows here")
    a = ap.parse_args()
    base = dict(trace=a.trace, rate=a.rate, duration=a.duration, profile=a.profile, seed=a.seed)
    policies = [p for p in a.policies.split(",") if p]
    weights = [float(w) for w in a.weights.split(",")]
    jobs = [(p, w, base) for p in policies for w in weights]
    with ProcessPoolExecutor(a.workers) as ex:
        results = list(ex.map(_point, jobs))
    print(f"{a.trace} @ {a.rate:g} req/s, {a.duration:g} s, profile {a.profile}, seed {a.seed}")
    print(f"{'policy':18s} {'w_high':>6s} {'SLO all':>8s} {'SLO high':>9s} {'SLO low':>8s} "
          f"{'TDG all':>8s} {'TDG high':>9s}")
    rows = []
    for p, w, r in results:
        pc = r["per_class"]
        row = dict(policy=p, w_high=w, slo=r["slo_attainment"],
                   slo_high=pc["high"]["slo_attainment"], slo_low=pc["low"]["slo_attainment"],
                   tdg=r["tdg_ratio"], tdg_high=pc["high"]["tdg_ratio"])
        rows.append(row)
        print(f"{p:18s} {w:6g} {100 * row['slo']:7.1f}% {100 * row['slo_high']:8.1f}% "
              f"{100 * row['slo_low']:7.1f}% {100 * row['tdg']:7.1f}% "
              f"{100 * row['tdg_high']:8.1f}%")
    for p in policies:
        mine = [r for r in rows if r["policy"] == p]
        lo, hi = mine[0], mine[-1]
        print(f"{p}: high-class attainment w={lo['w_high']:g} -> w={hi['w_high']:g}: "
              f"{hi['slo_high'] / lo['slo_high'] if lo['slo_high'] else float('nan'):.3f}x; "
              f"overall changes by {100 * (hi['slo'] - lo['slo']):+.1f} points")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

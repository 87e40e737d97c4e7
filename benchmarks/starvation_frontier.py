"""The TDG vs TTFT-p99 frontier of SlideBatching's starvation protection.

Sweeps the starvation parameter of the published ``slide`` (``tau_s``: a prefill more than tau_s
TTFT SLOs late jumps to the head, oldest first) and of ours, ``slide-bounded`` (``late_share``:
the largest share of each step given to late prefills, oldest first; and, at the default
``late_share``, ``max_wait_s``: the cap on a request's wait that the late share grows to meet,
where the engine can; and the same caps over a trickle of a smooth share, ``late_share =
0.02``, so that late work is served just before its cap rather than as soon as it is late), on
one workload, beside
the best-known baselines, all in one run with the same requests. Prints one table (TDG ratio,
SLO attainment, TTFT p99, E2E p99, longest wait) and writes the points as JSON.

    python benchmarks/starvation_frontier.py --trace azure-code --rate 7 \\
        --json docs/results/frontier/azure-code-7.json
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import table
from proserve.sim.run import SimConfig, run

BASELINES = ("sarathi-priority", "sarathi-fcfs", "vllm-priority")
TAU_S = (1.0, 4.0, 16.0, 64.0, float("inf"))
LATE_SHARE = (0.0, 0.1, 0.25, 0.5, 0.75)
MAX_WAIT_S = (5.0, 10.0, 20.0, 40.0)
TRICKLE = 0.02  # the smooth share under the caps' "just in time" sweep


def _point(args: tuple[str, dict, dict]) -> dict:
    policy, pargs, base = args
    r = run(SimConfig(**base, policy=policy, policy_args=pargs))
    keep = ("tdg_ratio", "slo_attainment", "ttft_p50", "ttft_p99", "e2e_p99", "max_wait_s",
            "unfinished")
    return {"policy": policy, "policy_args": {k: (None if v == float("inf") else v)
                                              for k, v in pargs.items()},
            **{k: r.get(k) for k in keep}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--profile", default="llama3.1-8b@h100")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-noise", type=float, default=None,
                    help="simulator prediction error CV (default: the simulator's default)")
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    ap.add_argument("--json", default=None, help="write the points here")
    a = ap.parse_args()
    base = dict(trace=a.trace, rate=a.rate, duration=a.duration, profile=a.profile, seed=a.seed)
    if a.latency_noise is not None:
        base["latency_noise"] = a.latency_noise
    jobs = [(p, {}, base) for p in BASELINES]
    jobs += [("slide", {"tau_s": t}, base) for t in TAU_S]
    jobs += [("slide-bounded", {"late_share": s}, base) for s in LATE_SHARE]
    jobs += [("slide-bounded", {"max_wait_s": w}, base) for w in MAX_WAIT_S]
    jobs += [("slide-bounded", {"late_share": TRICKLE, "max_wait_s": w}, base)
             for w in MAX_WAIT_S]
    with ProcessPoolExecutor(max_workers=a.workers) as ex:
        points = list(ex.map(_point, jobs))

    def f(v, pct=False):
        if v is None:
            return "-"
        return f"{100 * v:.1f}" if pct else f"{v:.1f}"

    rows = []
    for p in points:
        arg = ", ".join(f"{k}={'inf' if v is None else f'{v:g}'}"
                        for k, v in p["policy_args"].items())
        rows.append([p["policy"] + (f" ({arg})" if arg else ""), f(p["tdg_ratio"], True),
                     f(p["slo_attainment"], True), f(p["ttft_p99"]), f(p["e2e_p99"]),
                     f(p["max_wait_s"])])
    print(f"{a.trace} @ {a.rate:g} req/s, {a.duration:g} s, {a.profile}, seed {a.seed}")
    table(["policy", "TDG %", "SLO att %", "TTFT p99 s", "E2E p99 s", "longest wait s"], rows)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"config": base, "points": points}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""How much the simulator's prediction error (``--latency-noise``) moves each policy's results.

For each trace @ rate, policy and noise CV, one simulation with the same requests; prints TDG
ratio, SLO attainment and TTFT p99 side by side, and checks determinism: the default-noise run
repeated gives byte-identical JSON.

    python benchmarks/noise_sensitivity.py --json docs/results/noise_sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import table
from proserve.sim.run import SimConfig, run

POINTS = (("azure-conv", 22.5), ("sharegpt", 7.5))
POLICIES = ("slide", "slide-bounded", "sarathi-priority")
NOISE = (0.0, 0.05, 0.10)


def _point(args: tuple[str, float, str, float, float]) -> dict:
    trace, rate, policy, noise, duration = args
    r = run(SimConfig(trace=trace, rate=rate, duration=duration, policy=policy,
                      latency_noise=noise))
    r["sim_wall_s"] = 0.0
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    jobs = [(t, r, p, n, a.duration) for t, r in POINTS for p in POLICIES for n in NOISE]
    jobs.append(jobs[1])  # the default-noise run once more: determinism
    with ProcessPoolExecutor(max_workers=a.workers) as ex:
        res = list(ex.map(_point, jobs))
    same = json.dumps(res[1], sort_keys=True) == json.dumps(res[-1], sort_keys=True)
    rows, points = [], []
    for (t, r, p, n, _), x in zip(jobs[:-1], res[:-1]):
        rows.append([f"{t}@{r:g}", p, f"{n:g}", f"{100 * x['tdg_ratio']:.1f}",
                     f"{100 * x['slo_attainment']:.1f}", f"{x['ttft_p99']:.1f}"])
        points.append({"trace": t, "rate": r, "policy": p, "latency_noise": n,
                       "tdg_ratio": x["tdg_ratio"], "slo_attainment": x["slo_attainment"],
                       "ttft_p99": x["ttft_p99"]})
    table(["workload", "policy", "noise CV", "TDG %", "SLO att %", "TTFT p99 s"], rows)
    print(f"same seed, default noise, run twice: byte-identical JSON = {same}")
    if a.json:
        Path(a.json).write_text(json.dumps({"duration": a.duration, "deterministic": same,
                                            "points": points}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Issue 12 scale checks: a 64-instance, 100k-request `polyserve` simulation (peak memory, wall
time) and the wall time of one 64-instance goodput search, on this machine.

    python benchmarks/polyserve_scale.py --out docs/results/polyserve_scale.json [--skip-search]

Peak memory is the process's maximum resident set (``ru_maxrss``) after the simulation; the
search's worker processes are children (their peak is ``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from _common import loadavg
from proserve.experiments.goodput import search
from proserve.sim.run import SimConfig, run

CLASSES = "t20:tpot=20ms,ttft=5x;t30:tpot=30ms,ttft=5x;t40:tpot=40ms,ttft=5x;t60:tpot=60ms,ttft=5x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/polyserve_scale.json"))
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=1200.0)
    ap.add_argument("--skip-search", action="store_true")
    a = ap.parse_args()
    out: dict = {"host_load": loadavg()}
    cfg = SimConfig(trace="azure-conv", synthetic_arrivals=True, rate=a.rate, count=a.requests,
                    classes=CLASSES, instances=64, router="polyserve", drain_s=60.0)
    t0 = time.perf_counter()
    r = run(cfg)
    out["simulation"] = {
        "requests": r["requests"], "instances": 64, "rate": a.rate,
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "deadline_attainment": r["deadline_attainment"], "steps": r["steps"],
        "mean_instances": r["fleet"]["mean_instances"],
    }
    print(json.dumps(out["simulation"]))
    if not a.skip_search:
        base = SimConfig(trace="azure-conv", synthetic_arrivals=True, duration=20.0,
                         classes=CLASSES, instances=64, router="polyserve", rate=64.0,
                         drain_s=60.0)
        t0 = time.perf_counter()
        g = search(base, guess=64 * 20.0, workers=2, rel_tol=0.05)
        out["goodput_search"] = {
            "instances": 64, "wall_s": round(time.perf_counter() - t0, 1),
            "points": len(g["points"]), "goodput_rps": g["goodput_rps"],
            "children_peak_rss_mb": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        }
        print(json.dumps(out["goodput_search"]))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

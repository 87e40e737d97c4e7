"""Simulator speed: the full azure-conv hour at its native rate on one instance, per policy.

Each run is ``proserve.sim.run.run(SimConfig(trace="azure-conv", profile="llama3.1-8b@h100",
policy=P, seed=0))`` with no rate, duration or count, i.e. every request of the trace (19,366) at
the trace's own timestamps (native rate, ~5.5 req/s), served by one engine instance.

Wall time is ``time.perf_counter`` around the whole ``run(cfg)`` call, so it INCLUDES building the
workload (trace load, class and SLO assignment), the simulation itself (event loop, scheduler,
invariant checks) and the summary (percentiles, per-class metrics). Nothing is excluded. The
workload build alone is timed once separately and shown for reference (not subtracted).

Reported per policy: requests, engine steps, simulated seconds (the simulated clock at the last
request's finish), wall seconds (best and median of ``--repeat`` runs), simulated requests per
wall second, wall ms per simulated replica-second (= wall / (simulated seconds x instances)),
and how many times faster that is than Vidur's ~16 ms per simulated replica-second. The Vidur
figure is QUOTED from the project's reference notes (reference/ecosystem.md: 82 s of wall time for
10,000 requests on 4 replicas, after 19 min of random-forest training), not measured here.

Runs are interleaved (repeat 1 of every policy, then repeat 2, ...) so that background load on a
shared machine affects all policies alike.

Run:  python benchmarks/bench_simulator.py                       (slide, vllm-fcfs; ~1 min)
      python benchmarks/bench_simulator.py --policies edf --repeat 5 --json out.json
      python benchmarks/bench_simulator.py --count 2000            (quick smoke run)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import loadavg, table  # benchmarks/_common.py
from proserve.engine.base import policy_names
from proserve.sim.run import SimConfig, load_model, run
from proserve.workload import make_workload

TRACE = "azure-conv"
PROFILE = "llama3.1-8b@h100"
DEFAULT_POLICIES = ["slide", "vllm-fcfs"]
# Quoted, not measured: reference/ecosystem.md, "Simulators" (Vidur 0.0.26, 82 s for 10,000
# requests on 4 replicas, i.e. ~16 ms of wall time per simulated replica-second).
VIDUR_MS_PER_REPLICA_S = 16.0





def one_run(cfg: SimConfig) -> dict[str, Any]:
    gc.collect()
    t0 = time.perf_counter()
    res = run(cfg)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "requests": res["requests"],
        "finished": res["finished"],
        "steps": res["steps"],
        "sim_s": res["sim_end_s"],
        "drained": res["drained"],
        "preemptions": res["preemptions"],
        "slo_attainment": res["slo_attainment"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", nargs="+", default=DEFAULT_POLICIES,
                    help=f"policies to run (default: {' '.join(DEFAULT_POLICIES)}); "
                         "'all' runs every registered policy")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per policy; best and median are reported (default 3)")
    ap.add_argument("--instances", type=int, default=1,
                    help="engine instances (round-robin); default 1")
    ap.add_argument("--count", type=int, default=None,
                    help="only the first COUNT requests of the trace (quick runs); default: all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)

    known = policy_names()
    policies = known if args.policies == ["all"] else args.policies
    bad = [p for p in policies if p not in known]
    if bad:
        ap.error(f"unknown policies {bad}; available: {', '.join(known)}")
    if args.repeat < 1 or args.instances < 1:
        ap.error("--repeat and --instances must be >= 1")

    cfgs = {p: SimConfig(trace=TRACE, profile=PROFILE, policy=p, seed=args.seed,
                         instances=args.instances, count=args.count) for p in policies}

    load0 = loadavg()
    print("== bench_simulator: simulator wall time for the azure-conv trace at its native rate")
    print(f"   Python {platform.python_version()} on {platform.platform()}, "
          f"{os.cpu_count()} CPU(s), load average {load0}")
    print("   NOTE: shared, noisy host (2 cores here; another process such as a simulation grid "
          "may be running). Compare rows of one run, not across runs.")
    print(f"   config: trace={TRACE} (native timestamps, "
          f"{'all requests' if args.count is None else f'first {args.count} requests'}), "
          f"profile={PROFILE}, instances={args.instances}, seed={args.seed}, "
          f"repeat={args.repeat} (interleaved)")
    print("   wall = perf_counter around run(cfg): workload build + simulation + summary "
          "(nothing excluded)")
    sys.stdout.flush()

    # workload build alone, for reference (part of every wall time below)
    t0 = time.perf_counter()
    make_workload(TRACE, model=load_model(cfgs[policies[0]]), seed=args.seed, count=args.count)
    build_s = time.perf_counter() - t0

    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    for rep in range(args.repeat):
        for p in policies:
            r = one_run(cfgs[p])
            runs[p].append(r)
            print(f"   run {rep + 1}/{args.repeat} {p}: {r['wall_s']:.2f} s wall, "
                  f"{r['steps']:,} steps", flush=True)

    results = []
    rows = []
    for p in policies:
        rs = runs[p]
        walls = [r["wall_s"] for r in rs]
        best, med = min(walls), statistics.median(walls)
        first = rs[0]
        for r in rs[1:]:  # the simulator is deterministic: every repeat must agree
            if (r["steps"], r["sim_s"], r["finished"]) != (
                    first["steps"], first["sim_s"], first["finished"]):
                raise RuntimeError(f"{p}: repeats disagree (non-deterministic simulation?)")
        replica_s = first["sim_s"] * args.instances
        ms_per_rs_best = 1000 * best / replica_s
        ms_per_rs_med = 1000 * med / replica_s
        res = {
            "policy": p,
            "requests": first["requests"],
            "finished": first["finished"],
            "drained": first["drained"],
            "preemptions": first["preemptions"],
            "slo_attainment": first["slo_attainment"],
            "steps": first["steps"],
            "sim_s": first["sim_s"],
            "instances": args.instances,
            "wall_s": walls,
            "wall_best_s": best,
            "wall_median_s": med,
            "req_per_wall_s_best": first["requests"] / best,
            "steps_per_wall_s_best": first["steps"] / best,
            "wall_ms_per_replica_s_best": ms_per_rs_best,
            "wall_ms_per_replica_s_median": ms_per_rs_med,
            "speedup_vs_vidur_best": VIDUR_MS_PER_REPLICA_S / ms_per_rs_best,
            "speedup_vs_vidur_median": VIDUR_MS_PER_REPLICA_S / ms_per_rs_med,
        }
        results.append(res)
        rows.append([
            p, f"{res['requests']:,}", f"{res['steps']:,}", f"{res['sim_s']:,.0f}",
            f"{best:.2f}", f"{med:.2f}", f"{res['req_per_wall_s_best']:,.0f}",
            f"{res['steps_per_wall_s_best']:,.0f}",
            f"{ms_per_rs_best:.3f}", f"{ms_per_rs_med:.3f}",
            f"{res['speedup_vs_vidur_best']:.1f}x",
        ])

    print()
    table(["policy", "requests", "steps", "sim s", "wall best s", "wall med s", "req/wall-s",
           "steps/wall-s", "ms/replica-s best", "ms/replica-s med", "vs Vidur (best)"], rows)
    print(f"\nworkload build alone (included in every wall time above): {build_s:.2f} s")
    print(f"Vidur: ~{VIDUR_MS_PER_REPLICA_S:g} ms wall per simulated replica-second, QUOTED from "
          "reference/ecosystem.md (82 s for 10,000 requests on 4 replicas, excluding its 19 min "
          "of random-forest training), not measured here; 'vs Vidur' = 16 / ours, >1 means faster.")
    if len(policies) > 1:
        base = results[0]
        print("\nwall time relative to " + base["policy"] + " (median):")
        table(["policy", "ratio"],
              [[r["policy"], f"{r['wall_median_s'] / base['wall_median_s']:.2f}x"]
               for r in results])
    load1 = loadavg()
    print(f"\nload average before/after: {load0} / {load1}")

    if args.json:
        payload = {
            "benchmark": "bench_simulator",
            "host": {"python": platform.python_version(), "platform": platform.platform(),
                     "cpus": os.cpu_count(), "loadavg_before": load0, "loadavg_after": load1},
            "settings": {**vars(args), "policies": policies, "trace": TRACE, "profile": PROFILE,
                         "vidur_ms_per_replica_s_quoted": VIDUR_MS_PER_REPLICA_S},
            "workload_build_s": build_s,
            "results": results,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

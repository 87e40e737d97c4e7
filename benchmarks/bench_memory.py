"""Peak memory of simulating the full azure-conv trace (19,366 requests) with ``slide``.

Every measurement runs in a fresh Python subprocess (this script re-invoked with ``--child``), so
each peak belongs to that one run and nothing else the parent did. Per policy, three children:

``imports``   import proserve and load the latency profile, nothing else (the floor: interpreter,
              numpy, pydantic, ...);
``workload``  the above plus ``make_workload`` for the whole trace (the requests alone);
``run``       ``proserve.sim.run.run(SimConfig(trace="azure-conv", profile="llama3.1-8b@h100",
              policy=P, seed=0))``: whole trace at its native rate, one instance, workload build +
              simulation + summary, as ``proserve simulate`` does it.

Peak = ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read in the child at the end (the kernel's
high-water mark of resident memory: Python objects, numpy buffers, interpreter, shared libraries).
With ``--tracemalloc`` a fourth child repeats ``run`` with ``tracemalloc`` started after the
imports and reports the peak of memory allocated through Python's allocators by the workload
build, simulation and summary (numpy buffers included; interpreter, modules and shared libraries
excluded). tracemalloc slows the run ~7x and adds its own bookkeeping to the RSS, which is why it
gets its own child and is opt-in.

Target: peak RSS of ``run`` < 500 MB (MB = 10^6 bytes; MiB shown as well).

Run:  python benchmarks/bench_memory.py                    (slide; ~20 s)
      python benchmarks/bench_memory.py --policies slide vllm-fcfs --tracemalloc --json mem.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import table  # benchmarks/_common.py

TRACE = "azure-conv"
PROFILE = "llama3.1-8b@h100"
TARGET_MB = 500.0
KINDS = ("imports", "workload", "run")


def maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def child(kind: str, policy: str, seed: int, count: int | None) -> None:
    """Runs inside the subprocess; prints one JSON line."""
    import tracemalloc

    t0 = time.perf_counter()
    from proserve.latency.profiles import load_profile
    from proserve.sim.run import SimConfig, run
    from proserve.workload import make_workload

    info: dict[str, Any] = {"kind": kind, "policy": policy}
    model = load_profile(PROFILE)
    trace_py = kind == "run-tracemalloc"
    if trace_py:  # after the imports: the peak is what the workload and simulation allocate
        tracemalloc.start()
    if kind == "workload":
        reqs, _ = make_workload(TRACE, model=model, seed=seed, count=count)
        info["requests"] = len(reqs)
    elif kind in ("run", "run-tracemalloc"):
        res = run(SimConfig(trace=TRACE, profile=PROFILE, policy=policy, seed=seed, count=count))
        info.update(requests=res["requests"], finished=res["finished"], steps=res["steps"],
                    sim_s=res["sim_end_s"])
    info["wall_s"] = time.perf_counter() - t0
    if trace_py:
        info["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    info["maxrss_bytes"] = maxrss_bytes()
    print(json.dumps(info))


def spawn(kind: str, policy: str, seed: int, count: int | None) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--policies", policy,
           "--seed", str(seed)]
    if count is not None:
        cmd += ["--count", str(count)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"child {kind}/{policy} failed ({p.returncode}):\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])




def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", nargs="+", default=["slide"],
                    help="policies to measure (default: slide)")
    ap.add_argument("--count", type=int, default=None,
                    help="only the first COUNT requests (quick runs); default: the whole trace")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tracemalloc", action="store_true",
                    help="also measure the tracemalloc peak (extra, slower child per policy)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--child", choices=[*KINDS, "run-tracemalloc"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        child(args.child, args.policies[0], args.seed, args.count)
        return 0

    from proserve.engine.base import policy_names

    known = policy_names()
    bad = [p for p in args.policies if p not in known]
    if bad:
        ap.error(f"unknown policies {bad}; available: {', '.join(known)}")

    try:
        load0 = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load0 = None
    print("== bench_memory: peak memory per simulation run (fresh subprocess per measurement)")
    print(f"   Python {platform.python_version()} on {platform.platform()}, "
          f"{os.cpu_count()} CPU(s), load average {load0}")
    print("   NOTE: shared host; other processes do not change a child's own peak RSS, only its "
          "wall time.")
    print(f"   trace={TRACE} ({'whole trace' if args.count is None else f'first {args.count}'}, "
          f"native rate), profile={PROFILE}, 1 instance, seed={args.seed}")
    print("   peak RSS = ru_maxrss of the child; tracemalloc = peak of Python allocations after "
          "the imports (separate child, opt-in)")
    sys.stdout.flush()

    results: list[dict[str, Any]] = []
    rows = []
    for policy in args.policies:
        kinds = [*KINDS, "run-tracemalloc"] if args.tracemalloc else list(KINDS)
        for kind in kinds:
            if kind != "run" and kind != "run-tracemalloc" and policy != args.policies[0]:
                continue  # imports/workload do not depend on the policy: measure them once
            r = spawn(kind, policy, args.seed, args.count)
            results.append(r)
            mb = r["maxrss_bytes"] / 1e6
            tm = r.get("tracemalloc_peak_bytes")
            is_run = kind == "run"
            rows.append([
                policy if kind.startswith("run") else "-", kind, r.get("requests", "-"),
                f"{mb:.1f}", f"{r['maxrss_bytes'] / 2**20:.1f}",
                "-" if tm is None else f"{tm / 1e6:.1f}", f"{r['wall_s']:.1f}",
                f"< {TARGET_MB:g}" if is_run else "",
                ("ok" if mb < TARGET_MB else "MISS") if is_run else "",
            ])
            print(f"   {policy} {kind}: peak RSS {mb:.1f} MB", flush=True)

    print()
    table(["policy", "measurement", "requests", "peak RSS MB", "peak RSS MiB",
           "tracemalloc MB", "wall s", "target MB", ""], rows)
    base = next(r for r in results if r["kind"] == "imports")["maxrss_bytes"]
    deltas = ", ".join(f"{r['policy']} {(r['maxrss_bytes'] - base) / 1e6:.1f} MB"
                       for r in results if r["kind"] == "run")
    print(f"\n'run' minus 'imports' (workload + simulation + summary): {deltas}")

    if args.json:
        payload = {
            "benchmark": "bench_memory",
            "host": {"python": platform.python_version(), "platform": platform.platform(),
                     "cpus": os.cpu_count(), "loadavg_before": load0},
            "settings": {k: v for k, v in vars(args).items() if k != "child"}
            | {"trace": TRACE, "profile": PROFILE, "target_mb": TARGET_MB},
            "results": results,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

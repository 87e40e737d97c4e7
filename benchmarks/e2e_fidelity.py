"""Live path vs simulator: the same workload through real HTTP and through `proserve simulate`.

Starts, each in its own process: `proserve emulate --instances N` (engines running POLICY in real
time) and `proserve gateway` (ROUTER, two tenants = two classes), then replays a time-scaled
azure-conv window with `proserve bench` through the gateway, and runs `proserve simulate` on the
identical workload (same trace, rate, duration, seed, classes, instances, policy, router). Prints
the two results side by side with their ratios.

    python benchmarks/e2e_fidelity.py --instances 4 --rate 40 --duration 60
    python benchmarks/e2e_fidelity.py --instances 16 --processes 2 --rate 64 --duration 60
    python benchmarks/e2e_fidelity.py --instances 1 --rate 37.5 --duration 60 \\
        --policy slide-bounded --admission --yield-share 0.75
    python benchmarks/e2e_fidelity.py --instances 1 --rate 37.5 --duration 60 \\
        --policy slide-bounded --admission --yield-target 0.95

``--admission``: the gateway's admission as configured for an overloaded fleet (the high class
waits up to the default 5 s queue timeout, the low class is sheddable with ``--yield-share``),
and ``proserve simulate --admission --shed low --yield-share`` on the simulated side: the same
decision code (cluster/admission.py) on both; ``--yield-target`` makes the low class's share
adaptive on both (the gateway counts the high class's outcomes as they stream, the simulator as
its steps end). Refused requests (429) count as misses on both.

Everything listens on 127.0.0.1 only; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_seconds, loadavg, stop_all, table, wait_up

#: --admission: the high class's queue timeout (the gateway's default), on both sides
QUEUE_TIMEOUT_S = 5.0
KEYS = ("tdg_ratio", "slo_attainment", "goodput_rps", "ttft_p50", "ttft_p99", "tpot_p50",
        "tpot_p99", "rejected")


def summarize(paths: list[str]) -> None:
    """One row per result JSON this script wrote: live vs simulated TDG, attainment and medians."""
    rows = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        a, lv, sv = d["args"], d["live"], d["sim"]
        rows.append([Path(p).stem, a["instances"], a.get("processes", 1), f"{a['rate']:g}",
                     f"{lv['tdg_ratio']:.3f}", f"{sv['tdg_ratio']:.3f}",
                     f"{lv['slo_attainment']:.3f}", f"{sv['slo_attainment']:.3f}",
                     f"{1000 * lv['ttft_p50']:.1f}", f"{1000 * sv['ttft_p50']:.1f}",
                     f"{1000 * lv['tpot_p50']:.1f}", f"{1000 * sv['tpot_p50']:.1f}"]
                    + [f"{d['cores'][k]:.2f}" if "cores" in d else "-"
                       for k in ("emulator", "gateway", "bench")])
    table(["run", "instances", "processes", "rate", "TDG live", "TDG sim", "attain live",
           "attain sim", "TTFT p50 live ms", "TTFT p50 sim ms", "TPOT p50 live ms",
           "TPOT p50 sim ms", "emulator cores", "gateway cores", "load-gen cores"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summarize", nargs="+", metavar="JSON", default=None,
                    help="print a table of earlier runs' --json files and exit")
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--processes", type=int, default=1,
                    help="processes serving the emulated engines (proserve emulate --processes)")
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--policy", default="slide")
    ap.add_argument("--router", default="go")
    ap.add_argument("--profile", default="llama3.1-8b@h100")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=18301)
    ap.add_argument("--admission", action="store_true",
                    help="high waits up to 5 s for capacity, low is sheddable (gateway and "
                         "simulator alike); default: both admitted at once")
    ap.add_argument("--yield-share", type=float, default=0.0,
                    help="with --admission: the low class's yield_share (cluster/admission.py)")
    ap.add_argument("--yield-target", type=float, default=None,
                    help="with --admission: the low class's yield_target (an adaptive share)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if (a.yield_share or a.yield_target is not None) and not a.admission:
        raise SystemExit("--yield-share and --yield-target need --admission")
    if a.summarize:
        summarize(a.summarize)
        return
    cli = [sys.executable, "-m", "proserve.cli"]
    tmp = Path(tempfile.mkdtemp(prefix="proserve-e2e-"))
    gw_port = a.port + a.instances
    backends = [{"url": f"http://127.0.0.1:{a.port + i}", "kind": "proserve",
                 "profile": a.profile} for i in range(a.instances)]
    cfg = {"model": "proserve-emulated", "port": gw_port, "router": a.router,
           "classes": "high:w=2,share=0.5;low:w=1,share=0.5",
           "class_settings": (
               {"high": {"queue_timeout_s": QUEUE_TIMEOUT_S},
                "low": {"sheddable": True, "yield_share": a.yield_share,
                        "yield_target": a.yield_target}} if a.admission else
               {"high": {"queue_timeout_s": 0}, "low": {"queue_timeout_s": 0}}),
           "backends": backends,
           "tenants": [{"name": "hi", "api_keys": ["k-hi"], "class": "high"},
                       {"name": "lo", "api_keys": ["k-lo"], "class": "low"}]}
    (tmp / "gw.json").write_text(json.dumps(cfg))
    procs = []
    try:
        procs.append(subprocess.Popen(cli + ["emulate", "--instances", str(a.instances),
                                             "--processes", str(a.processes),
                                             "--port", str(a.port), "--policy", a.policy,
                                             "--profile", a.profile],
                                      stderr=subprocess.DEVNULL))
        for i in range(a.instances):
            wait_up(f"http://127.0.0.1:{a.port + i}/health")
        procs.append(subprocess.Popen(cli + ["gateway", "--config", str(tmp / "gw.json")],
                                      stderr=subprocess.DEVNULL))
        wait_up(f"http://127.0.0.1:{gw_port}/health")
        load0 = loadavg()
        work = ["--trace", "azure-conv", "--rate", str(a.rate), "--duration", str(a.duration),
                "--seed", str(a.seed), "--profile", a.profile]
        t0 = time.time()
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cli + ["bench", "--target", f"http://127.0.0.1:{gw_port}", *work,
                              "--keys", "high=k-hi,low=k-lo", "--out", str(tmp / "bench.json")],
                       check=True, stdout=subprocess.DEVNULL)
        bench_wall = time.time() - t0
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # cores each party used while the workload ran: where a 2-core host's CPU went
        emu, gw = (cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0))
        bench = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        cores = {"emulator": emu / bench_wall, "gateway": gw / bench_wall,
                 "bench": bench / bench_wall}
        load1 = loadavg()
    finally:
        stop_all(procs)
    adm = (["--admission", "--queue-timeout", str(QUEUE_TIMEOUT_S), "--shed", "low",
            "--yield-share", str(a.yield_share)] + (
                ["--yield-target", str(a.yield_target)] if a.yield_target is not None else [])
           if a.admission else [])
    subprocess.run(cli + ["simulate", *work, "--instances", str(a.instances), "--policy",
                          a.policy, "--router", a.router, *adm, "--quiet", "--out",
                          str(tmp / "sim.json")], check=True)
    live = json.loads((tmp / "bench.json").read_text())
    sim = json.loads((tmp / "sim.json").read_text())
    print(f"e2e fidelity: {a.instances} x {a.policy} in {a.processes} emulator process(es) "
          f"behind gateway/{a.router}"
          + (f" with admission (low sheddable, yield_share {a.yield_share:g}"
             + (f", yield_target {a.yield_target:g}" if a.yield_target is not None else "")
             + ")" if a.admission else "") + ", azure-conv "
          f"{a.duration:g} s at {a.rate:g} req/s, seed {a.seed}; {live['requests']} requests, "
          f"errors {live['errors'] or 'none'}; bench took {bench_wall:.0f} s; load average "
          f"{load0} -> {load1}; cores used: emulator {cores['emulator']:.2f}, gateway "
          f"{cores['gateway']:.2f}, load generator {cores['bench']:.2f}")
    rows = []
    for scope, lv, sv in [("all", live, sim)] + [
            (c, live["per_class"][c], sim["per_class"][c]) for c in sim["per_class"]]:
        for k in KEYS:
            x, y = lv.get(k), sv.get(k)
            ratio = f"{x / y:.3f}" if x is not None and y else "-"
            fmt = (lambda v: f"{1000 * v:.1f} ms") if k.startswith(("ttft", "tpot")) else (
                lambda v: f"{v:.4f}")
            rows.append([scope, k, fmt(x) if x is not None else "-",
                         fmt(y) if y is not None else "-", ratio])
    table(["scope", "metric", "live (bench)", "simulated", "live/sim"], rows)
    if a.json:
        Path(a.json).write_text(json.dumps({"live": live, "sim": sim, "args": vars(a),
                                            "cores": cores}, indent=1))


if __name__ == "__main__":
    main()

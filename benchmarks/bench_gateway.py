"""Gateway overhead and sustained streaming rate, side by side in one run.

Targets, all in front of the same single emulated engine (`proserve emulate`, its own process):
  * direct     - the emulator itself (the baseline)
  * proserve   - `proserve gateway` (its own process)
  * litellm    - LiteLLM's proxy (`litellm --config`), if `--litellm BIN` points at its CLI

1. Overhead: open-loop Poisson load at `--rate` req/s for `--seconds` s per target, tiny streamed
   requests (8-token prompts, 4 output tokens); added latency = target minus direct, at p50/p99,
   for TTFT and end-to-end.
2. Sustained rate: for each target, open-loop runs at increasing rates; a rate is sustained if
   >= 99% of requests succeed and TTFT p99 stays under `--ttft-limit` s. The highest sustained
   rate per target is reported, with the ratio proserve / litellm.

The load generator is `proserve bench`'s engine (Python, one process), the same for every
target; on a 2-core machine it shares the CPU with the gateway and the emulator, so absolute
rates are lower bounds of what each proxy can do; the ratios are the comparison.

    python benchmarks/bench_gateway.py [--litellm /path/to/venv/bin/litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import loadavg, stop_all, table, wait_up
from proserve.core.request import Request
from proserve.serve.bench import BenchConfig, run_bench

MODEL = "proserve-emulated"


def workload(rate: float, seconds: float, seed: int) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds)))
    return [Request(i, float(x), 8, 4, ttft_slo=10.0, tpot_slo=10.0) for i, x in enumerate(t)]


def measure(target: str, rate: float, seconds: float, seed: int, key: str | None) -> dict:
    reqs = workload(rate, seconds, seed)
    cfg = BenchConfig(target=target, model=MODEL, keys={"default": key} if key else {},
                      timeout_s=30.0, max_duration_s=30.0)
    res = asyncio.run(run_bench(cfg, reqs))
    e2e = np.array([r.last_token_time - r.arrival for r in reqs if r.generated == 4])
    return {"ok": res["ok"], "n": len(reqs), "errors": res["errors"],
            "ttft_p50": res["ttft_p50"], "ttft_p99": res["ttft_p99"],
            "e2e_p50": float(np.percentile(e2e, 50)) if e2e.size else None,
            "e2e_p99": float(np.percentile(e2e, 99)) if e2e.size else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", default="200,400,600,800,1000,1400")
    ap.add_argument("--step-seconds", type=float, default=5.0)
    ap.add_argument("--ttft-limit", type=float, default=1.0)
    ap.add_argument("--litellm", default=None, help="path to LiteLLM's `litellm` CLI")
    ap.add_argument("--port", type=int, default=18401)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    cli = [sys.executable, "-m", "proserve.cli"]
    tmp = Path(tempfile.mkdtemp(prefix="proserve-gw-bench-"))
    emu, gw, lite = a.port, a.port + 1, a.port + 2
    classes = "default:w=1,ttft=10s,tpot=10s"  # the gateway's and the engine's
    (tmp / "gw.json").write_text(json.dumps({
        "model": MODEL, "port": gw, "router": "go",
        "classes": classes,
        "class_settings": {"default": {"queue_timeout_s": 0}},
        "backends": [{"url": f"http://127.0.0.1:{emu}", "kind": "proserve"}],
        "tenants": [{"name": "bench", "api_keys": ["k-bench"], "class": "default"}]}))
    (tmp / "litellm.yaml").write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: text-completion-openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{emu}/v1\n"
        "      api_key: none\n"
        "litellm_settings:\n  drop_params: true\n"
        "general_settings:\n  master_key: sk-lite-bench-0123456789\n")
    procs = [subprocess.Popen(cli + ["emulate", "--port", str(emu), "--classes", classes],
                              stderr=subprocess.DEVNULL)]
    targets = {"direct": (f"http://127.0.0.1:{emu}", None)}
    try:
        wait_up(f"http://127.0.0.1:{emu}/health")
        procs.append(subprocess.Popen(cli + ["gateway", "--config", str(tmp / "gw.json")],
                                      stderr=subprocess.DEVNULL))
        wait_up(f"http://127.0.0.1:{gw}/health")
        targets["proserve"] = (f"http://127.0.0.1:{gw}", "k-bench")
        if a.litellm:
            procs.append(subprocess.Popen([a.litellm, "--config", str(tmp / "litellm.yaml"),
                                           "--host", "127.0.0.1", "--port", str(lite),
                                           "--num_workers", "1"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_up(f"http://127.0.0.1:{lite}/health/liveliness", timeout=120)
            targets["litellm"] = (f"http://127.0.0.1:{lite}", "sk-lite-bench-0123456789")
        print(f"bench_gateway: load average {loadavg()}; targets {list(targets)}")
        # warm-up (connection pools, JIT-free but caches and imports)
        for url, key in targets.values():
            measure(url, 50, 1.0, 99, key)
        over = {name: measure(url, a.rate, a.seconds, 1, key)
                for name, (url, key) in targets.items()}
        base = over["direct"]
        rows = []
        for name, m in over.items():
            def ms(v):
                return f"{1000 * v:.2f}" if v is not None else "-"

            def added(k, m=m):
                return (f"{1000 * (m[k] - base[k]):+.2f}" if m[k] is not None
                        and base[k] is not None else "-")

            rows.append([name, f"{m['ok']}/{m['n']}", ms(m["ttft_p50"]), ms(m["ttft_p99"]),
                         added("ttft_p50"), added("ttft_p99"), ms(m["e2e_p50"]), ms(m["e2e_p99"]),
                         added("e2e_p50"), added("e2e_p99")])
        print(f"\n1. overhead at {a.rate:g} req/s, {a.seconds:g} s per target (ms)")
        table(["target", "ok", "TTFT p50", "TTFT p99", "added p50", "added p99", "e2e p50",
               "e2e p99", "added e2e p50", "added e2e p99"], rows)
        sustained: dict[str, float] = {}
        steps: dict[str, list] = {}
        for name, (url, key) in targets.items():
            best = 0.0
            steps[name] = []
            for r in [float(x) for x in a.rates.split(",")]:
                m = measure(url, r, a.step_seconds, 2, key)
                good = (m["ok"] >= 0.99 * m["n"] and m["ttft_p99"] is not None
                        and m["ttft_p99"] < a.ttft_limit)
                steps[name].append((r, m["ok"], m["n"], m["ttft_p99"], good))
                if not good:
                    break
                best = r
            sustained[name] = best
        print(f"\n2. highest sustained streaming rate (>= 99% ok, TTFT p99 < {a.ttft_limit:g} s)")
        table(["target", "sustained req/s", "steps (rate: ok/n, TTFT p99 s)"],
              [[n, f"{sustained[n]:g}", "; ".join(
                  f"{r:g}: {ok}/{n_}, {p99:.3f}" if p99 is not None else f"{r:g}: {ok}/{n_}"
                  for r, ok, n_, p99, _ in steps[n])] for n in targets])
        if "litellm" in sustained and sustained["litellm"]:
            print(f"proserve / litellm sustained rate: "
                  f"{sustained['proserve'] / sustained['litellm']:.2f}x")
        if a.json:
            Path(a.json).write_text(json.dumps({"overhead": over, "sustained": sustained,
                                                "steps": steps, "args": vars(a)}, indent=1))
    finally:
        stop_all(procs)


if __name__ == "__main__":
    main()

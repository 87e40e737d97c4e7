"""`proserve gateway --workers 1` vs `--workers 2`, side by side: sustained streaming rate, and
what several workers cost the router's decisions.

Both gateways run at once (their own processes, the same config but the worker count, the same
emulated fleet behind them) and each measurement step runs against one then the other, so
background noise falls on both alike.

1. Sustained streaming rate: an emulated fleet (`proserve emulate --instances 2 --processes 2`:
   two engines, one process each), open-loop Poisson load of tiny streamed requests (8-token
   prompts, 4 output tokens) at increasing rates (`--rates`), `--step-seconds` per step, from
   `--clients` load-generator processes (`proserve bench`'s engine; one Python process tops out
   near the rates measured). A rate is sustained if >= 99% of requests succeed and TTFT p99 <
   `--ttft-limit` s. Reported: the highest sustained rate per worker count and their ratio.
2. Routing quality: a fleet that contends for KV (`--quality-instances` engines with
   `--kv-blocks` blocks, llama3.1-8b@h100), two classes (high w=2, low w=1, SLOs 5x the
   unloaded latency), prompts uniform in [256, 3072] tokens, 16 output tokens, Poisson at
   `--quality-rate` req/s for `--quality-seconds` s; the same requests against each gateway in
   turn (the fleet drains between runs). Each worker knows only its own in-flight requests and
   sees the others' through the engines' scraped /metrics (every `scrape_interval_s`), so with
   2 workers each routes on a staler view (`--scrape-interval` sets how stale). Reported: TDG
   ratio, SLO attainment, TTFT p50/p99 and how evenly the requests spread over the engines.

    python benchmarks/bench_gateway_workers.py [--rates 100,200,300,400,500,600,800] \\
        [--clients 2] [--quality-rate 16] [--json out.json]

On a 2-core machine the gateway workers, the engines and the load generators share the cores
(and any other job running), so rates are what this host gives, and the ratio is the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from _common import loadavg, stop_all, table, wait_idle, wait_up
from proserve.core.classes import parse_classes
from proserve.core.request import Request
from proserve.latency.profiles import load_profile
from proserve.serve.bench import BenchConfig, run_bench

MODEL = "proserve-emulated"


class _Skip(Exception):
    """--skip-sustained: straight to part 2."""


CLI = [sys.executable, "-m", "proserve.cli"]


# ---------------------------------------------------------------------------- load generation
def _client(args: tuple) -> list[tuple[bool, float | None]]:
    """One load-generator process: its share of the requests; (ok, TTFT) per request."""
    target, key, reqs, start_at = args
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    cfg = BenchConfig(target=target, model=MODEL, keys={"default": key},
                      timeout_s=60.0, max_duration_s=60.0)
    res = asyncio.run(run_bench(cfg, reqs))
    del res
    return [(r.generated >= r.output_len, (r.first_token_time - r.arrival) if r.generated
             else None) for r in reqs]


def measure(pool, target: str, key: str, rate: float, seconds: float, seed: int,
            clients: int) -> dict:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds)))
    reqs = [Request(i, float(x), 8, 4, ttft_slo=10.0, tpot_slo=10.0, cls="default")
            for i, x in enumerate(t)]
    shares = [reqs[k::clients] for k in range(clients)]
    start_at = time.time() + 0.5  # every client starts its clock together
    outs = pool.map(_client, [(target, key, s, start_at) for s in shares])
    flat = [o for out in outs for o in out]
    ttfts = np.array([x for ok, x in flat if ok and x is not None])
    ok = sum(1 for o, _ in flat if o)
    return {"n": len(flat), "ok": ok,
            "ttft_p50": float(np.percentile(ttfts, 50)) if ttfts.size else None,
            "ttft_p99": float(np.percentile(ttfts, 99)) if ttfts.size else None}


# ---------------------------------------------------------------------------- processes
def start_fleet(port: int, instances: int, processes: int, classes: str,
                extra: list[str]) -> subprocess.Popen:
    p = subprocess.Popen(CLI + ["emulate", "--instances", str(instances), "--processes",
                                str(processes), "--port", str(port), "--classes", classes,
                                *extra], stderr=subprocess.DEVNULL)
    for i in range(instances):
        wait_up(f"http://127.0.0.1:{port + i}/health", timeout=120)
    return p


def start_gateway(tmp: Path, name: str, port: int, workers: int, backends: list[str],
                  classes: str, kv_blocks: int | None, scrape_s: float = 0.5
                  ) -> subprocess.Popen:
    cfg = {"model": MODEL, "port": port, "workers": workers, "router": "go",
           "classes": classes,
           "class_settings": {c.name: {"queue_timeout_s": 5.0} for c in parse_classes(classes)},
           "backends": [{"url": u, "kind": "proserve",
                         **({"kv_blocks": kv_blocks} if kv_blocks else {})} for u in backends],
           "tenants": [{"name": c.name, "api_keys": [f"k-{c.name}"], "class": c.name}
                       for c in parse_classes(classes)],
           "scrape_interval_s": scrape_s, "shutdown_grace_s": 5}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(cfg))
    p = subprocess.Popen(CLI + ["gateway", "--config", str(path)], stderr=subprocess.DEVNULL)
    wait_up(f"http://127.0.0.1:{port}/health", timeout=180)
    return p


def engine_counts(urls: list[str]) -> list[float]:
    out = []
    for u in urls:
        with urllib.request.urlopen(u + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out.append(sum(float(x.split()[-1]) for x in text.splitlines()
                       if x.startswith("vllm:request_success_total")))
    return out


def drain(urls: list[str], tries: int = 600) -> None:
    """Wait until no engine has a request running or waiting."""
    wait_idle(urls, timeout=tries * 0.1, poll=0.1)


# ---------------------------------------------------------------------------- part 2
def quality_workload(rate: float, seconds: float, seed: int, classes: str,
                     kv_blocks: int) -> list[Request]:
    model = load_profile("llama3.1-8b@h100").with_kv_blocks(kv_blocks)
    cls = parse_classes(classes)
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds)))
    out = []
    for i, x in enumerate(t):
        c = cls[int(rng.integers(0, len(cls)))]
        p, n = int(rng.integers(256, 3073)), 16
        ttft, tpot = c.slos(model, p, n)
        out.append(Request(i, float(x), p, n, ttft_slo=ttft, tpot_slo=tpot, weight=c.weight,
                           priority=c.rank, cls=c.name))
    return out


def run_quality(target: str, reqs: list[Request]) -> dict:
    cfg = BenchConfig(target=target, model=MODEL, keys={r.cls: f"k-{r.cls}" for r in reqs},
                      timeout_s=120.0, max_duration_s=120.0)
    return asyncio.run(run_bench(cfg, reqs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="100,200,300,400,500,600,800")
    ap.add_argument("--step-seconds", type=float, default=5.0)
    ap.add_argument("--ttft-limit", type=float, default=1.0)
    ap.add_argument("--clients", type=int, default=2, help="load-generator processes")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--quality-rate", type=float, default=16.0)
    ap.add_argument("--quality-seconds", type=float, default=30.0)
    ap.add_argument("--quality-instances", type=int, default=2)
    ap.add_argument("--quality-repeats", type=int, default=2,
                    help="workloads (seeds) per worker count, alternating which goes first")
    ap.add_argument("--kv-blocks", type=int, default=400)
    ap.add_argument("--scrape-interval", type=float, default=0.5,
                    help="part 2: the gateways' scrape_interval_s (how stale a worker's view of "
                         "the other workers' requests may be)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-sustained", action="store_true")
    ap.add_argument("--port", type=int, default=18501)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="proserve-gw-workers-"))
    ctx = mp.get_context("spawn")
    procs: list[subprocess.Popen] = []
    result: dict = {"benchmark": "bench_gateway_workers", "command": " ".join(sys.argv),
                    "loadavg_before": loadavg(), "args": vars(a)}
    gw_ports = {1: a.port + 10, 2: a.port + 11}
    try:
        with ctx.Pool(a.clients) as pool:
            if a.skip_sustained:
                raise _Skip
            # ---- 1. sustained streaming rate
            classes = "default:w=1,ttft=10s,tpot=10s"
            procs.append(start_fleet(a.port, 2, 2, classes, []))
            urls = [f"http://127.0.0.1:{a.port + i}" for i in range(2)]
            gws = {w: start_gateway(tmp, f"gw{w}", gw_ports[w], w, urls, classes, None)
                   for w in (1, 2)}
            procs += list(gws.values())
            targets = {w: f"http://127.0.0.1:{gw_ports[w]}" for w in (1, 2)}
            print(f"bench_gateway_workers: load average {result['loadavg_before']}; "
                  f"{a.clients} load-generator processes")
            for w in (1, 2):  # warm-up (connections, lazy imports) of every worker
                measure(pool, targets[w], "k-default", 20, 2.0, 99, a.clients)
            steps: dict[int, list] = {1: [], 2: []}
            best = {1: 0.0, 2: 0.0}
            failed = {1: False, 2: False}
            for r in [float(x) for x in a.rates.split(",")]:
                if all(failed.values()):
                    break
                for w in (1, 2):
                    if failed[w]:
                        continue
                    m = measure(pool, targets[w], "k-default", r, a.step_seconds, 2, a.clients)
                    good = (m["ok"] >= 0.99 * m["n"] and m["ttft_p99"] is not None
                            and m["ttft_p99"] < a.ttft_limit)
                    steps[w].append({"rate": r, **m, "sustained": good})
                    if good:
                        best[w] = r
                    else:
                        failed[w] = True
                    time.sleep(a.settle if not good else 1.0)
            print(f"\n1. highest sustained streaming rate (>= 99% ok, TTFT p99 < "
                  f"{a.ttft_limit:g} s), 2 engines in 2 processes")
            table(["workers", "sustained req/s", "steps (rate: ok/n, TTFT p99 s)"],
                  [[str(w), f"{best[w]:g}", "; ".join(
                      f"{s['rate']:g}: {s['ok']}/{s['n']}, "
                      + (f"{s['ttft_p99']:.3f}" if s["ttft_p99"] is not None else "-")
                      for s in steps[w])] for w in (1, 2)])
            ratio = best[2] / best[1] if best[1] else None
            print(f"workers 2 / workers 1 sustained rate: "
                  f"{ratio:.2f}x" if ratio else "workers 1 sustained no step")
            result["sustained"] = {"steps": steps, "best": best, "ratio": ratio}
    except _Skip:
        pass
    except BaseException:
        stop_all(procs)
        raise
    try:
        stop_all(procs)
        procs = []

        # ---- 2. routing quality, 1 vs 2 workers
        if not a.skip_quality:
            classes = "high:w=2,ttft=5x,tpot=5x;low:w=1,ttft=5x,tpot=5x"
            n = a.quality_instances
            procs.append(start_fleet(a.port, n, min(n, 2), classes,
                                     ["--kv-blocks", str(a.kv_blocks)]))
            urls = [f"http://127.0.0.1:{a.port + i}" for i in range(n)]
            gws = {w: start_gateway(tmp, f"q{w}", gw_ports[w], w, urls, classes, a.kv_blocks,
                                    a.scrape_interval) for w in (1, 2)}
            procs += list(gws.values())
            rows, quality = [], {1: [], 2: []}
            for rep in range(a.quality_repeats):
                reqs_seed = 7 + rep
                for w in ((1, 2) if rep % 2 == 0 else (2, 1)):  # alternate who goes first
                    drain(urls)
                    before = engine_counts(urls)
                    reqs = quality_workload(a.quality_rate, a.quality_seconds, reqs_seed,
                                            classes, a.kv_blocks)
                    res = run_quality(f"http://127.0.0.1:{gw_ports[w]}", reqs)
                    split = [x - y for x, y in zip(engine_counts(urls), before)]
                    cv = float(np.std(split) / np.mean(split)) if np.mean(split) else None
                    q = {"seed": reqs_seed, "tdg_ratio": res["tdg_ratio"],
                         "attainment": res["slo_attainment"], "ttft_p50": res.get("ttft_p50"),
                         "ttft_p99": res.get("ttft_p99"), "ok": res["ok"], "n": len(reqs),
                         "errors": res["errors"], "per_engine": split, "split_cv": cv}
                    quality[w].append(q)
                    rows.append([str(w), str(reqs_seed), f"{q['ok']}/{q['n']}",
                                 f"{100 * q['tdg_ratio']:.1f}", f"{100 * q['attainment']:.1f}",
                                 f"{1000 * q['ttft_p50']:.0f}" if q["ttft_p50"] else "-",
                                 f"{1000 * q['ttft_p99']:.0f}" if q["ttft_p99"] else "-",
                                 "/".join(f"{x:g}" for x in split),
                                 f"{cv:.3f}" if cv is not None else "-"])
            for w in (1, 2):
                qs = quality[w]

                def mean(k: str, qs=qs) -> float:
                    return float(np.mean([q[k] for q in qs]))

                rows.append([f"{w} (mean)", "", "", f"{100 * mean('tdg_ratio'):.1f}",
                             f"{100 * mean('attainment'):.1f}", f"{1000 * mean('ttft_p50'):.0f}",
                             f"{1000 * mean('ttft_p99'):.0f}", "", f"{mean('split_cv'):.3f}"])
            print(f"\n2. routing quality at {a.quality_rate:g} req/s for "
                  f"{a.quality_seconds:g} s, {n} engines with {a.kv_blocks} KV blocks, "
                  f"scrape_interval_s {a.scrape_interval:g}")
            table(["workers", "seed", "ok", "TDG %", "attain %", "TTFT p50 ms", "TTFT p99 ms",
                   "requests per engine", "split CV"], rows)
            result["quality"] = quality
    finally:
        stop_all(procs)
    result["loadavg_after"] = loadavg()
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

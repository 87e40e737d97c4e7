"""Soak: the gateway under steady load for a long time; errors, RSS over time, latency drift.

Setup: `--instances` emulated engines (`proserve emulate`, one process, the `--profile` latency
profile, `--time-scale` wall seconds per engine second) and one `proserve gateway` (its own
process, one worker, router `go`, one tenant key, no tenant limits) in front of them. The load
generator is `proserve bench`'s engine (`run_bench`, in this process): open-loop Poisson arrivals
with ShareGPT prompt/output lengths (`--trace`), prompts sent as token ids, outputs streamed.

1. Capacity (skipped when `--rate` is given): `--ramp-seconds` s of load per step, one step
   after the other (each drains before the next): rates doubling from `--ramp-start` until a
   step fails, then `--ramp-refine` bisection steps between the last passing and the first
   failing rate (or the explicit `--ramp` list, up to its first failing step). A step passes
   with no error and TTFT p50 under `--ttft-limit` s; capacity = the highest passing rate.
2. Soak at `--load` x capacity for `--minutes`, as consecutive `--window`-second windows. The
   arrivals never pause: window k+1's requests start at its scheduled time while the tail of
   window k still streams. Every window replays the same workload slice (seed 0: the same lengths
   and arrival gaps, so windows differ only by what the system does; request ids, hence prompts,
   unique over the run) and records: requests, finished, errors by code (and an example
   message each), TTFT p50/p99, TPOT p50, and, at its end, the RSS (VmRSS from /proc, the
   process and its children) of the gateway and of the emulator, the gateway's open file
   descriptors and the CPU share of the gateway, the emulator and the load generator. RSS is
   also sampled every `--sample` s (the time series goes to the JSON).
3. Verdict, against issue 14's acceptance: zero errors; RSS growth after warm-up = RSS at the end
   of the last window / RSS at the end of the warm-up windows - 1 < `--max-rss-growth` (gateway;
   the emulator's is reported too); p50 TTFT drift = median of the last 3 windows' p50 / median
   of the first 3 post-warm-up windows' p50 - 1 < `--max-drift` (its absolute value must be under
   the limit: faster is as suspicious as slower). Warm-up: `--warmup-windows`, by default the
   larger of 2 windows and 10% of the run (at most all windows but one).

Printed: the capacity found, one progress line per window, the per-window table and the verdict.
Written: the raw numbers as JSON to `--out` (default docs/results/soak_gateway.json) and the
per-window table as plain text next to it (same name, .txt). Exit code 1 if the verdict fails.

    python benchmarks/soak_gateway.py                             # full: ramp ~6 min + 30 min
    python benchmarks/soak_gateway.py --minutes 2 --window 30 --out /tmp/soak_smoke.json  # smoke
    python benchmarks/soak_gateway.py --minutes 2 --window 20 --rate 1.5 --out /tmp/soak.json

On a 2-core host the engines, the gateway and the load generator share the cores; the default
`--time-scale` slows the emulated H100s down so that the fleet's capacity, not the CPU, is what the
ramp finds (the CPU shares in the table show how close the host is to its own limit).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout, suppress
from pathlib import Path
from typing import Any

import yaml

from _common import loadavg, stop_all, table, wait_idle, wait_up
from proserve.core.request import Request
from proserve.latency.profiles import load_profile
from proserve.serve.bench import BenchConfig, run_bench
from proserve.workload import make_workload

MODEL = "proserve-emulated"
CLASSES = "default:w=1,ttft=10s,tpot=10s"  # one class: the gateway's and the engines'
KEY = "k-soak"
CLI = [sys.executable, "-m", "proserve.cli"]
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- /proc
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a gateway or fleet may fork workers)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` and its descendants, MiB (None if the process is gone)."""
    total, seen = 0, False
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        seen = True
                        break
        except OSError:
            continue
    return total / 1024 if seen else None


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / TICK


def fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# ---------------------------------------------------------------------------- processes
def free_base(n: int, start: int = 18601) -> int:
    """The first port P >= ``start`` with P .. P+n-1 all free on 127.0.0.1."""
    base = start
    while base + n < 65000:
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            base += n
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


def start_servers(a: argparse.Namespace, tmp: Path
                  ) -> tuple[subprocess.Popen, subprocess.Popen, str, list[str]]:
    base = a.port or free_base(a.instances + 1)
    gw_port = base + a.instances
    emu_cmd = CLI + ["emulate", "--instances", str(a.instances), "--port", str(base),
                     "--profile", a.profile, "--classes", CLASSES,
                     "--time-scale", str(a.time_scale), "--max-model-len", str(a.max_model_len)]
    if a.policy:
        emu_cmd += ["--policy", a.policy]
    emu = subprocess.Popen(emu_cmd, stdout=subprocess.DEVNULL,
                           stderr=open(tmp / "emulate.log", "w"))  # noqa: SIM115 - child owns it
    gw = None
    try:
        for i in range(a.instances):
            wait_up(f"http://127.0.0.1:{base + i}/health", timeout=120)
        cfg = {"model": MODEL, "host": "127.0.0.1", "port": gw_port, "workers": 1,
               "router": "go", "classes": CLASSES,
               "backends": [{"url": f"http://127.0.0.1:{base + i}", "kind": "proserve",
                             "profile": a.profile} for i in range(a.instances)],
               "tenants": [{"name": "soak", "api_keys": [KEY], "class": "default"}],
               "max_model_len": a.max_model_len, "shutdown_grace_s": 5}
        (tmp / "gateway.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        gw = subprocess.Popen(CLI + ["gateway", "--config", str(tmp / "gateway.yaml")],
                              stdout=subprocess.DEVNULL,
                              stderr=open(tmp / "gateway.log", "w"))  # noqa: SIM115
        wait_up(f"http://127.0.0.1:{gw_port}/health", timeout=120)
    except BaseException:
        stop_all([p for p in (gw, emu) if p is not None])
        raise
    engines = [f"http://127.0.0.1:{base + i}" for i in range(a.instances)]
    return emu, gw, f"http://127.0.0.1:{gw_port}", engines


def drain(engines: list[str], timeout: float = 300.0) -> float:
    """Wait until no engine has a request running or waiting; the seconds it took."""
    return wait_idle(engines, timeout)


# ---------------------------------------------------------------------------- load
def workload(a: argparse.Namespace, rate: float, seconds: float, seed: int,
             first_id: int) -> list[Request]:
    reqs, _ = make_workload(a.trace, rate=rate, duration=seconds, classes=CLASSES,
                            model=load_profile(a.profile), seed=seed,
                            max_model_len=a.max_model_len)
    for i, r in enumerate(reqs):  # ids unique over the run: distinct prompts (no cache hits)
        r.id = first_id + i
    return reqs


def bench_cfg(target: str, a: argparse.Namespace) -> BenchConfig:
    return BenchConfig(target=target, model=MODEL, keys={"default": KEY},
                       timeout_s=a.request_timeout, max_duration_s=a.request_timeout)


def stats(res: dict, n: int) -> dict[str, Any]:
    return {"requests": n, "finished": res.get("finished", 0), "ok": res.get("ok", 0),
            "errors": res.get("errors", {}), "error_examples": res.get("error_examples", {}),
            "ttft_p50": res.get("ttft_p50"), "ttft_p99": res.get("ttft_p99"),
            "tpot_p50": res.get("tpot_p50"), "e2e_p50": res.get("e2e_p50"),
            "output_tokens": res.get("output_tokens")}


def ms(v: float | None) -> str:
    return f"{1000 * v:.0f}" if v is not None else "-"


def mib(v: float | None) -> str:
    return f"{v:.1f}" if v is not None else "-"


def ramp(a: argparse.Namespace, target: str, engines: list[str]
         ) -> tuple[float, float | None, list[dict]]:
    """Capacity: the highest passing rate, the lowest failing one (None: none failed), steps."""
    steps: list[dict] = []
    next_id = 10_000_000

    def step(rate: float) -> bool:
        nonlocal next_id
        reqs = workload(a, rate, a.ramp_seconds, 1000, next_id)  # one mix, scaled
        next_id += len(reqs)
        t = time.monotonic()
        m = stats(asyncio.run(run_bench(bench_cfg(target, a), reqs)), len(reqs))
        good = not m["errors"] and m["ttft_p50"] is not None and m["ttft_p50"] < a.ttft_limit
        steps.append({"rate": rate, **m, "wall_s": time.monotonic() - t, "pass": good,
                      "drain_s": drain(engines)})
        print(f"  ramp {rate:g} req/s: {m['ok']}/{m['requests']} ok, TTFT p50 "
              f"{ms(m['ttft_p50'])} ms, p99 {ms(m['ttft_p99'])} ms, errors {m['errors'] or 0}"
              f" -> {'pass' if good else 'FAIL'}", flush=True)
        return good

    best, fail = 0.0, None
    if a.ramp:  # explicit steps, up to the first failing one
        for rate in (float(x) for x in a.ramp.split(",")):
            if not step(rate):
                fail = rate
                break
            best = rate
        return best, fail, steps
    rate = a.ramp_start  # double until a step fails, then bisect
    while rate <= a.ramp_max:
        if not step(rate):
            fail = rate
            break
        best = rate
        rate *= 2
    if fail is not None:
        hi = fail
        for _ in range(a.ramp_refine):
            mid = round((best + hi) / 2, 3)
            if step(mid):
                best = mid
            else:
                hi = fail = mid
    return best, fail, steps


async def soak(a: argparse.Namespace, target: str, rate: float, n: int, gw_pid: int,
               emu_pid: int, windows: list[dict], series: list[list[float | None]]) -> None:
    """Fill ``windows`` (one dict each, their results) and ``series`` (RSS samples) as it goes,
    so that an interrupted run still has what it measured."""
    cfg = bench_cfg(target, a)
    plans, next_id = [], 0
    for _k in range(n):
        reqs = workload(a, rate, a.window, 0, next_id)  # the same mix every window
        next_id += len(reqs)
        plans.append(reqs)
    windows += [{"window": k} for k in range(n)]
    t0 = time.monotonic()
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            series.append([round(time.monotonic() - t0, 1), rss_mb(gw_pid), rss_mb(emu_pid)])
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), a.sample)

    def snapshot() -> dict[str, Any]:
        return {"t": time.monotonic() - t0, "gw_rss_mb": rss_mb(gw_pid),
                "emu_rss_mb": rss_mb(emu_pid), "gw_fds": fds(gw_pid), "gw_cpu_s": cpu_s(gw_pid),
                "emu_cpu_s": cpu_s(emu_pid), "client_cpu_s": self_cpu_s()}

    async def one(k: int) -> None:
        reqs = plans[k]
        res = await run_bench(cfg, reqs)
        w = windows[k]
        w.update(stats(res, len(reqs)))
        w["drained_at_s"] = time.monotonic() - t0
        end = w.get("end") or snapshot()
        print(f"  window {k + 1}/{n}: {w['ok']}/{w['requests']} ok, errors "
              f"{w['errors'] or 0}, TTFT p50 {ms(w['ttft_p50'])} ms p99 {ms(w['ttft_p99'])} ms,"
              f" TPOT p50 {ms(w['tpot_p50'])} ms, RSS gateway {mib(end['gw_rss_mb'])} MiB "
              f"emulator {mib(end['emu_rss_mb'])} MiB", flush=True)
        plans[k] = []  # let the requests go

    samp = asyncio.ensure_future(sampler())
    tasks = []
    prev = snapshot()
    for k in range(n):
        delay = t0 + k * a.window - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if k:
            windows[k - 1]["end"] = prev = _close(windows[k - 1], prev, snapshot())
        tasks.append(asyncio.ensure_future(one(k)))
    delay = t0 + n * a.window - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    windows[n - 1]["end"] = _close(windows[n - 1], prev, snapshot())
    try:
        await asyncio.gather(*tasks)
    finally:
        done.set()
        await samp
    series.append([round(time.monotonic() - t0, 1), rss_mb(gw_pid), rss_mb(emu_pid)])


def _close(w: dict, start: dict, end: dict) -> dict:
    """Window ``w`` ends at ``end``: its CPU shares (% of one core) over [start, end]."""
    dt = max(end["t"] - start["t"], 1e-9)
    for who in ("gw", "emu", "client"):
        w[f"{who}_cpu_pct"] = 100 * (end[f"{who}_cpu_s"] - start[f"{who}_cpu_s"]) / dt
    return end


# ---------------------------------------------------------------------------- verdict
def verdict(a: argparse.Namespace, windows: list[dict]) -> dict[str, Any]:
    n = len(windows)
    warm = a.warmup_windows if a.warmup_windows is not None else max(2, math.ceil(0.1 * n))
    warm = max(0, min(warm, n - 1))
    errors: dict[str, int] = {}
    examples: dict[str, str] = {}
    for w in windows:
        for c, v in w["errors"].items():
            errors[c] = errors.get(c, 0) + v
        for c, d in w["error_examples"].items():
            examples.setdefault(c, d)

    def rss_growth(key: str) -> float | None:
        base = windows[warm - 1]["end"][key] if warm else windows[0]["start_rss"][key]
        last = windows[-1]["end"][key]
        return last / base - 1 if base and last is not None else None

    post = [w["ttft_p50"] for w in windows[warm:] if w["ttft_p50"] is not None]
    k = min(3, len(post))
    first = statistics.median(post[:k]) if k else None
    last = statistics.median(post[-k:]) if k else None
    drift = last / first - 1 if first and last is not None else None
    total = sum(w["requests"] for w in windows)
    out = {"warmup_windows": warm, "requests": total,
           "ok": sum(w["ok"] for w in windows), "errors": errors, "error_examples": examples,
           "gw_rss_growth": rss_growth("gw_rss_mb"), "emu_rss_growth": rss_growth("emu_rss_mb"),
           "ttft_p50_first": first, "ttft_p50_last": last, "ttft_p50_drift": drift,
           "drift_windows": k,
           # fewer than 6 post-warm-up windows: the first and last sets share windows, so the
           # drift understates any trend (a smoke run, not a soak)
           "drift_windows_overlap": len(post) < 2 * k}
    out["pass_errors"] = total > 0 and not errors
    out["pass_rss"] = out["gw_rss_growth"] is not None and out["gw_rss_growth"] < a.max_rss_growth
    out["pass_drift"] = drift is not None and abs(drift) < a.max_drift
    out["pass"] = out["pass_errors"] and out["pass_rss"] and out["pass_drift"]
    return out


def window_table(windows: list[dict], warm: int) -> str:
    rows = []
    for w in windows:
        e = w["end"]
        err = ",".join(f"{c}:{v}" for c, v in sorted(w["errors"].items())) or "0"
        rows.append([f"{w['window'] + 1}{'*' if w['window'] < warm else ''}",
                     f"{e['t']:.0f}", w["requests"], w["finished"], err, ms(w["ttft_p50"]),
                     ms(w["ttft_p99"]), ms(w["tpot_p50"]), mib(e["gw_rss_mb"]),
                     mib(e["emu_rss_mb"]), e["gw_fds"], f"{w['gw_cpu_pct']:.0f}",
                     f"{w['emu_cpu_pct']:.0f}", f"{w['client_cpu_pct']:.0f}"])
    buf = io.StringIO()
    with redirect_stdout(buf):
        table(["window", "end s", "requests", "finished", "errors", "TTFT p50 ms",
               "TTFT p99 ms", "TPOT p50 ms", "gateway RSS MiB", "emulator RSS MiB",
               "gateway fds", "gateway CPU %", "emulator CPU %", "client CPU %"], rows)
    return buf.getvalue()


def pct(v: float | None) -> str:
    return f"{100 * v:+.1f}%" if v is not None else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="soak length")
    ap.add_argument("--window", type=float, default=60.0, help="seconds per window")
    ap.add_argument("--load", type=float, default=0.7, help="soak rate / measured capacity")
    ap.add_argument("--rate", type=float, default=None,
                    help="soak at this rate (req/s) and skip the capacity ramp")
    ap.add_argument("--ramp", default=None,
                    help="capacity ramp as explicit rates, ascending (stops at the first failing "
                         "step); default: doubling from --ramp-start, then --ramp-refine "
                         "bisection steps")
    ap.add_argument("--ramp-start", type=float, default=2.0, help="first ramp rate (req/s)")
    ap.add_argument("--ramp-max", type=float, default=256.0, help="the doubling stops here")
    ap.add_argument("--ramp-refine", type=int, default=3,
                    help="bisection steps between the last passing and first failing rate")
    ap.add_argument("--ramp-seconds", type=float, default=20.0)
    ap.add_argument("--ttft-limit", type=float, default=1.0,
                    help="a ramp step passes with no error and TTFT p50 under this (s)")
    ap.add_argument("--instances", type=int, default=2, help="emulated engines")
    ap.add_argument("--time-scale", type=float, default=2.0,
                    help="the emulator's wall seconds per engine second")
    ap.add_argument("--policy", default=None, help="the engines' scheduler (emulator default)")
    ap.add_argument("--profile", default="llama3.1-8b@h100")
    ap.add_argument("--trace", default="sharegpt", help="prompt/output lengths")
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--request-timeout", type=float, default=120.0,
                    help="per request, and the longest a window waits after its last arrival")
    ap.add_argument("--warmup-windows", type=int, default=None,
                    help="default: max(2, 10%% of the windows)")
    ap.add_argument("--sample", type=float, default=5.0, help="RSS sampling interval (s)")
    ap.add_argument("--max-rss-growth", type=float, default=0.10)
    ap.add_argument("--max-drift", type=float, default=0.10)
    ap.add_argument("--port", type=int, default=0,
                    help="first engine port (the gateway takes the next after the engines); "
                         "0: the first free block from 18601")
    ap.add_argument("--out", default="docs/results/soak_gateway.json")
    a = ap.parse_args()
    n = max(1, round(a.minutes * 60 / a.window))

    def on_term(signum, frame):  # SIGTERM/SIGHUP: unwind through the finally below
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="proserve-soak-"))
    result: dict[str, Any] = {"benchmark": "soak_gateway", "command": " ".join(sys.argv),
                              "args": vars(a), "loadavg_before": loadavg(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "cpus": os.cpu_count(), "logs": str(tmp)}
    print(f"soak_gateway: {a.instances} emulated engines ({a.profile}, time scale "
          f"{a.time_scale:g}) behind one gateway worker; {a.trace} lengths; load average "
          f"{result['loadavg_before']}; logs in {tmp}", flush=True)
    procs: list[subprocess.Popen] = []
    windows: list[dict] = []
    series: list[list[float | None]] = []
    try:
        emu, gw, target, engines = start_servers(a, tmp)
        procs = [gw, emu]
        result["target"] = target
        print(f"  gateway {target} (pid {gw.pid}), emulator pid {emu.pid}", flush=True)
        warm_reqs = workload(a, 1.0, 5.0, 999, 20_000_000)  # connections, lazy imports
        asyncio.run(run_bench(bench_cfg(target, a), warm_reqs))
        if a.rate is not None:
            capacity, rate = None, a.rate
            print(f"soak rate given: {rate:g} req/s (no capacity ramp)", flush=True)
        else:
            print(f"capacity ramp: {a.ramp_seconds:g} s per step, pass = no error and TTFT p50 "
                  f"< {a.ttft_limit:g} s", flush=True)
            capacity, failed_at, steps = ramp(a, target, engines)
            result.update(ramp=steps, ramp_failed_at_rps=failed_at)
            if capacity <= 0:
                raise SystemExit("no ramp step passed: lower --ramp-start (or --ramp)")
            if failed_at is None:
                print(f"  warning: no ramp step failed, so the capacity is at least "
                      f"{capacity:g} req/s (raise --ramp-max or extend --ramp)", flush=True)
            rate = a.load * capacity
            print(f"capacity: {capacity:g} req/s (first failing step: "
                  f"{failed_at if failed_at is not None else '-'} req/s); soak at {a.load:g} x = "
                  f"{rate:g} req/s", flush=True)
        drain(engines)
        result.update(capacity_rps=capacity, soak_rate_rps=rate)
        print(f"soak: {n} windows of {a.window:g} s at {rate:g} req/s", flush=True)
        start_rss = {"gw_rss_mb": rss_mb(gw.pid), "emu_rss_mb": rss_mb(emu.pid)}
        try:
            asyncio.run(soak(a, target, rate, n, gw.pid, emu.pid, windows, series))
        except BaseException as e:  # keep what was measured: the completed windows
            done = [w for w in windows if "ttft_p50" in w]
            out = Path(a.out).with_suffix(".partial.json")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({**result, "interrupted": repr(e), "windows": done,
                                       "rss_series": series}, indent=1) + "\n")
            print(f"\ninterrupted after {len(done)} complete windows: wrote {out}", flush=True)
            raise
        windows[0]["start_rss"] = start_rss
        result["idle_after"] = {"gw_rss_mb": rss_mb(gw.pid), "emu_rss_mb": rss_mb(emu.pid),
                                "gw_fds": fds(gw.pid)}
    finally:
        stop_all(procs)
    result["loadavg_after"] = loadavg()
    v = verdict(a, windows)
    result.update(windows=windows, rss_series=series,
                  rss_series_columns=["t_s", "gw_rss_mb", "emu_rss_mb"], verdict=v)
    text = window_table(windows, v["warmup_windows"])
    header = (f"soak_gateway: {n} x {a.window:g} s at {rate:g} req/s"
              + (f" ({a.load:g} x capacity {capacity:g} req/s)" if capacity else "")
              + f"; {a.instances} engines {a.profile} time scale {a.time_scale:g}; "
              f"* = warm-up window\n")
    print("\n" + header + text, end="")
    thr_err = ", ".join(f"{c}: {k}" for c, k in sorted(v["errors"].items())) or "none"
    lines = [
        f"requests {v['requests']}, ok {v['ok']}; errors: {thr_err}"
        f"  -> {'PASS' if v['pass_errors'] else 'FAIL'} (0 errors)",
        f"gateway RSS growth after warm-up ({v['warmup_windows']} windows): "
        f"{pct(v['gw_rss_growth'])}  -> {'PASS' if v['pass_rss'] else 'FAIL'} "
        f"(< {100 * a.max_rss_growth:g}%); emulator {pct(v['emu_rss_growth'])}",
        f"p50 TTFT drift (median of last {v['drift_windows']} / first {v['drift_windows']} "
        f"post-warm-up windows): {ms(v['ttft_p50_last'])} / {ms(v['ttft_p50_first'])} ms = "
        f"{pct(v['ttft_p50_drift'])}  -> {'PASS' if v['pass_drift'] else 'FAIL'} "
        f"(|drift| < {100 * a.max_drift:g}%)"
        + ("; the first and last windows overlap: too short a run to measure drift"
           if v["drift_windows_overlap"] else ""),
        f"verdict: {'PASS' if v['pass'] else 'FAIL'}",
    ]
    for c, d in v["error_examples"].items():
        lines.insert(1, f"  e.g. {c}: {d}")
    print("\n" + "\n".join(lines), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".txt").write_text(header + text + "\n" + "\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.txt')}")
    return 0 if v["pass"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("soak_gateway: interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)

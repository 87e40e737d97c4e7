"""Two gateway processes, one tenant limit: does Redis hold the tenant to its ``max_rps``?

Issue 14's acceptance: two gateway processes sharing one Redis hold a tenant to its ``max_rps``
within 10% under a load of 3x that rate split across both. For each limit in ``--limits`` this
starts one emulated engine, two ``proserve gateway`` processes (two "hosts": separate configs and
ports) and sends open-loop requests at ``--load`` x the limit, alternating between the two
gateways, for ``--seconds``. Printed, side by side in one run:

- ``redis``: both gateways share the tenant's limit through one ``redis-server``;
- ``local``: the same two gateways without Redis (limits per process, as the gateway warns at
  start), which is what a deployment without a shared store gets: about twice the limit.

The admitted rate is admitted requests over the span the sends covered; the ratio to the limit is
the number the criterion is about (1.00 = exact). Needs ``redis-server`` on PATH (``apt-get
install -y redis-server``) and the ``redis`` Python package (``pip install -e .`` brings it).

    python benchmarks/gateway_shared_limits.py            # limits 10, 20, 50 req/s, 20 s each
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from _common import loadavg, stop_all, table, wait_up

MODEL = "proserve-emulated"
CLASSES = "std:w=1,ttft=30s,tpot=1s"
CLI = [sys.executable, "-m", "proserve.cli"]
KEY = {"Authorization": "Bearer k-t"}
BODY = {"model": MODEL, "prompt": "x", "max_tokens": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis() -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH: apt-get install -y redis-server")
    port = free_port()
    p = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    import redis

    c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    for _ in range(500):
        if p.poll() is not None:
            sys.exit(f"redis-server exited with {p.returncode}")
        try:
            if c.ping():
                break
        except redis.RedisError:
            time.sleep(0.02)
    else:
        sys.exit("redis-server never answered PING")
    c.close()
    return p, f"redis://127.0.0.1:{port}/0"


def gateway_doc(port: int, backend: str, max_rps: float, redis_url: str | None) -> dict:
    d = {
        "model": MODEL, "classes": CLASSES, "port": port,
        "backends": [{"url": backend}],
        "tenants": [{"name": "t", "api_keys": ["k-t"], "class": "std", "max_rps": max_rps}],
        "shutdown_grace_s": 5,
    }
    if redis_url:
        d["limits"] = {"backend": "redis", "url": redis_url}
    return d


async def load(urls: list[str], rate: float, seconds: float) -> tuple[list[tuple], float]:
    """Open-loop POSTs at ``rate``/s for ``seconds``, alternating between ``urls``: each
    request's (gateway index, status, error code), and the span the sends covered."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one(k: int) -> tuple:
            async with s.post(urls[k] + "/v1/completions", json=BODY, headers=KEY,
                              timeout=aiohttp.ClientTimeout(total=120)) as r:
                d = json.loads(await r.read())
                return k, r.status, (d.get("error") or {}).get("code")

        # warm both gateways (connections, Redis scripts) with one request each
        for u in urls:
            async with s.post(u + "/v1/completions", json=BODY, headers=KEY) as r:
                await r.read()
        await asyncio.sleep(1.5)  # let the warm-up requests leave the rate window
        n = int(rate * seconds)
        tasks, sent = [], []
        t0 = loop.time()
        for i in range(n):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(loop.time())
            tasks.append(asyncio.ensure_future(one(i % len(urls))))
        out = await asyncio.gather(*tasks)
    return out, sent[-1] - sent[0] + 1.0 / rate


def run_case(tmp: Path, emulator: str, max_rps: float, load_x: float, seconds: float,
             redis_url: str | None) -> dict:
    procs, urls = [], []
    try:
        for i in range(2):
            port = free_port()
            cfg = tmp / f"gw{i}-{max_rps}-{'redis' if redis_url else 'local'}.yaml"
            cfg.write_text(json.dumps(gateway_doc(port, emulator, max_rps, redis_url)))
            procs.append(subprocess.Popen([*CLI, "gateway", "--config", str(cfg)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        for u in urls:
            wait_up(u + "/health")
        out, span = asyncio.run(load(urls, load_x * max_rps, seconds))
    finally:
        stop_all(procs)
    statuses = [st for _, st, _ in out]
    other = [(st, code) for _, st, code in out if st not in (200, 429)]
    admitted = [k for k, st, _ in out if st == 200]
    rate = len(admitted) / span
    return {"store": "redis" if redis_url else "local", "max_rps": max_rps,
            "offered_rps": round(len(out) / span, 1), "sent": len(out),
            "admitted": len(admitted), "refused_429": statuses.count(429),
            "other": len(other), "admitted_rps": round(rate, 2),
            "ratio": round(rate / max_rps, 3),
            "via_gw0": admitted.count(0), "via_gw1": admitted.count(1), "span_s": round(span, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limits", default="10,20,50", help="tenant max_rps values, comma-separated")
    ap.add_argument("--load", type=float, default=3.0,
                    help="offered load as a multiple of the limit")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--no-local", action="store_true", help="skip the per-process comparison")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    limits = [float(x) for x in args.limits.split(",")]
    print(f"# load average at start: {loadavg()}; {args.load}x the limit for {args.seconds} s, "
          "split evenly across two gateway processes")
    rows = []
    redis_proc, redis_url = start_redis()
    eport = free_port()
    emu = subprocess.Popen([*CLI, "emulate", "--port", str(eport), "--classes", CLASSES,
                            "--time-scale", "0.01"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        emulator = f"http://127.0.0.1:{eport}"
        wait_up(emulator + "/health")
        with tempfile.TemporaryDirectory() as tmp:
            for lim in limits:
                for url in [redis_url] + ([] if args.no_local else [None]):
                    r = run_case(Path(tmp), emulator, lim, args.load, args.seconds, url)
                    rows.append(r)
                    print(f"  {r['store']:5s} max_rps {lim:g}: admitted {r['admitted_rps']}/s "
                          f"({r['ratio']:.3f}x)", flush=True)
    finally:
        stop_all([emu, redis_proc])
    keys = ["store", "max_rps", "offered_rps", "sent", "admitted", "refused_429", "other",
            "admitted_rps", "ratio", "via_gw0", "via_gw1"]
    table(keys, [[r[k] for k in keys] for r in rows])
    ok = [abs(r["ratio"] - 1) <= 0.10 and r["other"] == 0 for r in rows if r["store"] == "redis"]
    print(f"redis rows within 10% of max_rps with only 200/429 answers: {sum(ok)}/{len(ok)}")
    print(f"# load average at end: {loadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

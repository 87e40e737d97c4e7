"""Several processes: ``proserve gateway --workers N`` (one port, SO_REUSEPORT, a supervisor that
forwards SIGTERM/SIGHUP and restarts a dead worker) and ``proserve emulate --processes N`` (N
processes serving consecutive blocks of ports). Real processes on loopback ports; every wait is
a bounded number of polls, nothing asserts a duration."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from tests.serve.helpers import free_port, free_port_block, stop_procs, wait_http

CLI = [sys.executable, "-m", "proserve.cli"]
CLASSES = "std:w=1,ttft=30s,tpot=1s"
KEY = {"Authorization": "Bearer k-t"}
BODY = {"model": "proserve-emulated", "prompt": "x", "max_tokens": 2, "stream": True}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def ready_pids(log: Path, what: str, tries: int = 1200) -> list[int]:
    """The pids of the supervisor's "N workers ready (pids ...)" line (bounded polls)."""
    for _ in range(tries):
        m = re.search(rf"{what}: \d+ workers ready \(pids ([\d, ]+)\)", log.read_text())
        if m:
            return [int(x) for x in m.group(1).split(",")]
        time.sleep(0.05)
    raise AssertionError(f"no ready line in {log.read_text()[-2000:]}")


async def worker_seen(url: str, path: str = "/v1/completions", tries: int = 400,
                      want: set[str] | None = None) -> dict[str, int]:
    """Send requests, each on a new connection (the kernel picks a worker per connection),
    until every worker in ``want`` answered: {worker: responses}."""
    want = want or {"0", "1"}
    seen: dict[str, int] = {}
    for _ in range(tries):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            if path == "/v1/completions":
                async with s.post(url + path, json=BODY, headers=KEY) as r:
                    text = await r.text()
                    assert r.status == 200 and text.rstrip().endswith("data: [DONE]"), text
            else:
                async with s.get(url + path) as r:
                    await r.read()
            w = r.headers["x-proserve-worker"]
            seen[w] = seen.get(w, 0) + 1
        if want <= set(seen):
            break
    return seen


def gateway_doc(backends: list[str], port: int, **over) -> dict:
    return {"model": "proserve-emulated", "port": port, "classes": CLASSES,
            "backends": [{"url": u} for u in backends],
            "tenants": [{"name": "t", "api_keys": ["k-t"], "class": "std", "max_rps": 1000}],
            "health": {"interval_s": 0.2, "timeout_s": 5.0, "failures_to_eject": 3},
            "scrape_interval_s": 0.2, "shutdown_grace_s": 5, **over}


def test_workers_share_the_port_forward_signals_and_restart(tmp_path: Path) -> None:
    procs: list[subprocess.Popen] = []
    eport = free_port_block(2)
    try:
        # two engines in two processes: the emulator's own --processes
        elog = tmp_path / "emulate.log"
        emu = subprocess.Popen([*CLI, "emulate", "--instances", "2", "--processes", "2",
                                "--port", str(eport), "--classes", CLASSES, "--time-scale",
                                "0.01"], stdout=subprocess.DEVNULL, stderr=elog.open("w"))
        procs.append(emu)
        urls = [f"http://127.0.0.1:{eport + i}" for i in range(2)]
        for u in urls:
            wait_http(u + "/health", emu)
        epids = ready_pids(elog, "emulate")
        assert len(set(epids)) == 2 and all(alive(p) for p in epids) and emu.pid not in epids

        gport, mport = free_port(), free_port_block(2)
        cfg = tmp_path / "gw.json"
        cfg.write_text(json.dumps(gateway_doc(urls[:1], free_port())))
        glog = tmp_path / "gateway.log"
        gw = subprocess.Popen([*CLI, "gateway", "--config", str(cfg), "--port", str(gport),
                               "--workers", "2", "--metrics-port", str(mport)],
                              stdout=subprocess.DEVNULL, stderr=glog.open("w"))
        procs.append(gw)
        base = f"http://127.0.0.1:{gport}"
        wait_http(base + "/health", gw)
        pids = ready_pids(glog, "gateway")
        assert len(set(pids)) == 2 and gw.pid not in pids
        text = glog.read_text()
        assert "2 workers" in text and "tenant limits are per process" in text  # no Redis

        async def run() -> None:
            seen = await worker_seen(base)
            assert set(seen) == {"0", "1"}, seen  # both workers serve the one port
            # each worker's own metrics port: metrics_port + its index
            for i in range(2):
                async with aiohttp.ClientSession() as s, \
                        s.get(f"http://127.0.0.1:{mport + i}/metrics") as r:
                    assert r.status == 200 and r.headers["x-proserve-worker"] == str(i)
                    assert "proserve_requests_total" in await r.text()

            # SIGHUP to the supervisor reaches every worker: both now list two backends
            cfg.write_text(json.dumps(gateway_doc(urls, free_port())))
            gw.send_signal(signal.SIGHUP)
            for i in range(2):
                for _ in range(400):
                    async with aiohttp.ClientSession() as s, \
                            s.get(f"http://127.0.0.1:{mport + i}/health") as r:
                        if (await r.json())["backends"] == 2:
                            break
                    await asyncio.sleep(0.05)
                async with aiohttp.ClientSession() as s, \
                        s.get(f"http://127.0.0.1:{mport + i}/health") as r:
                    assert (await r.json()) == {"healthy_backends": 2, "backends": 2}

            # a worker killed outright is restarted; the port keeps serving meanwhile
            os.kill(pids[0], signal.SIGKILL)
            for _ in range(600):
                if "restarted" in glog.read_text():
                    break
                await asyncio.sleep(0.05)
            assert re.search(rf"gateway worker 0 \(pid {pids[0]}\) exited with code -9; restarting",
                             glog.read_text())
            assert "restarted" in glog.read_text()
            seen = await worker_seen(base)
            assert set(seen) == {"0", "1"}, seen
            # the new worker 0 took the file's backend list as SIGHUP last left it
            async with aiohttp.ClientSession() as s, \
                    s.get(f"http://127.0.0.1:{mport}/health") as r:
                assert (await r.json()) == {"healthy_backends": 2, "backends": 2}

        asyncio.run(run())
        now_pids = [int(x) for x in re.findall(r"restarted \(pid (\d+)\)", glog.read_text())]
        assert len(now_pids) == 1 and now_pids[0] not in pids
        # SIGTERM: the supervisor stops both workers, which drain and exit; it exits 0
        assert stop_procs([gw]) == [0]
        for p in [pids[1], now_pids[0]]:
            for _ in range(200):
                if not alive(p):
                    break
                time.sleep(0.05)
            assert not alive(p), p
        assert stop_procs([emu]) == [0]
        for p in epids:
            for _ in range(200):
                if not alive(p):
                    break
                time.sleep(0.05)
            assert not alive(p), p
    finally:
        stop_procs(procs)


def test_workers_port_in_use_and_bad_process_counts_are_clear_errors(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "gw.json"
        cfg.write_text(json.dumps(gateway_doc(["http://127.0.0.1:9"], free_port())))
        r = subprocess.run([*CLI, "gateway", "--config", str(cfg), "--port", str(port),
                            "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "cannot listen" in r.stderr, r.stderr
    r = subprocess.run([*CLI, "gateway", "--config", str(cfg), "--workers", "0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "workers" in r.stderr, r.stderr
    r = subprocess.run([*CLI, "emulate", "--instances", "2", "--processes", "3"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--processes must be between 1 and --instances (2)" in \
        r.stderr, r.stderr


def test_emulate_processes_split_ports_in_blocks() -> None:
    from proserve.serve.emulator import split

    assert split(5, 2) == [(0, 3), (3, 2)]
    assert split(16, 2) == [(0, 8), (8, 8)]
    assert split(3, 3) == [(0, 1), (1, 1), (2, 1)]
    assert sum(n for _, n in split(7, 4)) == 7

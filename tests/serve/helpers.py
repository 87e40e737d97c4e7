"""Helpers shared by the live-serving tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable


async def until(pred: Callable[[], bool], what: str, tries: int = 3000) -> None:
    """Wait for ``pred`` (bounded by a number of polls; no duration is asserted)."""
    for _ in range(tries):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def sse(text: str) -> list:
    """The payloads of an SSE body: JSON chunks, and the literal ``[DONE]``."""
    return [b[6:] if b[6:] == "[DONE]" else json.loads(b[6:])
            for b in text.split("\n\n") if b.startswith("data: ")]


def record_submits(engine) -> list:
    """Every request an emulated engine's loop is handed, in order (the loop still gets it)."""
    seen: list = []
    orig = engine.loop.submit

    def spy(req):
        seen.append(req)
        return orig(req)

    engine.loop.submit = spy
    return seen


# ---------------------------------------------------------------------------- redis-server
def free_port() -> int:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def free_port_block(n: int) -> int:
    """A base port whose ``n`` consecutive ports were all free a moment ago (for servers that
    take a block of ports: ``emulate --processes``, per-worker metrics ports). Bound together,
    so a port handed to a parallel test at the same time is not picked."""
    import socket

    for _ in range(200):
        base = free_port()
        socks = []
        try:
            for i in range(n):
                sk = socket.socket()
                socks.append(sk)
                sk.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for sk in socks:
                sk.close()
    raise AssertionError(f"no block of {n} free ports found")


def redis_server_binary() -> str:
    """The ``redis-server`` binary, installed with apt-get (as root) if missing (see
    tests/conftest.py: apt_binary)."""
    import shutil

    from tests.conftest import apt_binary

    return apt_binary("redis-server", lambda: shutil.which("redis-server"), timeout=600)


class RedisServer:
    """A throw-away ``redis-server`` on a free loopback port (no persistence); ``stop`` and
    ``start`` again on the same port simulate an outage."""

    def __init__(self) -> None:
        self.binary = redis_server_binary()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> RedisServer:
        import subprocess
        import time

        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            for _ in range(500):  # bounded polls, not a timed assert
                assert self.proc.poll() is None, f"redis-server exited {self.proc.returncode}"
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    time.sleep(0.02)
        finally:
            client.close()
        raise AssertionError("redis-server never answered PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# ---------------------------------------------------------------------------- CLI processes
def wait_http(url: str, proc, tries: int = 1200) -> None:
    """Poll ``url`` until it answers 200 while ``proc`` runs (a bounded number of polls, not a
    timed assert). Loopback only: no proxy is consulted."""
    import time
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(tries):
        assert proc.poll() is None, (proc.args, proc.returncode,
                                     proc.stderr.read() if proc.stderr else "")
        try:
            with opener.open(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never came up")


def stop_procs(procs: list) -> list[int]:
    """SIGTERM every process still running, wait (kill after 60 s); their exit codes."""
    import signal
    import subprocess

    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=60))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes

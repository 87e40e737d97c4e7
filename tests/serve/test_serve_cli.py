"""``proserve gateway`` and ``proserve bench`` as users run them: bad input gets a clear error
and a nonzero exit; a real run (emulators, gateway and bench as separate processes on loopback
ports) answers every request and the gateway's metrics account for each by tenant."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from tests.serve.helpers import free_port, wait_http
from typer.testing import CliRunner

from proserve.cli import app

CLASSES = "gold:w=4,ttft=30s,tpot=1s;bulk:w=1,ttft=60s,tpot=2s"  # gateway's and engines'
CLI = [sys.executable, "-m", "proserve.cli"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def gateway_doc(backends: list[str], port: int) -> dict:
    return {
        "model": "proserve-emulated", "host": "127.0.0.1", "port": port, "classes": CLASSES,
        "backends": [{"url": u, "kind": "proserve"} for u in backends],
        "tenants": [{"name": "gold-app", "api_keys": ["sk-gold"], "class": "gold"},
                    {"name": "bulk-jobs", "api_keys": ["sk-bulk"], "class": "bulk"}],
        "health": {"interval_s": 0.2, "timeout_s": 5.0, "failures_to_eject": 3},
        "scrape_interval_s": 0.2, "shutdown_grace_s": 5,
    }


def metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return r.read().decode()


def sample(text: str, line_start: str) -> float:
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line_start))


def stop(proc: subprocess.Popen) -> int:
    """SIGTERM (what a service manager sends) and return the exit code."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


# ---------------------------------------------------------------------------- bad input
def test_gateway_cli_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    good = gateway_doc(["http://127.0.0.1:9"], 18080)
    cases = [
        ({**good, "tenants": [{"name": "a", "api_keys": ["k"], "class": "platinum"}]},
         "tenants.0.class: unknown class 'platinum'"),
        ({**good, "backends": [{"url": "http://127.0.0.1:9", "profile": "no-such-gpu"}]},
         "unknown profile 'no-such-gpu'"),
        ({**good, "port": 70000}, "port: Input should be less than 65536"),
        ({**good, "router": "nope"}, "unknown router"),
    ]
    for i, (doc, word) in enumerate(cases):
        p = tmp_path / f"gw{i}.yaml"
        p.write_text(yaml.safe_dump(doc))
        r = invoke("gateway", "--config", str(p))
        assert r.exit_code == 2, (doc, r.output)
        assert "error:" in r.output and word in r.output, r.output
    p = tmp_path / "broken.yaml"
    p.write_text("backends: [unclosed")
    r = invoke("gateway", "--config", str(p))
    assert r.exit_code == 2 and "not valid YAML" in r.output and "broken.yaml" in r.output
    r = invoke("gateway", "--config", str(tmp_path / "missing.yaml"))
    assert r.exit_code == 2 and "no such file" in r.output


def test_gateway_cli_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = tmp_path / "gw.yaml"
        p.write_text(yaml.safe_dump(gateway_doc(["http://127.0.0.1:9"], free_port())))
        r = subprocess.run([*CLI, "gateway", "--config", str(p), "--port", str(port)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot listen" in r.stderr, r.stderr


def test_bench_cli_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    base = ["bench", "--trace", "azure-conv", "--count", "5", "--rate", "5",
            "--classes", CLASSES]
    cases = [
        (["--target", "ftp://127.0.0.1:1"], "--target must be an http(s) URL"),
        (["--target", "http://127.0.0.1:1", "--keys", "gold"], "--keys expects class=key"),
        (["--target", "http://127.0.0.1:1", "--keys", "silver=sk-1"],
         "not in the workload: ['silver']"),
        (["--target", "http://127.0.0.1:1", "--prompt-format", "xml"], "--prompt-format"),
        (["--target", "http://127.0.0.1:1", "--max-requests", "2"], "over --max-requests 2"),
        (["--target", "http://127.0.0.1:1", "--trace", "no-such-trace"],
         "no-such-trace: no such file"),
    ]
    for extra, word in cases:
        r = invoke(*base, *extra, "--out", str(tmp_path / "r.json"))
        assert r.exit_code == 2, (extra, r.output)
        assert "error:" in r.output and word in r.output, (extra, r.output)
    assert not (tmp_path / "r.json").exists()  # nothing was sent, nothing written


def test_bench_cli_counts_unreachable_target_as_errors(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = invoke("bench", "--target", f"http://127.0.0.1:{free_port()}", "--trace", "azure-conv",
               "--count", "3", "--rate", "50", "--timeout", "30", "--out", str(out))
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["ok"] == 0 and res["errors"] == {"connection_error": 3}
    assert res["requests"] == 3 and res["finished"] == 0
    assert "errors:" in r.output and "connection_error" in r.output


# ---------------------------------------------------------------------------- a real run
def test_gateway_and_bench_cli_end_to_end(tmp_path: Path) -> None:
    eports = [free_port(), free_port()]
    procs: list[subprocess.Popen] = []
    try:
        for p in eports:
            procs.append(subprocess.Popen(
                [*CLI, "emulate", "--port", str(p), "--classes", CLASSES, "--time-scale", "0.05"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        urls = [f"http://127.0.0.1:{p}" for p in eports]
        for u, proc in zip(urls, procs):
            wait_http(u + "/health", proc)
        gport = free_port()
        cfg = tmp_path / "gw.yaml"
        cfg.write_text(yaml.safe_dump(gateway_doc(urls, free_port())))  # --port overrides it
        gw = subprocess.Popen([*CLI, "gateway", "--config", str(cfg), "--port", str(gport)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(gw)
        gurl = f"http://127.0.0.1:{gport}"
        wait_http(gurl + "/health", gw)
        out = tmp_path / "bench.json"
        b = subprocess.run([*CLI, "bench", "--target", gurl, "--trace", "azure-conv",
                            "--count", "12", "--rate", "20", "--seed", "1", "--classes", CLASSES,
                            "--max-model-len", "2048", "--keys", "gold=sk-gold,bulk=sk-bulk",
                            "--timeout", "60", "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
        assert b.returncode == 0, b.stderr
        res = json.loads(out.read_text())
        assert res["errors"] == {} and res["ok"] == 12 and res["finished"] == 12
        per = {c: v["requests"] for c, v in res["per_class"].items()}
        assert set(per) == {"gold", "bulk"} and sum(per.values()) == 12
        text = metrics(gurl)
        for _ in range(600):  # the gateway counts right after its last write: allow a moment
            if sample(text, "proserve_requests_total{") == 12:
                break
            time.sleep(0.05)
            text = metrics(gurl)
        assert sample(text, 'proserve_requests_total{class="gold",code="200",'
                            'model="proserve-emulated",tenant="gold-app"}') == per["gold"]
        assert sample(text, 'proserve_requests_total{class="bulk",code="200",'
                            'model="proserve-emulated",tenant="bulk-jobs"}') == per["bulk"], (per, [
            ln for ln in text.splitlines() if ln.startswith("proserve_requests_total")])
        assert sample(text, "proserve_requests_total{") == 12  # nothing else, no errors
        # the engines behind it finished exactly the twelve
        assert sum(sample(metrics(u), "vllm:request_success_total") for u in urls) == 12
        # SIGTERM: the gateway drains (nothing in flight) and exits cleanly
        assert stop(gw) == 0
        err = gw.stderr.read()
        assert f"gateway on http://127.0.0.1:{gport}" in err and "2 backend(s)" in err
        for proc in procs[:2]:
            assert stop(proc) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib honours *_proxy variables; loopback must never go through one
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

"""Does `proserve gateway --workers 2` use the second core? The gateway's own streaming rate with
one and two workers, side by side, with the backend and the load generator made nearly free.

Why a separate benchmark from `bench_gateway_workers.py`: there the emulated engines and
`proserve bench`'s clients (aiohttp, Python request objects) cost about as much CPU per request
as the gateway, and on a 2-core host they share the cores with it. Adding a gateway worker then
takes CPU from them as much as it adds gateway capacity (measured there: 0.83-1.00x), which says
nothing about the gateway. Here:

* the backend is a raw asyncio protocol (`NullBackend`) that answers `/health`, `/metrics` (vLLM's
  gauge names, all zero) and every `POST /v1/completions` with a pre-built stream of `--tokens`
  OpenAI completion events and `[DONE]`, in one write: no JSON parsing, no engine;
* the load generator is raw asyncio streams over keep-alive connections (`--connections` of
  them, closed loop: each sends its next request when the last one's stream ended); it checks the
  status line and that the stream ended with `[DONE]`, nothing more;
* the gateway is the real one (`proserve gateway`, router `go`, one tenant, no Redis), its
  workers a supervisor's children on one port (SO_REUSEPORT).

Both gateways (1 and 2 workers) run at once against the same backend; rounds alternate which is
measured, `--rounds` of `--seconds` each, so background noise falls on both alike. Reported per
round: completed streams per second, errors, latency p50/p99, and the CPU seconds each party used
(from /proc), so the reader can see whether the gateway was the bottleneck.

    python benchmarks/gateway_scaling.py [--tokens 16] [--connections 64] [--rounds 3] \\
        [--seconds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_seconds, loadavg, stop_all, table
from bench_gateway_workers import start_gateway

MODEL = "proserve-emulated"
_CLASSES = "default:w=1,ttft=10s,tpot=10s"


# ---------------------------------------------------------------------------- null backend
class _NullHTTP(asyncio.Protocol):
    """A keep-alive HTTP/1.1 server that answers from pre-built bytes (no parsing beyond the
    request line and Content-Length): the cheapest backend Python can be."""

    def __init__(self, answers: dict[bytes, bytes], served) -> None:
        self.answers = answers
        self.served = served  # completions answered (shared with the parent, one writer)
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            path = head.split(b" ", 2)[1].split(b"?")[0]
            self.buf = self.buf[end:]
            assert self.transport is not None
            self.transport.write(self.answers.get(path, self.answers[b"404"]))
            if path == b"/v1/completions":
                self.served.value += 1


def _response(body: bytes, ctype: bytes, status: bytes = b"200 OK") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def null_answers(tokens: int) -> dict[bytes, bytes]:
    event = {"id": "cmpl-null", "object": "text_completion", "model": MODEL,
             "choices": [{"index": 0, "text": " x", "finish_reason": None}]}
    last = {**event, "choices": [{"index": 0, "text": " x", "finish_reason": "length"}]}
    sse = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n"
                   for e in [event] * (tokens - 1) + [last]) + b"data: [DONE]\n\n"
    metrics = b"".join(b"vllm:%s{model_name=\"%s\"} 0.0\n" % (n, MODEL.encode())
                       for n in (b"num_requests_running", b"num_requests_waiting",
                                 b"kv_cache_usage_perc"))
    return {b"/health": _response(b"ok", b"text/plain"),
            b"/metrics": _response(metrics, b"text/plain; version=0.0.4"),
            b"/v1/completions": _response(sse, b"text/event-stream"),
            b"404": _response(b"{}", b"application/json", b"404 Not Found")}


def _serve_null(port: int, tokens: int, ready, served) -> None:
    async def main() -> None:
        answers = null_answers(tokens)
        server = await asyncio.get_running_loop().create_server(
            lambda: _NullHTTP(answers, served), "127.0.0.1", port, backlog=1024)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ---------------------------------------------------------------------------- load generator
async def _connection(port: int, request: bytes, stop_at: float, lat: list[float],
                      errors: list[str]) -> None:
    """One keep-alive connection, closed loop. The gateway streams with chunked encoding; a
    response ends with the zero-length chunk, and its body must hold `[DONE]`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            body = b""
            while not body.endswith(b"0\r\n\r\n"):
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("the gateway closed the connection mid-stream")
                body += chunk
            if b"data: [DONE]" not in body:
                errors.append("stream without [DONE]")
            lat.append(time.perf_counter() - t0)
    except (OSError, asyncio.IncompleteReadError, ConnectionError) as e:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        writer.close()


def _load(port: int, key: str, tokens: int, connections: int, seconds: float,
          out) -> None:
    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": tokens,
                       "stream": True}).encode()
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Authorization: Bearer " + key.encode() + b"\r\n"
               b"Content-Type: application/json\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)

    async def main() -> tuple[list[float], list[str], float]:
        lat: list[float] = []
        errors: list[str] = []
        t0 = time.perf_counter()
        stop_at = t0 + seconds
        await asyncio.gather(*(_connection(port, request, stop_at, lat, errors)
                               for _ in range(connections)))
        return lat, errors, time.perf_counter() - t0

    cpu0 = time.process_time()
    lat, errors, wall = asyncio.run(main())
    out.put((lat, errors, wall, time.process_time() - cpu0))


# ---------------------------------------------------------------------------- main
def measure(ctx, port: int, a: argparse.Namespace, gw_pid: int, backend_pid: int,
            served) -> dict:
    q = ctx.Queue()
    g0, b0, s0 = cpu_seconds(gw_pid), cpu_seconds(backend_pid), served.value
    p = ctx.Process(target=_load, args=(port, "k-default", a.tokens, a.connections,
                                        a.seconds, q))
    p.start()
    lat, errors, wall, client_cpu = q.get(timeout=a.seconds + 120)
    p.join()
    lat.sort()
    n = len(lat)
    return {"completed": n, "backend_served": served.value - s0,
            "rate": n / wall, "errors": len(errors),
            "error_kinds": sorted(set(errors))[:5],
            "lat_p50_ms": 1000 * lat[n // 2] if n else None,
            "lat_p99_ms": 1000 * lat[min(n - 1, int(0.99 * n))] if n else None,
            "wall_s": wall,
            "cpu_gateway_s": cpu_seconds(gw_pid) - g0,
            "cpu_backend_s": cpu_seconds(backend_pid) - b0,
            "cpu_client_s": client_cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=16, help="streamed events per response")
    ap.add_argument("--connections", type=int, default=64, help="concurrent client streams")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--port", type=int, default=18601)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.tokens < 1 or a.connections < 1 or a.rounds < 1 or a.seconds <= 0:
        ap.error("--tokens, --connections, --rounds must be >= 1 and --seconds > 0")
    ctx = mp.get_context("spawn")
    tmp = Path(tempfile.mkdtemp(prefix="proserve-gw-scaling-"))
    result: dict = {"benchmark": "gateway_scaling", "command": " ".join(sys.argv),
                    "args": vars(a), "loadavg_before": loadavg(), "cpus": os.cpu_count()}
    ready, served = ctx.Event(), ctx.Value("q", 0, lock=False)
    backend = ctx.Process(target=_serve_null, args=(a.port, a.tokens, ready, served),
                          daemon=True)
    backend.start()
    if not ready.wait(30):
        raise SystemExit("gateway_scaling: the null backend did not start")
    url = f"http://127.0.0.1:{a.port}"
    ports = {1: a.port + 10, 2: a.port + 11}
    gws = {}
    try:
        for w in (1, 2):
            gws[w] = start_gateway(tmp, f"gw{w}", ports[w], w, [url], _CLASSES, None)
        print(f"gateway_scaling: {os.cpu_count()} CPUs, load average "
              f"{result['loadavg_before']}; {a.connections} connections, {a.tokens} events per "
              f"stream, {a.rounds} rounds of {a.seconds:g} s per worker count", flush=True)
        warm = argparse.Namespace(**{**vars(a), "seconds": a.warmup})
        for w in (1, 2):
            measure(ctx, ports[w], warm, gws[w].pid, backend.pid, served)
        runs: dict[int, list[dict]] = {1: [], 2: []}
        rows = []
        for k in range(a.rounds):
            for w in ((1, 2) if k % 2 == 0 else (2, 1)):
                m = measure(ctx, ports[w], a, gws[w].pid, backend.pid, served)
                runs[w].append(m)
                rows.append([str(w), str(k + 1), f"{m['rate']:.0f}", str(m["completed"]),
                             str(m["backend_served"]), str(m["errors"]),
                             f"{m['lat_p50_ms']:.1f}" if m["lat_p50_ms"] else "-",
                             f"{m['lat_p99_ms']:.1f}" if m["lat_p99_ms"] else "-",
                             f"{m['cpu_gateway_s'] / m['wall_s']:.2f}",
                             f"{m['cpu_backend_s'] / m['wall_s']:.2f}",
                             f"{m['cpu_client_s'] / m['wall_s']:.2f}"])
                print(f"  workers {w} round {k + 1}: {m['rate']:.0f} streams/s, "
                      f"{m['errors']} errors", flush=True)
        print()
        table(["workers", "round", "streams/s", "streams", "backend answered", "errors",
               "latency p50 ms", "latency p99 ms", "gateway cores", "backend cores",
               "client cores"], rows)
        med = {w: statistics.median(m["rate"] for m in runs[w]) for w in (1, 2)}
        ratio = med[2] / med[1] if med[1] else None
        print(f"\nmedian streams/s: 1 worker {med[1]:.0f}, 2 workers {med[2]:.0f}; "
              f"ratio {ratio:.2f}" if ratio else "\n1 worker completed nothing")
        result.update(runs=runs, median_rate=med, ratio=ratio, loadavg_after=loadavg())
    finally:
        stop_all(list(gws.values()))
        backend.terminate()
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

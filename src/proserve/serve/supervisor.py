"""A small process supervisor: ``proserve gateway --workers N`` and ``proserve emulate
--processes N`` run N worker processes under it.

* Workers are started with the ``spawn`` method (a fresh interpreter each: no event loop or
  socket inherited from the parent). Each reports ``ready`` (or an error, e.g. its port is
  taken) over a pipe; :func:`supervise` returns once every worker is ready or raises
  :class:`WorkerStartError` naming the first failure (the others are stopped).
* SIGTERM and SIGINT: forwarded to every worker as SIGTERM (each stops accepting and drains
  its in-flight requests); workers still running ``grace_s + 10`` s later are killed.
* SIGHUP: forwarded to every ready worker (the gateway's workers re-read their config's
  backend lists).
* A worker that exits on its own is logged and restarted after a second. One that dies three
  times in a row within 10 s of its start is given up on: everything stops, exit code 1.
* A worker whose supervisor disappears (its pipe closes) stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection, wait
from typing import Any

log = logging.getLogger("proserve.supervisor")

RESTART_DELAY_S = 1.0
QUICK_DEATH_S = 10.0
MAX_QUICK_DEATHS = 3
START_TIMEOUT_S = 300.0


class WorkerStartError(RuntimeError):
    """A worker could not start (the message says why, e.g. ``cannot listen: ...``)."""


def worker_logging(name: str) -> None:
    """Log lines of a spawned worker, tagged with its name (workers do not inherit the
    parent's logging set-up)."""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(name)s [{name}]: %(message)s")


def run_worker(conn: Connection,
               serve: Callable[[asyncio.Event, asyncio.Event], Awaitable[None]]) -> None:
    """The body of a worker process: run ``serve(ready, stop)``, report ``ready`` (with the
    pid) once it sets ``ready``, stop when the supervisor's pipe closes. An ``OSError`` before
    ready (a port in use) is reported as ``cannot listen: ...`` and exits 2."""

    async def main() -> None:
        ready, stop = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def parent_gone() -> None:  # the supervisor never writes: readable means closed
            with contextlib.suppress(EOFError, OSError):
                conn.recv()
            loop.remove_reader(conn.fileno())
            stop.set()

        loop.add_reader(conn.fileno(), parent_gone)
        task = asyncio.ensure_future(serve(ready, stop))
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiter.cancel()
            await task  # raises why it stopped
            return
        conn.send(("ready", os.getpid()))
        await task

    try:
        asyncio.run(main())
    except OSError as e:
        with contextlib.suppress(OSError):
            conn.send(("error", f"cannot listen: {e}"))
        sys.exit(2)
    except Exception as e:  # anything else before ready: say what
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(e).__name__}: {e}"))
        raise


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: Any = None
        self.conn: Connection | None = None
        self.ready = False
        self.started = 0.0
        self.quick_deaths = 0
        self.restart_at: float | None = None


def supervise(name: str, target: Callable[..., None], args: list[tuple], grace_s: float,
              on_ready: Callable[[list[int]], None] | None = None,
              restart_args: Callable[[int], tuple] | None = None) -> int:
    """Run ``target(*args[i], conn)`` in ``len(args)`` spawned processes until SIGTERM/SIGINT
    (module docstring). ``on_ready(pids)`` is called once all are ready; a restarted worker
    ``i`` gets ``restart_args(i)`` (default: its first arguments). Returns the exit code (0:
    stopped on a signal; 1: a worker kept dying)."""
    ctx = mp.get_context("spawn")
    workers = [_Worker(i) for i in range(len(args))]
    stopping = {"sig": None}
    hup = {"n": 0}

    def start(w: _Worker) -> None:
        if w.conn is not None:  # a restart: the dead worker's pipe
            w.conn.close()
        parent, child = ctx.Pipe()
        a = args[w.index] if w.proc is None or restart_args is None else restart_args(w.index)
        w.proc = ctx.Process(target=target, args=(*a, child),
                             name=f"{name}-worker-{w.index}", daemon=False)
        w.proc.start()
        child.close()
        w.conn, w.ready, w.started, w.restart_at = parent, False, time.monotonic(), None

    def on_stop(signum, _frame) -> None:
        stopping["sig"] = signum

    def on_hup(signum, _frame) -> None:
        hup["n"] += 1

    old = {s: signal.signal(s, on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    if hasattr(signal, "SIGHUP"):
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    try:
        for w in workers:
            start(w)
        # ---- start-up: every worker ready, or the first failure
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.ready for w in workers):
            if stopping["sig"] is not None:
                return _stop_all(workers, grace_s, 0)
            if time.monotonic() > deadline:
                _stop_all(workers, grace_s, 1)
                raise WorkerStartError(f"{name} workers not ready after {START_TIMEOUT_S:g} s")
            for w in workers:
                msg = _poll(w)
                if msg is not None and msg[0] == "error":
                    _stop_all(workers, grace_s, 1)
                    raise WorkerStartError(msg[1])
                if not w.ready and not w.proc.is_alive():
                    _stop_all(workers, grace_s, 1)
                    raise WorkerStartError(f"{name} worker {w.index} exited with code "
                                           f"{w.proc.exitcode} before it was ready")
            _wait(workers, 0.1)
        pids = [w.proc.pid for w in workers]
        log.info("%s: %d workers ready (pids %s)", name, len(workers),
                 ", ".join(map(str, pids)))
        if on_ready is not None:
            on_ready(pids)
        # ---- running: forward signals, restart what dies
        seen_hup = hup["n"]
        while stopping["sig"] is None:
            if hup["n"] != seen_hup:
                seen_hup = hup["n"]
                for w in workers:
                    if w.ready and w.proc.is_alive():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(w.proc.pid, signal.SIGHUP)
                log.info("%s: SIGHUP forwarded to %d workers", name, len(workers))
            now = time.monotonic()
            for w in workers:
                msg = _poll(w)
                if msg is not None and msg[0] == "error":
                    log.error("%s worker %d: %s", name, w.index, msg[1])
                if w.restart_at is None and not w.proc.is_alive():
                    quick = now - w.started < QUICK_DEATH_S
                    w.quick_deaths = w.quick_deaths + 1 if quick else 0
                    log.error("%s worker %d (pid %s) exited with code %s%s", name, w.index,
                              w.proc.pid, w.proc.exitcode,
                              "; restarting" if w.quick_deaths < MAX_QUICK_DEATHS else "")
                    if w.quick_deaths >= MAX_QUICK_DEATHS:
                        log.error("%s worker %d died %d times within %g s of starting: "
                                  "stopping", name, w.index, w.quick_deaths, QUICK_DEATH_S)
                        return _stop_all(workers, grace_s, 1)
                    w.restart_at = now + RESTART_DELAY_S
                if w.restart_at is not None and now >= w.restart_at:
                    start(w)
                    log.info("%s worker %d restarted (pid %s)", name, w.index, w.proc.pid)
            _wait(workers, 0.2)
        log.info("%s: %s: stopping %d workers (draining up to %g s)", name,
                 signal.Signals(stopping["sig"]).name, len(workers), grace_s)
        return _stop_all(workers, grace_s, 0)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _poll(w: _Worker) -> tuple | None:
    if w.conn is None:
        return None
    try:
        if not w.conn.poll():
            return None
        msg = w.conn.recv()
    except (EOFError, OSError):
        return None
    if msg[0] == "ready":
        w.ready = True
    return msg


def _wait(workers: list[_Worker], timeout: float) -> None:
    objs: list[Any] = [w.proc.sentinel for w in workers if w.proc is not None]
    objs += [w.conn for w in workers if w.conn is not None and not w.ready]
    with contextlib.suppress(InterruptedError, OSError):
        wait(objs, timeout=timeout)


def _stop_all(workers: list[_Worker], grace_s: float, code: int) -> int:
    for w in workers:
        if w.proc is not None and w.proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 10.0
    for w in workers:
        if w.proc is None:
            continue
        w.proc.join(max(0.0, deadline - time.monotonic()))
        if w.proc.is_alive():
            log.error("worker %d (pid %s) still running after the grace period: killed",
                      w.index, w.proc.pid)
            w.proc.kill()
            w.proc.join(5)
        if w.conn is not None:
            w.conn.close()
    return code

"""Preemption by offload (engine/offload.py, the host tier of engine/kv.py): books, timing, modes.

The property test runs every policy under every preemption mode on random memory-tight workloads
with two priorities, checking after every step that a block is never owned twice, reference
counts match the block tables, host capacity is respected, a preempted request's KV is either
all on host or dropped for recompute (never lost), and that tokens are conserved.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tests.conftest import random_requests, toy_model
from tests.engine.test_engine_invariants import DRAIN_FACTOR, CheckedScheduler, serial_time

from proserve.core.request import Request, Status
from proserve.engine import make_scheduler, policy_names
from proserve.engine.kv import BlockManager, KVCapacityError
from proserve.engine.offload import (
    PREEMPTION_MODES,
    TransferModel,
    host_blocks_for,
    pipelined,
    preemption_mode,
    step_seconds,
)
from proserve.latency.profiles import load_profile
from proserve.sim.run import SimConfig, run
from proserve.sim.simulator import simulate

MODES = list(PREEMPTION_MODES)


# ---------------------------------------------------------------------- the host tier's books
def _req(rid: int, computed: int, blocks: int = 0) -> Request:
    r = Request(rid, 0.0, 200, 50, 1.0, 0.1)
    r.computed = computed
    r.blocks = blocks
    return r


def test_offload_moves_all_computed_kv_to_host_and_frees_device() -> None:
    kv = BlockManager(100, 16, host_blocks=50)
    r = _req(0, 0)
    assert kv.allocate(r, 40)  # 3 blocks
    r.computed = 40
    assert kv.offload(r) == 3  # ceil(40 / 16), nothing backed up before
    assert (r.blocks, r.host_blocks, r.computed, kv.free, kv.host_free) == (0, 3, 40, 100, 47)
    kv.check([r])
    assert kv.allocate(r, 41)  # the reload: listed for the scheduler to charge
    assert kv.reloading == [r] and r.blocks == 3
    kv.keep_full_backup(r)  # full blocks stay as backup, the partial third one is dropped
    assert r.host_blocks == 2 and kv.host_free == 48
    kv.check([r])


def test_backup_copies_only_full_blocks_and_later_offload_copies_only_the_rest() -> None:
    kv = BlockManager(100, 16, host_blocks=50)
    r = _req(0, 0)
    kv.allocate(r, 70)
    r.computed = 70  # 4 full blocks + 6 tokens
    assert kv.backup(r, 10) == 4  # at most computed // 16
    assert kv.backup(r, 10) == 0
    assert kv.offload(r) == 1  # only the partial last block is left to copy
    assert r.host_blocks == 5
    kv.check([r])


def test_offload_refuses_when_host_is_full_and_changes_nothing() -> None:
    kv = BlockManager(100, 16, host_blocks=2)
    r = _req(0, 0)
    kv.allocate(r, 48)
    r.computed = 48
    assert kv.offload(r) == -1
    assert r.blocks == 3 and r.host_blocks == 0 and kv.host_free == 2


def test_check_catches_host_books_that_do_not_balance() -> None:
    kv = BlockManager(100, 16, host_blocks=10)
    r = _req(0, 32)
    r.host_blocks = 2  # offloaded, but the manager never handed out those host blocks
    with pytest.raises(KVCapacityError, match="host KV books"):
        kv.check([r])
    kv.host_free = 8
    kv.check([r])
    r.host_blocks, kv.host_free = 1, 9  # offloaded with part of its KV missing: lost tokens
    with pytest.raises(KVCapacityError, match="offloaded with 1 host blocks"):
        kv.check([r])


# ---------------------------------------------------------------------- timing
def test_step_time_per_mode() -> None:
    tm = TransferModel(0.001, 0.0002)
    e, o, i = 0.020, 10, 30  # copy-out 10.2 ms, copy-in 30.2 ms
    assert step_seconds(preemption_mode("offload-sync"), tm, e, o, i) == pytest.approx(
        e + 0.0102 + 0.0302)
    assert step_seconds(preemption_mode("offload-async"), tm, e, o, i) == pytest.approx(
        max(e, 0.0102) + 0.0302)
    full = step_seconds(preemption_mode("full"), tm, e, o, i, groups=4)
    assert full == pytest.approx(pipelined(e, 0.0302, 4))
    # pipelining hides part of the reload: strictly between the larger stage and the serial sum
    assert max(e, 0.0302) < full < e + 0.0302
    assert step_seconds(preemption_mode("full"), tm, e, 0, 0) == e
    assert pipelined(e, 0.0, 4) == e


def test_transfer_model_from_the_profile() -> None:
    m = load_profile("llama3.1-8b@h100")
    tm = TransferModel.from_profile(m)
    # 16 tokens x 128 KiB (Llama-3.1-8B, bf16, 8 KV heads) over 64 GB/s x 0.8
    assert tm.s_per_block == pytest.approx(16 * 131072 / (64e9 * 0.8), rel=1e-9)
    assert tm.s_per_copy > 0 and "GB/s" in tm.source
    assert tm.blocks_within(tm.seconds(100)) == 100
    ref = TransferModel.from_profile(toy_model())  # no model/GPU: the paper's reference numbers
    assert ref.s_per_block == pytest.approx(0.48e-3 / 128 * 16) and "reference" in ref.source


def test_host_size_spec() -> None:
    full = preemption_mode("full")
    assert host_blocks_for(None, 1000, full) == 4000
    assert host_blocks_for(None, 1000, preemption_mode("recompute")) == 0
    assert host_blocks_for("2.5x", 1000, full) == 2500
    assert host_blocks_for("123", 1000, full) == 123
    for bad in ("lots", "-1", "-2x"):
        with pytest.raises(ValueError, match="host KV"):
            host_blocks_for(bad, 1000, full)
    with pytest.raises(ValueError, match="unknown preemption mode 'swap'.*offload-sync"):
        preemption_mode("swap")


# ---------------------------------------------------------------------- every policy x mode
EXAMPLES = 4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy", policy_names())
@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(5, 40),
    rate=st.floats(5.0, 80.0),
    kv_blocks=st.sampled_from([160, 400]),
    host=st.sampled_from(["0", "40", "4x"]),
)
def test_invariants_every_policy_and_mode(policy, mode, seed, n, rate, kv_blocks, host) -> None:
    m = toy_model(kv_blocks=kv_blocks)
    reqs = random_requests(seed, n, rate, max_prompt=1200, max_out=120)
    kv_tokens = kv_blocks * 16
    fit = [r for r in reqs if r.prompt_len + r.output_len <= kv_tokens]
    drain = DRAIN_FACTOR * serial_time(fit, m, 512) + 1.0
    eng = make_scheduler(policy, m, max_num_batched_tokens=512, max_num_seqs=16,
                         check_invariants=True, preemption=mode, host_kv_blocks=host)
    work = sum(r.prompt_len + r.output_len for r in fit)
    res = simulate(reqs, [CheckedScheduler(eng, work)], drain_s=drain, check_every=1)
    for r in res.requests:
        if r.prompt_len + r.output_len > kv_tokens:
            assert r.status == Status.REJECTED
            continue
        assert r.status == Status.FINISHED, (policy, mode, r)
        assert r.generated == r.output_len and r.blocks == 0 and r.host_blocks == 0
    assert eng.tokens_emitted == sum(r.output_len for r in fit)  # tokens conserved
    assert eng.kv.free == eng.kv.total and eng.kv.host_free == eng.kv.host_total
    st_ = eng.preemption_stats()
    assert st_["preemptions_offload"] + st_["preemptions_recompute"] == eng.num_preemptions
    if not PREEMPTION_MODES[mode].offload:
        assert st_["preemptions_offload"] == 0 and st_["blocks_reloaded"] == 0
    if eng.kv.host_total == 0:
        assert st_["preemptions_offload"] == 0
    if not PREEMPTION_MODES[mode].eager_backup:  # (with backups a host copy is reloaded again)
        # a block comes back at most once per copy out (the rest were dropped to recompute)
        assert st_["blocks_reloaded"] <= st_["blocks_offloaded"]


# ---------------------------------------------------------------------- whole runs
TIGHT = dict(trace="azure-conv", rate=12.0, duration=40.0, kv_blocks=3000, policy="slide",
             classes="high:w=2,share=0.5;low:w=1,share=0.5")


def test_offload_beats_recompute_where_recompute_thrashes_and_records_its_copies() -> None:
    rec = run(SimConfig(**TIGHT))
    off = run(SimConfig(**TIGHT, preemption="full"))
    assert rec["kv"]["preemptions_recompute"] > 0 and rec["kv"]["recomputed_tokens"] > 0
    k = off["kv"]
    assert k["preemption_mode"] == "full" and k["preemptions_offload"] > 0
    assert k["blocks_offloaded"] > 0 and k["blocks_reloaded"] > 0 and k["blocks_backed_up"] > 0
    assert k["copy_wait_s"] >= 0 and k["transfer_model"]["s_per_block"] > 0
    assert off["kv"]["recomputed_tokens"] < rec["kv"]["recomputed_tokens"]
    assert off["tdg_ratio"] > rec["tdg_ratio"]
    inst = off["per_instance"][0]
    assert inst["preemptions_offload"] == k["preemptions_offload"]


def test_modes_agree_when_nothing_is_preempted() -> None:
    cfg = dict(trace="azure-conv", rate=2.0, duration=30.0)
    base = run(SimConfig(**cfg))
    assert base["preemptions"] == 0
    for mode in ("offload-sync", "full"):
        r = run(SimConfig(**cfg, preemption=mode))
        assert r["tdg_ratio"] == base["tdg_ratio"] and r["ttft_p99"] == base["ttft_p99"]
        assert r["kv"]["blocks_reloaded"] == 0


def test_full_mode_is_deterministic() -> None:
    a = run(SimConfig(**TIGHT, preemption="full"))
    b = run(SimConfig(**TIGHT, preemption="full"))
    for x in (a, b):
        x["sim_wall_s"] = 0.0
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_config_rejects_bad_preemption_settings() -> None:
    with pytest.raises(ValueError, match="unknown preemption mode"):
        SimConfig(preemption="swap")
    with pytest.raises(ValueError, match="bad host KV size"):
        SimConfig(preemption="full", host_kv_blocks="plenty")


def test_copy_budget_trims_or_defers_reloads_that_would_not_hide() -> None:
    """With a slow host link the copy budget must cut reloads short (the rest recomputes)."""
    m = toy_model(kv_blocks=200)
    m.meta = {"transfer": {"s_per_block": 2e-3, "s_per_copy": 1e-4, "provenance": "slow"}}
    reqs = random_requests(3, 40, 60.0, max_prompt=1000, max_out=80)
    eng = make_scheduler("slide", m, preemption="full", check_invariants=True,
                         max_num_batched_tokens=512)
    res = simulate(reqs, [eng], drain_s=1e4, check_every=1)
    assert all(r.status in (Status.FINISHED, Status.REJECTED) for r in res.requests)
    st_ = eng.preemption_stats()
    assert st_["reloads_trimmed"] > 0 and st_["recomputed_tokens"] > 0
    assert math.isfinite(st_["copy_wait_s"])

"""Prefix identity in workloads (Mooncake hash_ids, --shared-prefix) and the simulated prefix
hit rate against exact offline counts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from proserve.core.request import Prefix
from proserve.latency.profiles import load_profile
from proserve.sim.run import SimConfig, run
from proserve.workload import build_requests, make_workload
from proserve.workload.builtin import builtin_path
from proserve.workload.traces import Trace, TraceError, load_mooncake, load_trace

MODEL = load_profile("llama3.1-8b@h100")
BS = MODEL.block_size  # 16
MOONCAKE_BLOCK = 512


def raw_mooncake() -> list[dict]:
    with builtin_path("mooncake-synthetic").open() as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------- loading
def test_mooncake_loader_keeps_hash_ids_in_row_order() -> None:
    tr = load_trace("mooncake-synthetic")
    raw = raw_mooncake()
    assert tr.prefix_ids is not None and tr.prefix_block == MOONCAKE_BLOCK
    assert len(tr) == len(raw)
    # the file is sorted by timestamp (stable sort keeps its order)
    for k in (0, 1, 17, len(raw) - 1):
        assert tr.prefix_ids[k] == tuple(raw[k]["hash_ids"])
        assert tr.prompt_len[k] == raw[k]["input_length"]
    sub = tr.select(slice(10, 20))
    assert list(sub.prefix_ids) == list(tr.prefix_ids[10:20])
    assert tr.with_arrivals(tr.arrival * 2).prefix_ids is tr.prefix_ids


def test_mooncake_loader_reorders_ids_with_rows_and_reports_bad_ids(tmp_path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text('{"timestamp": 5, "input_length": 600, "output_length": 1, "hash_ids": [1, 2]}\n'
                 '{"timestamp": 1, "input_length": 100, "output_length": 1}\n')
    tr = load_mooncake(p)
    assert tr.meta.get("resorted") and list(tr.prefix_ids) == [None, (1, 2)]
    p.write_text('{"timestamp": 1, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n'
                 '{"timestamp": 2, "input_length": 10, "output_length": 1, "hash_ids": "x"}\n')
    with pytest.raises(TraceError, match="line 2: field 'hash_ids'"):
        load_mooncake(p)
    p.write_text('{"timestamp": 1, "input_length": 10, "output_length": 1}\n')
    assert load_mooncake(p).prefix_ids is None


def test_requests_carry_mooncake_prefixes_and_the_engine_key_mapping() -> None:
    reqs, desc = make_workload("mooncake-synthetic", count=50, model=MODEL, seed=0)
    assert desc["prefixes"] == "trace hash_ids"
    raw = raw_mooncake()[:50]
    for r, rec in zip(reqs, raw):
        assert r.prefix == Prefix(tuple(rec["hash_ids"]), MOONCAKE_BLOCK)
        # engine block j (16 tokens) lies in Mooncake chunk j // 32: key (hash_ids[j*16//512], j)
        n = r.prefix.num_keyed(r.prompt_len, BS)
        for j in {j for j in (0, 31, 32, n - 1) if 0 <= j < n}:
            assert r.prefix.key(j, BS) == (rec["hash_ids"][j * BS // MOONCAKE_BLOCK], j)
        assert r.prefix.num_keyed(r.prompt_len, BS) == r.prompt_len // BS
    # the synthetic-arrivals path draws rows at random and keeps each row's ids
    syn, _ = make_workload("mooncake-synthetic", rate=1.0, count=30, model=MODEL, seed=1,
                           synthetic_arrivals=True)
    rows = {(tuple(rec["hash_ids"]), rec["input_length"]) for rec in raw_mooncake()}
    assert all((r.prefix.ids, r.prompt_len) in rows for r in syn)


def test_shared_prefix_is_one_system_prompt_per_tenant() -> None:
    reqs, desc = make_workload("azure-code", rate=2.0, count=200, model=MODEL, seed=0,
                               shared_prefix_tokens=300)
    assert desc["prefixes"] == "shared system prompt per tenant (300 tokens)"
    by_tenant: dict[str, Prefix] = {}
    for r in reqs:
        assert r.prefix is not None and r.prefix.block == 300
        assert by_tenant.setdefault(r.tenant, r.prefix) is r.prefix  # one object per tenant
        assert r.prefix.num_keyed(r.prompt_len, BS) == min(r.prompt_len, 300) // BS
    assert len(by_tenant) == 2  # the default classes: high, low
    plain, d = make_workload("azure-code", rate=2.0, count=20, model=MODEL, seed=0)
    assert d["prefixes"] is None and all(r.prefix is None for r in plain)
    # lengths and everything else are unchanged by the option
    assert [r.prompt_len for r in plain] == [r.prompt_len for r in reqs[:20]]
    with pytest.raises(ValueError, match="own prefix ids"):
        make_workload("mooncake-synthetic", count=5, model=MODEL, seed=0,
                      shared_prefix_tokens=100)
    tr = Trace(np.array([0.0, 1.0]), [40, 50], [1, 1], tenant=np.array(["a", "b"]))
    from proserve.core.classes import parse_classes
    a, b = build_requests(tr, parse_classes(), MODEL, np.random.default_rng(0),
                          shared_prefix_tokens=32)
    assert a.prefix.ids == ("system:a",) and b.prefix.ids == ("system:b",)


# ---------------------------------------------------------------------------- hit rates
def offline_hit_tokens(reqs) -> tuple[int, int]:
    """Exact prefix hits from the raw Mooncake records, without the engine's key mapping.

    In arrival order, request R's prompt tokens are a hit as far as an EARLIER request E shares
    them: E and R share their first ``lcp * 512`` tokens where ``lcp`` is the length of the
    common prefix of their hash_ids (prefix-chained), but E only had full 16-token blocks of its
    own prompt cached, and R re-computes at least its last token. Hits are whole blocks.
    """
    raw = {(tuple(rec["hash_ids"]), rec["input_length"]) for rec in raw_mooncake()}
    earlier: list[tuple[tuple, int]] = []
    hit = total = 0
    for r in sorted(reqs, key=lambda x: (x.arrival, x.id)):
        ids, n = r.prefix.ids, r.prompt_len
        assert (ids, n) in raw  # the request is a row of the file, ids and length intact
        best = 0
        for e_ids, e_n in earlier:
            lcp = 0
            for x, y in zip(e_ids, ids):
                if x != y:
                    break
                lcp += 1
            best = max(best, min(lcp * MOONCAKE_BLOCK, e_n) // BS)  # E's full shared blocks
        hit += min(best, (n - 1) // BS, min(n, len(ids) * MOONCAKE_BLOCK) // BS) * BS
        total += n
        earlier.append((ids, n))
    return hit, total


def mooncake_cfg(**kw) -> SimConfig:
    # evenly spaced arrivals (gamma, cv 0.01) 100 s apart: every request is served alone, so
    # an earlier request's prefill is complete when a later one is scheduled
    base = dict(trace="mooncake-synthetic", synthetic_arrivals=True, arrival="gamma", cv=0.01,
                rate=0.01, count=300, latency_noise=0.0, seed=0)
    return SimConfig(**{**base, **kw})


def test_mooncake_hit_rate_with_an_unbounded_cache_equals_the_offline_count() -> None:
    res = run(mooncake_cfg(kv_blocks=10_000_000), keep_requests=True)
    reqs = res["_requests"]
    assert res["finished"] == res["requests"] == 300
    hit, total = offline_hit_tokens(reqs)
    assert hit > 0.1 * total  # the subset really shares prefixes
    assert res["prefix_cached_tokens"] == hit
    assert res["prefix_hit_rate"] == pytest.approx(hit / total, abs=0, rel=1e-12)
    per_class = res["per_class"]
    assert sum(m["prefix_cached_tokens"] for m in per_class.values()) == hit
    assert res["per_instance"][0]["prefix_evictions"] == 0


def test_mooncake_hit_rate_falls_as_the_cache_shrinks() -> None:
    rates = [run(mooncake_cfg(kv_blocks=kv))["prefix_hit_rate"]
             for kv in (10_000_000, 200_000, 60_000, 20_000)]
    assert all(a > b for a, b in zip(rates, rates[1:])), rates
    assert rates[-1] < 0.5 * rates[0]
    off = run(mooncake_cfg(kv_blocks=10_000_000, prefix_caching=False))
    assert off["prefix_hit_rate"] == 0.0 and off["prefix_cached_tokens"] == 0


def test_shared_prefix_hit_rate_at_low_load() -> None:
    s = 1024
    res = run(SimConfig(trace="arxiv-lengths", rate=0.2, count=200, arrival="gamma", cv=0.01,
                        shared_prefix_tokens=s, latency_noise=0.0), keep_requests=True)
    reqs = sorted(res["_requests"], key=lambda r: r.arrival)
    prompts = np.array([r.prompt_len for r in reqs])
    # exact: every request but the first of its tenant hits its share of the system prompt
    seen: set[str] = set()
    expect = 0
    for r in reqs:
        if r.tenant in seen:
            expect += min(min(r.prompt_len, s) // BS, (r.prompt_len - 1) // BS) * BS
        seen.add(r.tenant)
    assert res["prefix_cached_tokens"] == expect
    assert res["prefix_hit_rate"] == pytest.approx(s / prompts.mean(), abs=0.02)


def test_prefix_results_are_deterministic() -> None:
    a = run(mooncake_cfg(count=60, kv_blocks=30_000, rate=2.0, latency_noise=0.05))
    b = run(mooncake_cfg(count=60, kv_blocks=30_000, rate=2.0, latency_noise=0.05))
    a["sim_wall_s"] = b["sim_wall_s"] = 0.0
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["prefix_hit_rate"] > 0 and not math.isnan(a["prefix_hit_rate"])


def test_cli_options_reach_the_config_and_the_table(tmp_path) -> None:
    from typer.testing import CliRunner

    from proserve.cli import app

    runner = CliRunner()
    base = ["simulate", "--trace", "azure-code", "--rate", "1", "--count", "40"]
    on, off = tmp_path / "on.json", tmp_path / "off.json"
    res = runner.invoke(app, [*base, "--shared-prefix", "256", "--out", str(on)])
    assert res.exit_code == 0, res.output
    assert "prefix" in res.output  # the table's column (its header may wrap)
    res = runner.invoke(app, [*base, "--shared-prefix", "256", "--no-prefix-caching", "-q",
                              "--out", str(off)])
    assert res.exit_code == 0, res.output
    d_on, d_off = json.loads(on.read_text()), json.loads(off.read_text())
    assert d_on["config"]["shared_prefix_tokens"] == 256 and d_on["config"]["prefix_caching"]
    assert d_on["prefix_hit_rate"] > 0 and d_on["per_class"]["high"]["prefix_cached_tokens"] > 0
    assert not d_off["config"]["prefix_caching"] and d_off["prefix_hit_rate"] == 0.0

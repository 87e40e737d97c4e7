"""Trace loaders: shipped data, hand-written files, malformed input, ServeGen generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from proserve.workload import (
    BUILTINS,
    ServeGenData,
    Trace,
    TraceError,
    builtin_path,
    data_dir,
    load_azure,
    load_burstgpt,
    load_lengths,
    load_mooncake,
    load_servegen,
    load_trace,
    sniff_format,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- shipped data
def test_every_builtin_exists_and_has_attribution() -> None:
    attribution = (data_dir() / "ATTRIBUTION.md").read_text()
    for name, b in BUILTINS.items():
        assert builtin_path(name).exists(), name
        assert b.file in attribution, f"{b.file} missing from ATTRIBUTION.md"


def test_package_data_is_small() -> None:
    total = sum(p.stat().st_size for p in data_dir().rglob("*") if p.is_file())
    assert total < 10 * 2**20


@pytest.mark.parametrize(
    ("name", "rows", "timestamps"),
    [("azure-conv", 19_366, True), ("azure-code", 8_819, True),
     ("mooncake-synthetic", 3_993, True), ("sharegpt", 30_731, False),
     ("arxiv-lengths", 28_257, False)],
)
def test_builtin_loads(name: str, rows: int, timestamps: bool) -> None:
    tr = load_trace(name)
    assert len(tr) == rows
    assert tr.name == name
    assert tr.has_timestamps is timestamps
    assert tr.arrival.dtype == np.float64 and tr.prompt_len.dtype == np.int64
    assert tr.arrival[0] == 0.0 and np.all(np.diff(tr.arrival) >= 0)
    assert tr.prompt_len.min() >= 1 and tr.output_len.min() >= 1
    if timestamps:
        assert tr.span > 0 and tr.mean_rate > 0
    else:
        assert np.all(tr.arrival == 0) and np.isnan(tr.mean_rate)


def test_azure_conv_is_one_hour_with_sub_second_timestamps() -> None:
    tr = load_azure(builtin_path("azure-conv"))
    # first row 18:15:46.6805900, last 19:14:08.4025270: 58 min 21.7219370 s, to the 100 ns tick
    assert tr.span == pytest.approx(3501.721937, abs=1e-6)
    # second row 18:15:50.9951690: 4.3145790 s after the first (fractions parsed, not dropped)
    assert tr.arrival[1] == pytest.approx(4.314579, abs=1e-7)
    assert tr.prompt_len[0] == 374 and tr.output_len[0] == 44  # first row of the file
    assert tr.prompt_len[1] == 396 and tr.output_len[1] == 109


def test_mooncake_milliseconds() -> None:
    tr = load_mooncake(builtin_path("mooncake-synthetic"))
    assert tr.span == pytest.approx(1022.025)
    assert tr.prompt_len[0] == 40160


# ---------------------------------------------------------------------------- small files
def test_azure_small_file_sorted_and_clamped(tmp_path: Path) -> None:
    p = write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
              "2023-11-16 18:15:47.5000000,20,0\n"
              "2023-11-16 18:15:46.6805900,10,5\n"
              "2023-11-16 18:15:48.6805900,30,7\n")
    tr = load_azure(p)
    assert tr.arrival.tolist() == pytest.approx([0.0, 0.81941, 2.0])
    assert tr.prompt_len.tolist() == [10, 20, 30]
    assert tr.output_len.tolist() == [5, 1, 7]  # 0 generated tokens clamped to 1
    assert tr.meta["clamped_zero_output"] == 1


def test_mooncake_small_file(tmp_path: Path) -> None:
    p = write(tmp_path / "m.jsonl",
              '{"timestamp": 1500, "input_length": 10, "output_length": 2, "hash_ids": [1]}\n'
              "\n"
              '{"timestamp": 500, "input_length": 7, "output_length": 3}\n')
    tr = load_mooncake(p)
    assert tr.arrival.tolist() == [0.0, 1.0]
    assert tr.prompt_len.tolist() == [7, 10]


def test_burstgpt(tmp_path: Path) -> None:
    p = write(tmp_path / "b.csv",
              "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
              "5,ChatGPT,472,18,490,Conversation log\n"
              "45,GPT-4,1087,0,1087,Conversation log\n"  # failed request: skipped
              "12.5,GPT-4,300,40,340,API log\n"
              "20,ChatGPT,100,10,110,API log\n")
    tr = load_burstgpt(p)
    assert len(tr) == 3 and tr.tenant is None
    assert tr.arrival.tolist() == [0.0, 7.5, 15.0]
    assert tr.prompt_len.tolist() == [472, 300, 100]
    assert tr.meta["skipped_zero_output"] == 1
    by_model = load_burstgpt(p, tenant_from_model=True)
    assert by_model.tenant.tolist() == ["ChatGPT", "GPT-4", "ChatGPT"]
    only = load_burstgpt(p, models=["ChatGPT"])
    assert only.prompt_len.tolist() == [472, 100]
    assert sniff_format(p) == "burstgpt"
    assert len(load_trace(p)) == 3


def test_lengths_small_file(tmp_path: Path) -> None:
    p = write(tmp_path / "l.csv", "num_prefill_tokens,num_decode_tokens,num_total_tokens\n"
              "10,5,15\n3,4,7\n")
    tr = load_lengths(p)
    assert not tr.has_timestamps
    assert tr.prompt_len.tolist() == [10, 3] and tr.output_len.tolist() == [5, 4]
    assert sniff_format(p) == "lengths"


def test_sniffing(tmp_path: Path) -> None:
    assert sniff_format(builtin_path("azure-code")) == "azure"
    assert sniff_format(builtin_path("mooncake-synthetic")) == "mooncake"
    assert sniff_format(builtin_path("servegen-m-small")) == "servegen"
    bad = write(tmp_path / "x.csv", "foo,bar\n1,2\n")
    with pytest.raises(TraceError, match="unrecognised header"):
        load_trace(bad)
    with pytest.raises(TraceError, match="not a built-in"):
        load_trace("no-such-trace")


# ---------------------------------------------------------------------------- malformed input
AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (AZ + "2023-11-16 18:15:46.6805900,10,5\n2023-11-16 25:99:00,3,3\n", 3,
         "unparsable timestamp"),
        (AZ + "2023-11-16 18:15:46.6805900,10,5\n,3,3\n", 3, "unparsable timestamp"),
        (AZ + "2023-11-16 18:15:46.6805900,ten,5\n", 2, "not a number"),
        (AZ + "2023-11-16 18:15:46.6805900,10,5\n2023-11-16 18:15:47,-4,5\n", 3, "negative"),
        (AZ + "2023-11-16 18:15:46.6805900,0,5\n", 2, "zero token count"),
        (AZ + "2023-11-16 18:15:46.6805900,10.5,5\n", 2, "not an integer"),
        (AZ + "2023-11-16 18:15:46.6805900,10\n", 2, "expected at least 3 fields"),
        ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,10\n", 1, "missing column"),
        ("", 1, "empty file"),
        (AZ, 2, "no data rows"),
    ],
)
def test_azure_malformed(tmp_path: Path, text: str, line: int, problem: str) -> None:
    p = write(tmp_path / "bad.csv", text)
    with pytest.raises(TraceError) as e:
        load_azure(p)
    msg = str(e.value)
    assert str(p) in msg and f"line {line}" in msg and problem in msg


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ('{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 1,', 2,
         "invalid JSON"),
        ('{"timestamp": 0, "input_length": 5}\n', 1, "missing field 'output_length'"),
        ('{"timestamp": "x", "input_length": 5, "output_length": 1}\n', 1, "not a number"),
        ('{"timestamp": 0, "input_length": 0, "output_length": 1}\n', 1, "zero token count"),
        ('{"timestamp": 0, "input_length": 4, "output_length": -1}\n', 1, "negative"),
        ("\n\n", 2, "empty file"),
    ],
)
def test_mooncake_malformed(tmp_path: Path, text: str, line: int, problem: str) -> None:
    p = write(tmp_path / "bad.jsonl", text)
    with pytest.raises(TraceError) as e:
        load_mooncake(p)
    msg = str(e.value)
    assert str(p) in msg and f"line {line}" in msg and problem in msg


def test_burstgpt_and_lengths_malformed(tmp_path: Path) -> None:
    p = write(tmp_path / "b.csv", "Timestamp,Model,Request tokens,Response tokens\n"
              "1,ChatGPT,10,5\nsoon,ChatGPT,10,5\n")
    with pytest.raises(TraceError, match=rf"{p.name}, line 3: column 'Timestamp': not a number"):
        load_burstgpt(p)
    p = write(tmp_path / "l.csv", "num_prefill_tokens,num_decode_tokens\n10,5\n\n7,-2\n")
    with pytest.raises(TraceError, match=rf"{p.name}, line 4: .*negative token count"):
        load_lengths(p)
    p = write(tmp_path / "l2.csv", "num_prefill_tokens,something\n10,5\n")
    with pytest.raises(TraceError, match=r"line 1: missing column 'num_decode_tokens'"):
        load_lengths(p)


def test_trace_invariants() -> None:
    tr = Trace(np.array([5.0, 6.0, 8.0]), [1, 2, 3], [4, 5, 6])
    assert tr.arrival.tolist() == [0.0, 1.0, 3.0]  # rebased
    assert tr.mean_rate == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="sorted"):
        Trace(np.array([1.0, 0.0]), [1, 1], [1, 1])
    with pytest.raises(ValueError, match=">= 1"):
        Trace(np.array([0.0]), [0], [1])
    with pytest.raises(ValueError, match="differ"):
        Trace(np.array([0.0]), [1, 2], [1])


# ---------------------------------------------------------------------------- ServeGen
def servegen_dir(tmp_path: Path) -> Path:
    """Three clients, three 100 s windows, 2 dataset windows of 150 s; client 2 has no dataset."""
    d = tmp_path / "sg"
    d.mkdir(parents=True)
    (d / "chunk-0-trace.csv").write_text(
        "0,2.0,1.0,Gamma,1.0,0.5\n100,0,0,,0,0\n200,4.0,2.0,Gamma,0.25,1.0\n")
    (d / "chunk-1-trace.csv").write_text(
        "0,1.0,3.0,Weibull,0.5,0.3\n100,1.0,1.0,Gamma,1.0,1.0\n200,0,0,,0,0\n")
    (d / "chunk-2-trace.csv").write_text(
        "0,0.5,1.0,Gamma,1.0,2.0\n100,0.5,1.0,Gamma,1.0,2.0\n200,0.5,1.0,Gamma,1.0,2.0\n")
    (d / "chunk-0-dataset.json").write_text(json.dumps({
        "0": {"input_tokens": "{10: 0.5, 20: 0.5}", "output_tokens": "{3: 1.0}"},
        "150": {"input_tokens": "{}", "output_tokens": "{}"},  # empty: use window 0
    }, indent=2))
    (d / "chunk-1-dataset.json").write_text(json.dumps({
        "0": {"input_tokens": "{100: 1.0}", "output_tokens": "{0: 0.5, 7: 0.5}"},
        "150": {"input_tokens": "{200: 1.0}", "output_tokens": "{9: 1.0}"},
    }, indent=2))
    return d


def test_servegen_small_dir(tmp_path: Path) -> None:
    d = servegen_dir(tmp_path)
    data = ServeGenData.read(d)
    assert data.span == 300
    assert data.expected_count(0, 300, [0, 1, 2]) == pytest.approx(200 + 400 + 100 + 100 + 150)
    tr = load_servegen(d, np.random.default_rng(0))
    assert set(np.unique(tr.tenant)) == {"client-0", "client-1", "client-2"}
    c0 = tr.tenant == "client-0"
    assert set(tr.prompt_len[c0]) <= {10, 20} and set(tr.output_len[c0]) == {3}
    # client 0 is idle in [100, 200)
    assert not np.any((tr.arrival[c0] >= 100) & (tr.arrival[c0] < 200))
    c1 = tr.tenant == "client-1"
    early = c1 & (tr.arrival < 150)
    late = c1 & (tr.arrival >= 150)
    assert set(tr.prompt_len[early]) == {100} and set(tr.prompt_len[late]) == {200}
    assert set(tr.output_len[early]) <= {1, 7}  # 0-token outputs clamped to 1
    # client 2 (no dataset, volume 150) borrows from client 1 (volume 200), nearer than 0 (600)
    assert tr.meta["borrowed"] == {"client-2": "client-1"}
    assert set(tr.prompt_len[tr.tenant == "client-2"]) <= {100, 200}
    skip = load_servegen(d, 0, missing_dataset="skip")
    assert "client-2" not in set(skip.tenant)


def test_servegen_rates_and_window(tmp_path: Path) -> None:
    """Stationary per-window generation hits the file's rate, even for bursty windows."""
    d = tmp_path / "sg"
    d.mkdir()
    rows = "\n".join(f"{i * 100},5.0,2.0,Gamma,0.25,0.8" if i % 2 == 0 else
                     f"{i * 100},5.0,3.0,Weibull,0.4,0.01" for i in range(400))
    (d / "chunk-0-trace.csv").write_text(rows + "\n")
    (d / "chunk-0-dataset.json").write_text(json.dumps(
        {"0": {"input_tokens": "{5: 1.0}", "output_tokens": "{6: 1.0}"}}))
    tr = load_servegen(d, 1)
    assert len(tr) / 40_000 == pytest.approx(5.0, rel=0.03)
    sub = load_servegen(d, 1, start=1000, duration=500, rate_scale=0.5)
    assert sub.arrival.max() < 500
    assert sub.meta["window"] == 500 and sub.meta["rate_scale"] == 0.5


def test_servegen_malformed(tmp_path: Path) -> None:
    d = servegen_dir(tmp_path)
    (d / "chunk-1-trace.csv").write_text("0,1.0,3.0,Weibull,0.5,0.3\n100,fast,1.0,Gamma,1,1\n")
    with pytest.raises(TraceError, match=r"chunk-1-trace.csv, line 2: non-numeric"):
        ServeGenData.read(d)
    (d / "chunk-1-trace.csv").write_text("0,1.0,3.0,Pareto,0.5,0.3\n")
    with pytest.raises(TraceError, match=r"line 1: unknown arrival family 'Pareto'"):
        ServeGenData.read(d)
    d = servegen_dir(tmp_path / "again")
    (d / "chunk-0-dataset.json").write_text(json.dumps({
        "0": {"input_tokens": "{10: 0.5, 20}", "output_tokens": "{3: 1.0}"}}, indent=2))
    with pytest.raises(TraceError) as e:
        load_servegen(d, 0)
    msg = str(e.value)
    assert "chunk-0-dataset.json, line 3: window 0 input_tokens" in msg and "malformed" in msg


def test_servegen_builtin_peak_hour() -> None:
    data = ServeGenData.read(builtin_path("servegen-m-small"))
    assert len(data.clients) == 43 and data.span == 86_400
    clients = data.usable_clients()
    hourly = [data.expected_count(h * 3600, (h + 1) * 3600, clients) for h in range(24)]
    assert int(np.argmax(hourly)) == 20  # 20:00 is the busiest hour of the shipped day
    tr = data.generate(np.random.default_rng(3), start=72_000, duration=60, rate_scale=0.05)
    native = data.expected_count(72_000, 72_060, clients) / 60
    assert len(tr) / 60 == pytest.approx(native * 0.05, rel=0.15)
    assert tr.arrival.max() < 60
    assert all(t.startswith("client-") for t in np.unique(tr.tenant))
    assert tr.meta["borrowed"]  # the two biggest clients have no dataset file


def test_load_trace_servegen_options() -> None:
    tr = load_trace("servegen-m-small", rng=0, start=72_000, duration=10, rate_scale=0.01)
    assert tr.name == "servegen-m-small" and tr.arrival.max() < 10
    with pytest.raises(ValueError, match="choose a shorter duration"):
        load_trace("servegen-m-small", rng=0)  # a whole day at ~1,400 req/s is too much
    with pytest.raises(TypeError, match="only to ServeGen"):
        load_trace("azure-conv", rng=0)

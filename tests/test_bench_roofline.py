"""Roofline: the arithmetic on fixed peaks (exact), the per-device cache (round trip, invalidation,
re-measure), p90 and bench.json's roofline keys."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vlatrim.bench import roofline as rl
from vlatrim.bench.latency import percentile
from vlatrim.bench.roofline import Peaks, forward_weight_bytes, get_peaks, peaks_key, roofline, with_measured

PEAKS = Peaks(matmul_flops_per_s=1e12, bandwidth_bytes_per_s=1e11, key="test", method="fixed", measured="now")


def test_roofline_arithmetic_is_exact() -> None:
    # 2e9 FLOPs at 1e12 FLOP/s = 2 ms; 1e8 bytes at 1e11 B/s = 1 ms: compute bound, 2 ms.
    r = roofline(2e9, 1e8, PEAKS)
    assert (r["compute_ms"], r["memory_ms"], r["roofline_ms"], r["bound"]) == (2.0, 1.0, 2.0, "compute")
    assert r["arithmetic_intensity"] == 20.0 and (r["flops"], r["bytes_moved"]) == (2_000_000_000, 100_000_000)
    # Batch-1 decode of a 7B bf16 model: 2 * 6.74e9 FLOPs, 13.48e9 bytes: memory bound at 134.8 ms.
    r = roofline(2 * 6.74e9, 13.48e9, PEAKS)
    assert r["bound"] == "memory" and r["roofline_ms"] == pytest.approx(134.8) and r["compute_ms"] == pytest.approx(13.48)
    m = with_measured(roofline(2e9, 1e8, PEAKS), {"eager": {"median_ms": 5.0}, "compile": {"median_ms": 3.0},
                                                  "cuda_graph": {"skipped": "no CUDA"}})
    assert m["measured_over_roofline"] == {"eager": 2.5, "compile": 1.5, "cuda_graph": {"skipped": "no CUDA"}}


def test_percentile_matches_numpy_linear() -> None:
    xs = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.0, 6.0, 9.0, 8.0]
    assert percentile(xs, 90) == pytest.approx(9.1) and percentile(xs, 50) == 5.5 and percentile([3.0], 90) == 3.0


def test_forward_weight_bytes_skips_lookup_tables_but_not_tied_heads() -> None:
    class Tiny(nn.Module):
        def __init__(self, tie: bool) -> None:
            super().__init__()
            self.emb = nn.Embedding(100, 8)
            self.lin = nn.Linear(8, 8, bias=False)
            self.head = nn.Linear(8, 100, bias=False)
            if tie:
                self.head.weight = self.emb.weight

    assert forward_weight_bytes(Tiny(tie=False)) == 4 * (64 + 800)  # the table is a lookup: skipped
    assert forward_weight_bytes(Tiny(tie=True)) == 4 * (64 + 800)  # tied: read once by the head
    assert forward_weight_bytes(Tiny(tie=False), skip_embeddings=False) == 4 * (800 + 64 + 800)


def test_peaks_cache_round_trip_invalidation_and_remeasure(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("VLATRIM_CACHE_DIR", raising=False)  # the XDG location is what is tested here
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def fake_measure(device, dtype, **kw):
        calls.append(dtype)
        return Peaks(float(len(calls)), 2.0, peaks_key(device, dtype), "fake", "now")

    monkeypatch.setattr(rl, "measure_peaks", fake_measure)
    cpu = torch.device("cpu")
    p1, cached = get_peaks(cpu, torch.float32)
    assert not cached and p1.matmul_flops_per_s == 1.0 and rl.cache_path() == tmp_path / "vlatrim" / "roofline.json"
    p2, cached = get_peaks(cpu, torch.float32)
    assert cached and p2 == p1 and len(calls) == 1  # read back, not measured
    _, cached = get_peaks(cpu, torch.bfloat16)  # another dtype: another key
    assert not cached and len(calls) == 2
    threads = torch.get_num_threads()
    try:  # another thread count: another key
        torch.set_num_threads(threads + 1)
        _, cached = get_peaks(cpu, torch.float32)
        assert not cached and len(calls) == 3
    finally:
        torch.set_num_threads(threads)
    p3, cached = get_peaks(cpu, torch.float32, remeasure=True)
    assert not cached and p3.matmul_flops_per_s == 4.0
    data = json.loads(rl.cache_path().read_text())
    assert data["version"] == rl.CACHE_VERSION and len(data["peaks"]) == 3
    assert data["peaks"][peaks_key(cpu, torch.float32)]["matmul_flops_per_s"] == 4.0
    monkeypatch.setattr(rl, "CACHE_VERSION", rl.CACHE_VERSION + 1)  # an older cache layout is ignored
    _, cached = get_peaks(cpu, torch.float32)
    assert not cached and len(calls) == 5
    rl.cache_path().write_text("not json")  # a damaged cache is measured again, not fatal
    _, cached = get_peaks(cpu, torch.float32)
    assert not cached
    key = peaks_key(cpu, torch.float32)
    assert "torch " + torch.__version__ in key and "float32" in key and f"threads={torch.get_num_threads()}" in key


def test_measure_peaks_small_is_positive() -> None:
    p = rl.measure_peaks(torch.device("cpu"), torch.float32, repeats=2, matmul_n=64, copy_bytes=1 << 20)
    assert p.matmul_flops_per_s > 0 and p.bandwidth_bytes_per_s > 0 and "64x64" in p.method


def test_bench_json_has_roofline_and_p90(tmp_path, monkeypatch, capsys) -> None:
    from vlatrim.cli.main import main
    from vlatrim.models.reference import ReferenceVLA, VLAConfig

    monkeypatch.delenv("VLATRIM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(rl, "measure_peaks", lambda device, dtype, **kw: Peaks(1e12, 1e11, peaks_key(device, dtype),
                                                                                "fixed", "now"))
    stats = {k: {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4}
             for k in ("observation.state", "action")}
    torch.manual_seed(0)
    vla = ReferenceVLA.from_backbone(VLAConfig(image_size=32, conv_channels=(8, 16), max_text_tokens=8), "tiny-llama")
    vla.set_normalization(stats)
    vla.save_pretrained(tmp_path / "m")
    assert main(["bench", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--repeats", "3",
                 "--warmup", "1", "--cuda-graphs"]) == 0
    out = capsys.readouterr().out
    assert "x roof" in out and "roofline: peak matmul 1000.0 GFLOP/s" in out
    m = json.loads((tmp_path / "o" / "bench.json").read_text())["models"][0]
    peaks = m["roofline"]["peaks"]
    assert peaks["matmul_flops_per_s"] == 1e12 and peaks["from_cache"] is False and "float32" in peaks["key"]
    for part in ("full", "backbone"):
        r = m["roofline"][part]
        assert set(r) >= {"flops", "bytes_moved", "compute_ms", "memory_ms", "roofline_ms", "bound",
                          "arithmetic_intensity", "measured_over_roofline"}
        assert r["flops"] == m["flops"]["counted"][part]
        assert r["roofline_ms"] == max(r["flops"] / 1e9, r["bytes_moved"] / 1e8)
        t = m["latency_ms"][part]["eager"]
        assert t["p90_ms"] >= t["median_ms"] >= t["min_ms"]
        assert r["measured_over_roofline"]["eager"] == t["median_ms"] / r["roofline_ms"]
        assert "skipped" in r["measured_over_roofline"]["cuda_graph"]
    assert m["roofline"]["full"]["bytes_moved"] > m["roofline"]["backbone"]["bytes_moved"]
    c = m["control"]["eager"]
    assert c["query_hz_p90"] == pytest.approx(1e3 / m["latency_ms"]["full"]["eager"]["p90_ms"])
    assert c["actions_per_s"] == pytest.approx(4 * c["query_hz"])

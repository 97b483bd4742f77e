"""Real-scale shapes: parameter counts against the published ones, and params / FLOPs of every shape
and cut exact on the meta device (no weights allocated); the --shape verb end to end."""

from __future__ import annotations

import json

import pytest
import torch

from vlatrim.bench import roofline as rl
from vlatrim.bench import shapes as sh
from vlatrim.bench.flops import counted_flops
from vlatrim.bench.roofline import Peaks, peaks_key
from vlatrim.errors import VlatrimError


def _smolvla_intermediate(hidden: int, mult: int = 4, multiple_of: int = 256) -> int:
    """LeRobot's get_intermediate_size for SmolVLA's expert."""
    h = int(mult * int(2 * hidden / 3))
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def test_towers_match_published_parameter_counts() -> None:
    # Llama-2-7B (32 layers, 4096, MLP 11008, vocab 32000, untied head): 6,738,415,616 parameters.
    assert sh.tower_params(sh.LLAMA2_7B, range(32))["total"] == 6_738_415_616 == sh.SHAPES["openvla-7b"].published["llama-2-7b"]
    # OpenVLA pads the vocabulary to 32064 rows: 64 more rows in the embedding and in the untied head.
    ov = sh.SHAPES["openvla-7b"]
    assert sh.shape_params(ov, range(32))["total"] == 6_738_415_616 + 2 * 64 * 4096
    # Gemma-2B (18 layers, 2048, 8 heads / 1 KV head of 256, MLP 16384, vocab 256000, tied head): 2,506,172,416
    # (the Gemma report's 524,550,144 embedding + 1,981,622,272 non-embedding parameters).
    assert sh.tower_params(sh.GEMMA_2B, range(18))["total"] == 2_506_172_416 == 524_550_144 + 1_981_622_272
    pi0 = sh.SHAPES["pi0"]  # PaliGemma's vocabulary: 256000 + 1024 location + 128 segmentation tokens
    assert sh.tower_params(pi0.backbone, range(18))["total"] == 2_506_172_416 + 1152 * 2048
    # Gemma-300M action expert: 311,464,960 (no embedding): "300M" in the pi0 paper's rounding.
    assert sh.tower_params(pi0.expert, range(18))["total"] == 311_464_960
    assert abs(311_464_960 / 300e6 - 1) < 0.04
    # SmolLM2-360M (the SmolVLM2-500M text model at vocab 49152, tied head): 361,821,120.
    smol = sh.SMOLVLM2_TEXT
    lm360 = sh.Tower(smol.layers, smol.hidden, smol.heads, smol.kv_heads, smol.head_dim, smol.intermediate, vocab=49152)
    assert sh.tower_params(lm360, range(32))["total"] == 361_821_120 == sh.SHAPES["smolvla"].published["smollm2-360m"]
    sv = sh.SHAPES["smolvla"]
    assert sv.expert.hidden == int(0.75 * 960) and sv.expert.intermediate == _smolvla_intermediate(720) == 2048
    assert sv.backbone.layers == 16 and sv.expert.cross_kv_in == 5 * 64


CUTS = {"openvla-7b": [None, 31, [0, 5, 31]], "smolvla": [None, 1, [1, 2, 7]], "pi0": [None, 9, [17]]}


@pytest.mark.parametrize("name", list(sh.SHAPES))
def test_params_and_flops_exact_on_the_meta_device(name: str) -> None:
    shape = sh.SHAPES[name]
    for cut in CUTS[name]:
        keep = sh.resolve_keep(shape, keep=cut if isinstance(cut, int) else None,
                               drop=cut if isinstance(cut, list) else None)
        model = sh.build(shape, keep, "meta")
        assert all(p.is_meta for p in model.parameters())  # nothing allocated
        p = sh.shape_params(shape, keep)
        assert sum(t.numel() for t in model.parameters()) == p["total"]
        assert sum(t.numel() for t in model.backbone.parameters()) == p["backbone"]
        model.set_eager(True)
        full, prefix = sh.forwards(model, batch=2)
        q = sh.query_flops(shape, keep, batch=2)
        assert counted_flops(prefix)["total"] == q["prefix"]
        assert counted_flops(full)["total"] == q["total"] == q["prefix"] + q["steps"] * q["step"]


def test_every_keep_count_removes_exactly_its_blocks() -> None:
    for shape in sh.SHAPES.values():
        n = shape.backbone.layers
        full_p, full_f = sh.shape_params(shape, range(n)), sh.query_flops(shape, range(n))
        for k in range(1, n + 1):
            keep = sh.resolve_keep(shape, keep=k)
            gone = range(k, n)
            p = sh.shape_params(shape, keep)
            removed = sum(sh.block_params(shape.backbone, i) for i in gone)
            if shape.expert:
                removed += sum(sh.block_params(shape.expert, i) for i in gone)
            assert full_p["total"] - p["total"] == removed
            f = sh.query_flops(shape, keep)
            s = shape.prefix_tokens
            assert full_f["prefix"] - f["prefix"] == sum(sh.block_flops(shape.backbone, i, 1, s, s) for i in gone)
            assert f["total"] < full_f["total"] or k == n
    # smolvla alternates self (even) and cross (odd) expert layers: a cross layer is smaller
    sv = sh.SHAPES["smolvla"]
    assert sh.block_params(sv.expert, 0) - sh.block_params(sv.expert, 1) == 2 * (720 - 320) * 320
    # openvla: 7B prefix at 276 tokens, each decode step ~2 FLOPs per weight
    ov = sh.SHAPES["openvla-7b"]
    q = sh.query_flops(ov, range(32))
    assert ov.prefix_tokens == 276 and q["steps"] == 6
    blocks = sh.tower_params(ov.backbone, range(32))["blocks"] - 32 * 2 * 4096  # linear weights only
    assert q["step"] == 2 * (blocks + 32064 * 4096) + 32 * 4 * 277 * 4096


def test_resolve_keep_refuses_bad_cuts() -> None:
    pi0 = sh.SHAPES["pi0"]
    assert sh.resolve_keep(pi0) == list(range(18)) and sh.resolve_keep(pi0, drop=[0, 17]) == list(range(1, 17))
    for kw in ({"keep": 0}, {"keep": 19}, {"drop": [18]}, {"drop": list(range(18))}, {"keep": 3, "drop": [1]}):
        with pytest.raises(VlatrimError):
            sh.resolve_keep(pi0, **kw)
    with pytest.raises(VlatrimError, match="unknown --shape"):
        sh.get_shape("gpt-5")


@pytest.fixture
def fixed_peaks(tmp_path, monkeypatch):
    monkeypatch.setenv("VLATRIM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(rl, "measure_peaks", lambda device, dtype, **kw: Peaks(1e12, 1e11, peaks_key(device, dtype),
                                                                                "fixed", "now"))


def test_shape_verb_untimed_7b_writes_params_flops_roofline(tmp_path, fixed_peaks, capsys) -> None:
    from vlatrim.cli.main import main

    assert main(["bench", "--shape", "openvla-7b", "--keep", "24", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "openvla-7b keep 24/32" in out and "not timed" in out
    res = json.loads((tmp_path / "o" / "bench.json").read_text())
    full, cut = res["models"]
    assert res["settings"]["dtype"] == "float32" and (full["num_blocks"], cut["num_blocks"]) == (32, 24)
    assert full["params"]["total"] == 6_738_939_904 and full["weights"] == "none (meta device)"
    assert full["flops"]["counted"]["full"] == full["flops"]["analytic_query"]["total"]
    assert "skipped" in full["latency_ms"]["full"]["eager"]
    r = full["roofline"]["full"]
    # prefix reads the 7B once, each of the 6 decode steps again (embedding table excluded: a lookup)
    assert r["bytes_moved"] == 4 * 7 * (full["params"]["total"] - 32064 * 4096)
    # the prefix and each decode step are bound on their own: least times add (a decode step is memory bound)
    q = full["flops"]["analytic_query"]
    step_bytes = r["bytes_moved"] // 7
    assert r["step"]["bound"] == "memory" and r["bound"] == "prefix compute, steps memory"
    assert r["roofline_ms"] == pytest.approx(max(q["prefix"] / 1e9, step_bytes / 1e8) + 6 * max(q["step"] / 1e9, step_bytes / 1e8))
    assert r["roofline_ms"] > max(r["flops"] / 1e9, r["bytes_moved"] / 1e8)
    assert cut["relative_to_first"]["params_backbone"] < 1 and cut["prune"]["kept_blocks"] == list(range(24))
    assert main(["bench", "--model", str(tmp_path), "--keep", "3", "--out", str(tmp_path / "x")]) == 2


TINY = sh.Shape("tiny", "a test shape", backbone=sh.Tower(4, 32, 4, 2, 8, 64, vocab=50),
                expert=sh.Tower(4, 24, 4, 2, 8, 48, cross_kv_in=16), prefix={"image": 9, "text": 5},
                suffix_tokens=6, denoise_steps=3, chunk_size=6)


def test_shape_verb_timed_with_expert(tmp_path, fixed_peaks, monkeypatch) -> None:
    monkeypatch.setitem(sh.SHAPES, "tiny", TINY)
    res = sh.run_shape_bench("tiny", tmp_path / "o", drop=[1], warmup=1, repeats=3, cuda_graphs=True)
    full, cut = res["models"]
    assert cut["kept_blocks"] == [0, 2, 3] and full["weights"].startswith("random")
    for m in (full, cut):
        keep = m["kept_blocks"]
        assert m["flops"]["counted"]["full"] == sh.query_flops(TINY, keep)["total"]
        t = m["latency_ms"]["full"]["eager"]
        assert t["repeats"] == 3 and t["p90_ms"] >= t["median_ms"] > 0
        assert "CUDA" in m["latency_ms"]["full"]["cuda_graph"]["skipped"]
        c = m["control"]["eager"]
        assert c["actions_per_s"] == pytest.approx(6 * c["query_hz"])
        assert m["roofline"]["full"]["measured_over_roofline"]["eager"] == t["median_ms"] / m["roofline"]["full"]["roofline_ms"]
    # the random-weight model runs and gives the suffix's shape
    model = sh.build(TINY, [0, 1, 2, 3], "cpu")
    f, p = sh.forwards(model, batch=2)
    with torch.no_grad():
        sdpa = f()
        assert sdpa.shape == (2, 6, 24) and p().shape == (2, 14, 32)
        model.set_eager(True)  # matmul attention (what is counted) gives what SDPA (what is timed) gives
        torch.testing.assert_close(f(), sdpa, rtol=1e-4, atol=1e-5)

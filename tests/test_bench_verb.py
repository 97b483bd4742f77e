"""``vlatrim bench``: bench.json fields, and a pruned model's params and FLOPs drop by the analytic amount."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlatrim.bench.flops import backbone_flops, block_flops, counted_flops, eager_attention
from vlatrim.bench.memory import peak_memory, weight_bytes
from vlatrim.bench.modes import MODES, ModeUnavailable
from vlatrim.cli.main import main
from vlatrim.models.adapters import locate_backbone
from vlatrim.models.reference import ReferenceVLA, VLAConfig

STATS = {k: {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4}
         for k in ("observation.state", "action")}


def tiny_vla(backbone: str) -> ReferenceVLA:
    torch.manual_seed(0)
    vla = ReferenceVLA.from_backbone(VLAConfig(image_size=32, conv_channels=(8, 16), max_text_tokens=8), backbone)
    vla.set_normalization(STATS)
    return vla.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-block tiny-llama VLA and the same model with block 1 removed by `vlatrim prune`."""
    root = tmp_path_factory.mktemp("bench")
    base = root / "base"
    tiny_vla("tiny-llama").save_pretrained(base)
    assert main(["prune", "--model", str(base), "--out", str(root / "drop1"), "--drop-blocks", "1"]) == 0
    return base, root / "drop1"


def _rotary_flops(owner: torch.nn.Module, seq: int) -> int:
    """FLOPs the counter sees in the backbone's rotary embedding for ``seq`` positions: 0 under transformers 5
    (an elementwise product), ``inv_freq @ position_ids`` under 4.x (a matmul)."""
    rot = getattr(owner, "rotary_emb", None)
    if rot is None:
        return 0
    x = torch.zeros(1, seq, 1)
    return counted_flops(lambda: rot(x, torch.arange(seq)[None]))["total"]


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-bert"])
def test_analytic_block_flops_match_the_flop_counter(backbone: str) -> None:
    vla = tiny_vla(backbone)
    h = locate_backbone(vla)
    B, S = 2, 11
    x = torch.randn(B, S, h.hidden_size)
    blk, lay = h.blocks[0], h.layouts[0]
    # 32 wide, 4 heads x 8 (llama: 2 KV heads), MLP 64: weights are q,o 32x32, k,v 32x16 (llama) or 32x32.
    weights = sum(m.weight.numel() for m in blk.modules() if isinstance(m, torch.nn.Linear))
    expected = 2 * B * S * weights + 4 * B * S * S * lay.attention.num_heads * lay.attention.head_dim
    assert block_flops(blk, lay, B, S)["total"] == expected
    with eager_attention(h.owner):
        counted = counted_flops(lambda: h.owner(inputs_embeds=x, attention_mask=torch.ones(B, S)))["total"]
    # norms, softmax, embeddings add no matmul FLOPs (transformers 4.x's rotary embedding adds one tiny matmul)
    assert counted == backbone_flops(h, B, S)["blocks"] + _rotary_flops(h.owner, S)
    assert h.owner.config._attn_implementation == "sdpa"  # restored after counting


def test_bench_json_fields_and_pruned_savings(checkpoints, tmp_path, capsys) -> None:
    base, drop1 = checkpoints
    out = tmp_path / "b"
    rc = main(["bench", "--model", str(base), str(drop1), "--out", str(out), "--repeats", "2", "--warmup", "1",
               "--cuda-graphs"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "bench.json").read_text())
    assert res["schema_version"] == 1 and res["device"]["type"] == "cpu"
    assert res["settings"]["modes"] == ["eager", "cuda_graph"]
    m0, m1 = res["models"]
    assert (m0["num_blocks"], m1["num_blocks"]) == (2, 1)
    assert m1["prune"]["kept_blocks"] == [0] and m0["prune"] is None
    # Sequence: 32 px / 4 -> 8x8 = 64 image tokens + 1 state + 8 text + 4 action queries.
    assert m0["sequence"] == {"tokens": 77, "image_tokens": 64, "state_tokens": 1, "text_tokens": 8,
                              "action_queries": 4, "chunk_size": 4}
    vla = tiny_vla("tiny-llama")
    h = locate_backbone(vla)
    buffer_bytes = sum(b.numel() * b.element_size() for b in vla.buffers())
    removed_params = sum(p.numel() for p in h.blocks[1].parameters())
    removed_flops = block_flops(h.blocks[1], h.layouts[1], 1, 77)["total"]
    assert m0["params"]["total"] - m1["params"]["total"] == removed_params
    assert m0["params"]["blocks"] - m1["params"]["blocks"] == removed_params
    assert m0["params"]["total"] == sum(m0["params"]["by_module"].values())
    for part in ("full", "backbone"):
        assert m0["flops"]["counted"][part] - m1["flops"]["counted"][part] == removed_flops
    assert m0["flops"]["analytic_blocks"]["per_block"][1] == removed_flops
    assert m0["flops"]["analytic_blocks"]["blocks"] == m0["flops"]["counted"]["backbone"] - _rotary_flops(h.owner, 77)
    for m in (m0, m1):
        for part in ("full", "backbone"):
            eager = m["latency_ms"][part]["eager"]
            assert eager["repeats"] == 2 and eager["median_ms"] > 0
            assert "CUDA" in m["latency_ms"][part]["cuda_graph"]["skipped"]
        hz = m["control"]["eager"]
        assert hz["query_hz"] == pytest.approx(1e3 / m["latency_ms"]["full"]["eager"]["median_ms"])
        assert hz["actions_per_s"] == pytest.approx(4 * hz["query_hz"])
        mem = m["memory"]
        assert mem["method"].startswith("weights + growth of cpu process RSS")
        assert mem["peak_bytes"] == m["weight_bytes"] + mem["delta_bytes"] and mem["process_rss_peak_bytes"] > 0
        assert m["weight_bytes"] == 4 * m["params"]["total"] + buffer_bytes  # fp32 weights + normalizer / rotary buffers
    assert m1["relative_to_first"]["params_total"] < 1 and m0["relative_to_first"]["params_total"] == 1
    assert any("CUDA graphs skipped" in n for n in res["notes"])
    assert "bench.json" in capsys.readouterr().out


def test_bench_bad_input_writes_nothing(tmp_path, capsys) -> None:
    assert main(["bench", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err
    assert main(["bench", "--model", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "tpu"]) == 2
    assert not (tmp_path / "o").exists()


def test_modes_and_memory_helpers() -> None:
    with pytest.raises(ModeUnavailable, match="CUDA"):
        MODES.get("cuda_graph")(lambda: None, torch.device("cpu"))
    assert MODES.get("eager")(len, torch.device("cpu")) is len
    # A 64 MiB allocation held during the call shows up in the RSS peak (sampling misses at most a little).
    r = peak_memory(lambda: torch.ones(16 * 1024 * 1024).add_(1).sum(), "cpu")
    assert r is not None and r.delta_bytes >= 32 * 1024 * 1024  # ones + add_ in place: >= 64 MiB minus sampling slack
    assert weight_bytes(torch.nn.Linear(3, 2)) == 4 * 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_matches_eager(checkpoints, tmp_path) -> None:
    from vlatrim.bench.run import run_bench

    base, _ = checkpoints
    x = torch.randn(4, 8, device="cuda")
    w = torch.randn(8, 8, device="cuda")
    out = {}

    def fn() -> None:
        out["y"] = x @ w  # the graph replays into the same output buffer

    replay = MODES.get("cuda_graph")(fn, torch.device("cuda"))
    x.copy_(torch.ones_like(x))
    replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out["y"], torch.ones_like(x) @ w)
    res = run_bench([base], tmp_path, device="cuda", repeats=3, warmup=1, cuda_graphs=True)
    m = res["models"][0]
    assert m["latency_ms"]["full"]["cuda_graph"]["median_ms"] > 0
    assert m["memory"]["method"] == "cuda max_memory_allocated" and m["memory"]["peak_bytes"] >= m["weight_bytes"]

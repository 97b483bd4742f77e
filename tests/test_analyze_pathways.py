"""Pathway comparison: drop-one and GateProbe over vision, language and action blocks of a toy VLA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlatrim.analyze.base import LossSpec, ScoringContext
from vlatrim.analyze.run import run_scorers
from vlatrim.models.adapters import locate_backbone
from vlatrim.models.adapters.tiny import TINY_MODELS


def _encoder(width: int, heads: int, ffn: int) -> nn.TransformerEncoder:
    # Pre-norm layers: x + attn(norm(x)) + mlp(norm(...)), so zeroed output projections make a layer an
    # exact identity (post-norm layers would still renormalise).
    layer = nn.TransformerEncoderLayer(width, heads, ffn, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


class ToyVLA(nn.Module):
    """Conv patch stem -> vision transformer -> projector -> [image; text] -> BERT -> action transformer -> head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vision_stem = nn.Conv2d(3, 16, 4, 4)  # (B, 3, 8, 8) -> (B, 16, 2, 2): 4 patches
        self.vision_blocks = _encoder(16, 2, 24)
        self.projector = nn.Linear(16, 32)
        self.backbone = TINY_MODELS.get("bert")()
        self.action_blocks = _encoder(32, 4, 40)
        self.head = nn.Linear(32, 4)

    def compute_loss(self, batch):
        img = self.vision_blocks(self.vision_stem(batch["image"]).flatten(2).transpose(1, 2))  # (B, 4, 16)
        txt = self.backbone.get_input_embeddings()(batch["input_ids"])  # (B, L, 32)
        h = self.backbone(inputs_embeds=torch.cat([self.projector(img), txt], 1)).last_hidden_state
        a = self.action_blocks(h[:, -2:])  # (B, 2, 32): two action queries
        return {"loss": (self.head(a) - batch["action"]).abs().mean()}


def test_pathway_comparison_scores_every_pathway():
    model = ToyVLA().eval()
    with torch.no_grad():  # vision block 1 becomes an exact identity
        layer = model.vision_blocks.layers[1]
        for lin in (layer.self_attn.out_proj, layer.linear2):
            lin.weight.zero_()
            lin.bias.zero_()
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randn(4, 3, 8, 8, generator=g), "input_ids": torch.randint(5, 90, (4, 6), generator=g),
                "action": torch.randn(4, 2, 4, generator=g)} for _ in range(2)]
    handle = locate_backbone(model)
    assert [b.path for b in handle.vision] == ["vision_blocks.layers"]
    assert [b.path for b in handle.action] == ["action_blocks.layers"]
    ctx = ScoringContext(model, handle, batches, LossSpec(lambda m, b: m.compute_loss(b)["loss"], "l1", 8),
                         pathways=("language", "vision", "action"))
    res = run_scorers(ctx, ["drop_one", "gateprobe", "block_influence"])
    paths = ["backbone.encoder.layer", "vision_blocks.layers", "action_blocks.layers"]
    for name in ("drop_one", "gateprobe", "block_influence"):
        assert {p: len(v) for p, v in res["scorers"][name]["scores"].items()} == dict(zip(paths, (3, 2, 2)))
    assert res["scorers"]["drop_one"]["scores"]["vision_blocks.layers"][1] == 0.0
    assert res["scorers"]["gateprobe"]["scores"]["vision_blocks.layers"][1] == 0.0
    summary = res["pathways"]
    assert [summary[p]["pathway"] for p in paths] == ["language", "vision", "action"]
    for p in paths:
        vals = res["scorers"]["drop_one"]["scores"][p]
        assert summary[p]["drop_one"]["mean"] == pytest.approx(sum(vals) / len(vals))
        assert summary[p]["drop_one"]["max"] == max(vals)

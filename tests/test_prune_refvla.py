"""Pruning the reference VLA: its backbone is found inside it, cuts keep it working, and the pruned
checkpoint reloads through ``ReferenceVLA.from_pretrained`` (and ``vlatrim.prune.load_pruned``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlatrim.cli.main import main  # noqa: E402
from vlatrim.errors import VlatrimError  # noqa: E402
from vlatrim.models import reference  # noqa: E402
from vlatrim.models.adapters import locate_backbone  # noqa: E402
from vlatrim.prune import load_pruned, narrow_to_recorded_widths  # noqa: E402

TASKS = ["open the drawer", "press the button"]


def _vla(spec: str) -> torch.nn.Module:
    torch.manual_seed(0)
    vla = reference.ReferenceVLA.from_backbone(reference.VLAConfig(image_size=32, conv_channels=(8, 16)), spec)
    stats = {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4}
    vla.set_normalization({"observation.state": stats, "action": stats})
    return vla.eval()


def _obs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8, generator=g), torch.randn(2, 4, generator=g)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-bert"])
def vla_dir(request, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("vla") / request.param
    _vla(request.param).save_pretrained(d)
    return d


def test_drop_a_no_op_block_keeps_actions_and_reloads(vla_dir: Path, tmp_path: Path) -> None:
    # Make block 1 a no-op (zero its attention-output and MLP-down projections), save that as the source.
    vla = reference.ReferenceVLA.from_pretrained(vla_dir)
    h = locate_backbone(vla)
    with torch.no_grad():
        for name in (h.layouts[1].attention.o, h.layouts[1].mlp.down):
            lin = h.blocks[1].get_submodule(name)
            lin.weight.zero_()
            if lin.bias is not None:
                lin.bias.zero_()
    src = tmp_path / "src"
    vla.save_pretrained(src)
    img, st = _obs()
    ref = vla.predict_action(img, st, TASKS)
    out = tmp_path / "out"
    assert main(["prune", "--model", str(src), "--out", str(out), "--drop-blocks", "1"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["reload"]["plain_from_pretrained"] and rep["reload"]["class"] == "ReferenceVLA"
    pruned = reference.ReferenceVLA.from_pretrained(out)  # the VLA's own loader
    assert locate_backbone(pruned).num_blocks == 1
    act = pruned.predict_action(img, st, TASKS)
    post_norm = not h.is_decoder  # BERT: extra LayerNorms change the stream by float32 rounding only
    torch.testing.assert_close(act, ref, rtol=0 if not post_norm else 1e-5, atol=0 if not post_norm else 1e-5)
    torch.testing.assert_close(load_pruned(out).predict_action(img, st, TASKS), act, rtol=0, atol=0)


def test_vocab_cut_keeps_actions_and_rewrites_the_vla_tokenizer(vla_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "tasks.txt"
    data.write_text("\n".join(TASKS))
    out = tmp_path / "out"
    assert main(["prune", "--model", str(vla_dir), "--out", str(out), "--vocab-from", str(data)]) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["vocab"]["tokenizer"] == "rewritten" and rep["vocab"]["after"] < 20
    img, st = _obs()
    ref = reference.ReferenceVLA.from_pretrained(vla_dir).predict_action(img, st, TASKS)
    pruned = reference.ReferenceVLA.from_pretrained(out)
    assert pruned.backbone.get_input_embeddings().num_embeddings == rep["vocab"]["after"]
    # Same instructions -> same token pieces under new ids -> the same embeddings -> the same actions.
    torch.testing.assert_close(pruned.predict_action(img, st, TASKS), ref, rtol=0, atol=0)


def test_uniform_width_cut_reloads_with_the_vla_loader(vla_dir: Path, tmp_path: Path) -> None:
    vla = reference.ReferenceVLA.from_pretrained(vla_dir)
    h = locate_backbone(vla)
    att = h.layouts[0].attention
    # A GQA decoder can halve its heads in whole KV groups and still reload plainly; BERT derives its head
    # width from hidden_size / heads, so a head cut there needs vlatrim's widths (next test).
    heads = ["--heads", str(att.num_heads // 2), "--head-mode", "kv"] if att.num_kv_heads < att.num_heads else []
    out = tmp_path / "out"
    assert main(["prune", "--model", str(vla_dir), "--out", str(out), *heads, "--mlp-ratio", "0.25"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["reload"]["plain_from_pretrained"]
    pruned = reference.ReferenceVLA.from_pretrained(out)
    hp = locate_backbone(pruned)
    assert [l.mlp.intermediate_size for l in hp.layouts] == [h.layouts[0].mlp.intermediate_size * 3 // 4] * hp.num_blocks
    if heads:
        assert [l.attention.num_heads for l in hp.layouts] == [att.num_heads // 2] * hp.num_blocks
    img, st = _obs()
    a = pruned.predict_action(img, st, TASKS)
    assert a.shape == (2, 4, 4) and torch.isfinite(torch.as_tensor(np.asarray(a))).all()


def test_per_block_widths_reload_in_the_vla(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _vla("tiny-llama").save_pretrained(src)
    out = tmp_path / "out"
    assert main(["prune", "--model", str(src), "--out", str(out), "--heads", "4,2"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["reload"]["loader"] == "vlatrim.prune.load_pruned"
    # The class's own loader is told how to narrow blocks (models never import prune); without it, it
    # says which loader to use.
    with pytest.raises(VlatrimError, match="has blocks of different widths; load it with vlatrim.prune.load_pruned"):
        reference.ReferenceVLA.from_pretrained(out)
    pruned = reference.ReferenceVLA.from_pretrained(out, narrow=narrow_to_recorded_widths)
    assert [l.attention.num_heads for l in locate_backbone(pruned).layouts] == [4, 2]
    img, st = _obs()
    torch.testing.assert_close(load_pruned(out).predict_action(img, st, TASKS), pruned.predict_action(img, st, TASKS),
                               rtol=0, atol=0)


def test_a_vit_vision_cut_keeps_the_config_true_and_reloads_exactly(tmp_path: Path) -> None:
    """`--pathway vision` on a reference VLA with the ViT encoder: vit_depth follows the cut."""
    torch.manual_seed(0)
    vla = reference.ReferenceVLA.from_backbone(
        reference.VLAConfig(image_size=16, chunk_size=2, vision_encoder="vit", vit_patch_size=8, vit_dim=16,
                            vit_depth=3, vit_heads=2, max_text_tokens=8), "tiny-llama")
    vla.save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["prune", "--model", str(tmp_path / "src"), "--out", str(out), "--pathway", "vision",
                 "--drop-blocks", "1"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["kept_by_path"]["vision.encoder.layers"] == [0, 2]
    assert json.loads((out / "config.json").read_text())["vit_depth"] == 2
    pruned = load_pruned(out)
    assert len(pruned.vision.encoder.layers) == 2
    # The same cut in memory: drop ViT block 1 by hand.
    del vla.vision.encoder.layers[1]
    vla.vision.encoder.num_layers = 2
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (2, 16, 16, 3), generator=g, dtype=torch.uint8)
    st = torch.randn(2, 4, generator=g)
    torch.testing.assert_close(pruned.predict_action(img, st, TASKS[:2]), vla.predict_action(img, st, TASKS[:2]),
                               rtol=0, atol=0)

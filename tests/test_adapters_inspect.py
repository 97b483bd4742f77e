"""``vlatrim inspect`` on a transformers directory, a bare config JSON, and bad input."""

from __future__ import annotations

import json

import transformers as tf

from vlatrim.cli.main import main
from vlatrim.models.adapters.tiny import TINY_MODELS


def test_inspect_transformers_dir_and_config(tmp_path, capsys):
    TINY_MODELS.get("qwen2")().save_pretrained(tmp_path / "qwen2")
    assert main(["inspect", str(tmp_path / "qwen2"), "--out", str(tmp_path / "o1")]) == 0
    info = json.loads((tmp_path / "o1" / "inspect.json").read_text())
    assert info["source"]["kind"] == "transformers"
    b = info["backbone"]
    assert (b["blocks_path"], b["num_blocks"], b["hidden_size"], b["vocab_size"]) == ("model.layers", 3, 32, 96)
    assert b["blocks"][2]["attention"]["num_kv_heads"] == 2 and b["blocks"][2]["mlp"]["intermediate_size"] == 64
    assert info["components"]["total"]["params"] == 34208  # 3 x 9344 blocks + 2 x 3072 emb/head + 32 norm
    out = capsys.readouterr().out
    assert "3 x Qwen2DecoderLayer at 'model.layers'" in out
    assert (tmp_path / "o1" / "summary.txt").read_text().startswith("model: Qwen2ForCausalLM")

    # A bare config builds on the meta device: a 7B shape inspects without allocating weights.
    cfg = tf.LlamaConfig(num_hidden_layers=32, architectures=["LlamaForCausalLM"])
    (tmp_path / "llama7b.json").write_text(cfg.to_json_string())
    assert main(["inspect", str(tmp_path / "llama7b.json"), "--out", str(tmp_path / "o2")]) == 0
    info = json.loads((tmp_path / "o2" / "inspect.json").read_text())
    assert info["source"]["kind"] == "config"
    assert info["backbone"]["num_blocks"] == 32
    # Llama-2-7B: 32 blocks of 202,383,360 + embeddings and LM head of 32000 x 4096 + final norm.
    assert info["components"]["total"]["params"] == 32 * 202_383_360 + 2 * 32000 * 4096 + 4096 == 6_738_415_616


def test_inspect_bad_input(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "c.json").write_text(json.dumps({"hidden_size": 3}))
    assert main(["inspect", str(tmp_path / "c.json"), "--out", str(tmp_path / "o")]) == 2
    assert "has no 'model_type'" in capsys.readouterr().err
    TINY_MODELS.get("llama")().save_pretrained(tmp_path / "llama")
    assert main(["inspect", str(tmp_path / "llama"), "--out", str(tmp_path / "o"), "--blocks-path", "model.norm"]) == 2
    assert "not a non-empty nn.ModuleList" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # no half-written output

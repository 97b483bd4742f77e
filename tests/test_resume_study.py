"""``vlatrim study --resume`` after a kill before a training stage's first checkpoint: the stage holds
its settings and nothing to resume from, and simply starts again (it used to refuse: "holds no
complete checkpoint"). A second study into the same --out is refused while the first writes it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest

from test_study_run import dataset, study  # noqa: F401  (module fixtures: a dataset and a finished tiny study)
from vlatrim.cli.main import main
from vlatrim.errors import VlatrimError
from vlatrim.utils.lock import run_dir_lock


def _killed_before_first_checkpoint(stage) -> None:
    """``stage`` as a training run killed in its first steps leaves it: ``.partial``, run_config.json only."""
    partial = stage.with_name(stage.name + ".partial")
    partial.mkdir()
    shutil.copy2(stage / "run_config.json", partial / "run_config.json")
    (partial / "log.jsonl").write_text("")
    shutil.rmtree(stage)


def test_a_training_stage_killed_before_its_first_checkpoint_starts_again(study, tmp_path) -> None:  # noqa: F811
    out, _, data = study
    copy = tmp_path / "s"
    shutil.copytree(out, copy)
    _killed_before_first_checkpoint(copy / "base")
    _killed_before_first_checkpoint(copy / "variants" / "drop_one-drop1" / "recovered-full")
    assert main(["study", "--out", str(copy), "--preset", "tiny", "--data", data, "--resume"]) == 0
    st = json.loads((copy / "study.json").read_text())["stages"]
    assert st["base"]["status"] == "ran" and st["variants/drop_one-drop1/recovered-full"]["status"] == "ran"
    assert (copy / "base" / "stage.json").is_file() and not (copy / "base.partial").exists()
    rec = json.loads((copy / "variants" / "drop_one-drop1" / "recovered-full" / "recover.json").read_text())
    assert rec["resumed_from"] == 0 and rec["steps"] > 0


def test_study_refuses_a_second_writer_and_other_data_contents(study, tmp_path) -> None:  # noqa: F811
    from vlatrim.study.config import StudyConfig
    from vlatrim.study.run import run_study

    out, _, data = study
    cfg = StudyConfig.from_dict(json.loads((out / "study_config.json").read_text())["config"])
    with run_dir_lock(out):
        with pytest.raises(VlatrimError, match=rf"is being written by another process \(pid {os.getpid()}"):
            run_study(cfg, out, data=data, resume=True, progress=False)
    saved = json.loads((out / "study_config.json").read_text())
    assert set(saved["inputs"]) == {"data"}
    copy = tmp_path / "s"
    shutil.copytree(out, copy)
    other = dict(saved, inputs={"data": "0" * 64})  # as if --data had been rewritten since the study started
    (copy / "study_config.json").write_text(json.dumps(other))
    with pytest.raises(VlatrimError, match=r"cannot resume: the study in .* \(inputs\.data: run has '0000"):
        run_study(cfg, copy, data=data, resume=True, progress=False)


def test_a_study_recorded_before_a_setting_existed_resumes_when_the_setting_is_at_its_default(tmp_path):
    """A study made by an older vlatrim has no entry for a setting added since; it ran with that setting's
    default, so resuming with the default is the same study, and anything else is refused."""
    import json

    from vlatrim.study.config import StudyConfig
    from vlatrim.study.run import _check_resume, _recorded

    cfg = StudyConfig(closed_loop=False)
    rec = _recorded(cfg, None, None)
    del rec["config"]["quantize"]  # as written before the quantization stage existed
    (tmp_path / "study_config.json").write_text(json.dumps(rec))
    _check_resume(tmp_path, cfg, None, None, {})
    if importlib.util.find_spec("torchao") is None:  # e.g. the LeRobot venv, which leaves torchao out
        pytest.skip("the refusal half needs torchao: StudyConfig(quantize=...) checks that it is installed")
    with pytest.raises(VlatrimError, match=r"config\.quantize: run has None, now \['int8-weight'\]"):
        _check_resume(tmp_path, StudyConfig(closed_loop=False, quantize=("int8-weight",)), None, None, {})

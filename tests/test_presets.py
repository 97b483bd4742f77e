"""Preset names mean one thing across verbs, and every preset's --help says what it is and costs."""

from __future__ import annotations

import re

import pytest

from vlatrim.sim.backends.metaworld.tasks import parse_tasks
from vlatrim.study.presets import STUDY_PRESET_HELP, STUDY_PRESETS, resolve_study_config, study_preset_help
from vlatrim.train.presets import TRAIN_PRESETS, train_preset_help


def test_a_name_shared_by_train_and_study_presets_means_the_same_base_model() -> None:
    # `vlatrim study --preset X` must train its base exactly as `vlatrim train --preset X` does: that
    # training preset, its steps and batch, on the tasks it was made for. A study preset that only
    # borrows a training preset's name (e.g. a 100-step smoke run called like the 1600-step `quick`
    # training preset) fails here: give it a name of its own.
    shared = set(TRAIN_PRESETS.names()) & set(STUDY_PRESETS.names())
    assert shared, "no shared names: this test would check nothing"
    for name in sorted(shared):
        study, train = resolve_study_config(name, {}), TRAIN_PRESETS.get(name)()
        assert study.train_preset == name, name
        assert (study.train_steps, study.batch_size) == (train.trainer["steps"], train.trainer["batch_size"]), name
        if train.tasks is not None:
            assert study.tasks == tuple(parse_tasks(list(train.tasks))), name
        assert study.backbone in (None, train.backbone), name


def test_every_preset_help_says_what_it_is_and_what_it_costs(capsys) -> None:
    from vlatrim.cli.main import main
    from vlatrim.demo import main as demo_main

    def flat(text: str) -> str:  # tyro draws boxes and wraps lines
        return re.sub(r"\s+", " ", text.replace("│", " "))

    assert set(STUDY_PRESET_HELP) == set(STUDY_PRESETS.names())
    helps = {"train": train_preset_help(), "study": study_preset_help()}
    for verb in ("train", "study"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        shown = flat(capsys.readouterr().out)
        assert flat(helps[verb]) in shown, verb
    with pytest.raises(SystemExit):
        demo_main(["--help"])
    shown = flat(capsys.readouterr().out)  # argparse may also break lines after hyphens
    assert all(f"{n}: " in shown for n in STUDY_PRESETS.names()) and shown.count("Cost: ") == len(STUDY_PRESETS)
    for name in TRAIN_PRESETS.names():
        p = TRAIN_PRESETS.get(name)()
        assert p.description and p.cost, name
        assert "not measured" in p.cost or re.search(r"\d+(\.\d+)? (s|min)\b", p.cost), (name, p.cost)
        assert f"{name}: {p.description}. Cost: {p.cost}." in helps["train"]
    for name, h in STUDY_PRESET_HELP.items():
        assert h.description and ("not measured" in h.cost or re.search(r"\d+(\.\d+)? (s|min)\b", h.cost)), name
        assert f"{name}: {h.description}. Cost: {h.cost}." in helps["study"]


def test_demo_preset_is_what_make_demo_has_always_run() -> None:
    # `make demo`'s success figures (docs/results.md, benchmarks/results/study_demo.json) hold only for
    # these settings; change them and those figures must be measured again.
    import json
    from pathlib import Path

    recorded = json.loads((Path(__file__).parents[1] / "benchmarks/results/study_demo.json").read_text())["settings"]
    now = json.loads(json.dumps(resolve_study_config("demo", {}).to_dict()))
    assert {k: now.get(k) for k in recorded} == recorded

"""A policy family registered from the test suite goes through every verb with no library edit:
analyze (every pathway), prune (a coupled cut, a vision cut, an action cut), recover (full and LoRA)
and eval in Meta-World; and the family registry's own rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pathway_family import ACTION_PATH, MODEL_TYPE, VISION_PATH, PathwayConfig, PathwayFamily, PathwayVLA
from vlatrim.cli.main import main
from vlatrim.data.frames import read_demo_frames
from vlatrim.data.lerobot import LeRobotWriter, metaworld_features
from vlatrim.errors import VlatrimError
from vlatrim.families import FAMILIES, family_of, load_policy, register_family
from vlatrim.families.base import PolicyFamily
from vlatrim.prune.api import PruneRequest, couple, make_plan
from vlatrim.prune.surgery import apply_plan

TASKS = ["close the drawer", "open the drawer", "press the button"]
LANGUAGE_PATH = "backbone.encoder.layer"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "ds"
    w = LeRobotWriter(root, metaworld_features(16), fps=10)
    rng = np.random.default_rng(0)
    for e in range(6):
        T = 8
        w.add_episode({"observation.images.corner": rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8),
                       "observation.state": rng.normal(size=(T, 4)).astype(np.float32),
                       "action": rng.uniform(-1, 1, size=(T, 4)).astype(np.float32),
                       "next.success": np.zeros(T, dtype=bool)}, TASKS[e % 3])
    w.close()
    return root


@pytest.fixture(scope="module")
def model_dir(dataset, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    stats = read_demo_frames(dataset).stats()
    cfg = PathwayConfig(stats={"state_mean": stats["observation.state"]["mean"],
                               "state_std": stats["observation.state"]["std"],
                               "action_mean": stats["action"]["mean"], "action_std": stats["action"]["std"]})
    d = tmp_path_factory.mktemp("m") / "vla"
    d.mkdir()
    PathwayFamily().save(PathwayVLA(cfg), d)
    return d


def _batch(dataset: Path, model: PathwayVLA) -> dict[str, torch.Tensor]:
    return FAMILIES.get(MODEL_TYPE).dataset(model, dataset, "all").data.__getitems__(list(range(8)))


def test_the_family_is_found_by_its_checkpoint(model_dir):
    fam = family_of(model_dir)
    assert fam is FAMILIES.get(MODEL_TYPE) and fam.name == MODEL_TYPE
    paths = {p: [bl.path for bl in lists] for p, lists in fam.pathways(fam.load(model_dir)).items()}
    assert paths == {"language": [LANGUAGE_PATH], "vision": [VISION_PATH], "action": [ACTION_PATH]}


def test_inspect_opens_the_checkpoint_through_its_family(model_dir, tmp_path):
    assert main(["inspect", str(model_dir), "--out", str(tmp_path / "i")]) == 0
    info = json.loads((tmp_path / "i" / "inspect.json").read_text())
    assert info["source"]["kind"] == MODEL_TYPE and info["backbone"]["blocks_path"] == LANGUAGE_PATH
    assert [(v["path"], v["num_blocks"]) for v in info["vision"]] == [(VISION_PATH, 2)]
    assert [(v["path"], v["num_blocks"]) for v in info["action"]] == [(ACTION_PATH, 3)]


def test_analyze_scores_every_pathway_on_the_familys_loss(model_dir, dataset, tmp_path):
    out = tmp_path / "an"
    assert main(["analyze", "--model", str(model_dir), "--data", str(dataset), "--out", str(out), "--batches", "2",
                 "--batch-size", "4", "--pathways", "language", "vision", "action",
                 "--scorers", "drop_one", "block_influence", "gateprobe"]) == 0
    a = json.loads((out / "analysis.json").read_text())
    assert a["model"]["family"] == MODEL_TYPE and a["loss"]["name"] == "action l1"
    assert a["loss"]["terms_per_sample"] == 2 * 4 and a["pathways_scored"] == ["language", "vision", "action"]
    for name in ("drop_one", "block_influence", "gateprobe"):
        assert {p: len(v) for p, v in a["scorers"][name]["scores"].items()} == {
            LANGUAGE_PATH: 3, VISION_PATH: 2, ACTION_PATH: 3}
    # drop-one is the loss increase when a block is skipped, on the same batches the family builds.
    fam = family_of(model_dir)
    model = fam.load(model_dir)
    assert set(a["pathways"]) == {LANGUAGE_PATH, VISION_PATH, ACTION_PATH}
    assert a["pathways"][ACTION_PATH]["pathway"] == "action"
    assert np.isfinite(a["scorers"]["drop_one"]["scores"][ACTION_PATH]).all()
    # The family says which backbone positions are real, so block influence skips instruction padding.
    assert a["scorers"]["block_influence"]["extras"]["padding_masked"][LANGUAGE_PATH] is True
    assert fam.loss(model, _batch(dataset, model))["loss"].ndim == 0


def test_coupled_cut_reloads_exactly(model_dir, dataset, tmp_path):
    out = tmp_path / "p"
    assert main(["prune", "--model", str(model_dir), "--out", str(out), "--drop-blocks", "1"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["family"] == MODEL_TYPE
    assert rep["kept_by_path"] == {LANGUAGE_PATH: [0, 2], ACTION_PATH: [0, 2]}
    assert rep["plan"]["pathway_drops"] == {ACTION_PATH: [1]} and "couplings" in rep["plan"]["methods"]
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_action_layers"], cfg["language"]["num_hidden_layers"], cfg["num_vision_layers"]) == (2, 2, 2)

    # The same cut in memory gives exactly the reloaded model's loss and actions.
    fam = family_of(model_dir)
    model = fam.load(model_dir)
    handle = fam.handle(model)
    plan, _ = make_plan(PruneRequest(drop_blocks=[1]), model, handle)
    plan = couple(plan, model, handle, fam)
    result = apply_plan(model, plan, handle)
    fam.after_cut(result.model, result.kept_by_path)
    reloaded = family_of(out).load(out)
    batch = _batch(dataset, reloaded)
    torch.testing.assert_close(fam.loss(reloaded, batch)["loss"], fam.loss(result.model, batch)["loss"], rtol=0, atol=0)
    torch.testing.assert_close(reloaded.predict(batch), result.model.predict(batch), rtol=0, atol=0)
    assert len(reloaded.action_layers) == 2 and len(reloaded.backbone.encoder.layer) == 2


def test_bench_times_the_familys_action_and_backbone(model_dir, tmp_path):
    pruned = tmp_path / "p"
    assert main(["prune", "--model", str(model_dir), "--out", str(pruned), "--drop-blocks", "0"]) == 0
    assert main(["bench", "--model", str(model_dir), str(pruned), "--out", str(tmp_path / "b"), "--warmup", "1",
                 "--repeats", "2"]) == 0
    full, cut = json.loads((tmp_path / "b" / "bench.json").read_text())["models"]
    assert (full["family"], full["num_blocks"], cut["num_blocks"]) == (MODEL_TYPE, 3, 2)
    # 4 image tokens + the state token + 6 instruction slots reach the backbone; 2 actions per forward.
    assert full["sequence"] == {"tokens": 11, "image_tokens": 4, "chunk_size": 2}
    assert cut["params"]["total"] < full["params"]["total"]
    assert cut["flops"]["counted"]["backbone"] < full["flops"]["counted"]["backbone"]


def test_vision_cut_and_action_cut_follow_the_coupling(model_dir, tmp_path):
    assert main(["prune", "--model", str(model_dir), "--out", str(tmp_path / "v"), "--pathway", "vision",
                 "--drop-blocks", "0"]) == 0
    rep = json.loads((tmp_path / "v" / "prune.json").read_text())
    assert rep["kept_by_path"] == {LANGUAGE_PATH: [0, 1, 2], VISION_PATH: [1]}
    assert json.loads((tmp_path / "v" / "config.json").read_text())["num_vision_layers"] == 1
    assert len(family_of(tmp_path / "v").load(tmp_path / "v").vision.layers) == 1
    # An expert-only cut takes its language partner along (the coupling is symmetric).
    assert main(["prune", "--model", str(model_dir), "--out", str(tmp_path / "a"), "--pathway", "action",
                 "--drop-blocks", "2"]) == 0
    rep = json.loads((tmp_path / "a" / "prune.json").read_text())
    assert rep["kept_by_path"] == {LANGUAGE_PATH: [0, 1], ACTION_PATH: [0, 1]}


@pytest.mark.parametrize("argv, message", [
    (["--pathway", "vision", "--drop-blocks", "0,1"], "removing all 2 blocks"),
    (["--pathway", "nosuch", "--drop-blocks", "0"], "--pathway 'nosuch' is not a pathway or block list of this model; "
                                                    "valid: language, vision, action"),
    (["--pathway", "action", "--heads", "2"], "--pathway action takes --drop-blocks only"),
])
def test_bad_pathway_cuts_fail_cleanly(model_dir, tmp_path, capsys, argv, message):
    assert main(["prune", "--model", str(model_dir), "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_recover_trains_the_cut_model_with_the_familys_loss(model_dir, dataset, tmp_path, method):
    pruned = tmp_path / "p"
    assert main(["prune", "--model", str(model_dir), "--out", str(pruned), "--drop-blocks", "1"]) == 0
    out = tmp_path / "r"
    assert main(["recover", "--model", str(pruned), "--data", str(dataset), "--out", str(out), "--method", method,
                 "--steps", "3", "--batch-size", "4", "--checkpoint-every", "3"]) == 0
    rec = json.loads((out / "recover.json").read_text())
    assert rec["family"] == MODEL_TYPE and rec["steps"] == 3 and rec["budget"]["samples"] == 12
    assert rec["held_out"]["samples"] > 0 and np.isfinite(rec["held_out"]["l1"])
    if method == "lora":
        assert rec["settings"]["recovery"]["lora"]["scope"] == "backbone"
        assert rec["settings"]["recovery"]["lora"]["train_also"] == ["head", "queries"]
    before, after = family_of(pruned).load(pruned), family_of(out).load(out)
    assert len(after.action_layers) == 2  # still the cut architecture, reloaded by the family
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])}
    assert any(k.startswith("backbone.") for k in changed) and any(k.startswith("head.") for k in changed)
    if method == "lora":  # adapters merged on save: the vision tower was neither adapted nor trained
        assert not any(k.startswith("vision.") for k in changed)


def test_distill_is_refused_for_a_family_that_does_not_offer_it(model_dir, dataset, tmp_path, capsys):
    assert main(["recover", "--model", str(model_dir), "--data", str(dataset), "--out", str(tmp_path / "r"),
                 "--method", "distill", "--teacher", str(model_dir), "--steps", "1"]) == 2
    assert f"--method distill does not apply to a {MODEL_TYPE} model; valid: full, lora" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_eval_runs_the_familys_policy_in_metaworld(model_dir, tmp_path):
    out = tmp_path / "ev"
    assert main(["eval", "--policy", str(model_dir), "--tasks", "drawer-close-v3", "--episodes", "2",
                 "--max-steps", "6", "--out", str(out)]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["per_task"]["drawer-close-v3"]["episodes"] == 2 and ev["per_task"]["drawer-close-v3"]["errors"] == 0
    assert [e["steps"] for e in ev["episodes"]] == [6, 6] or ev["overall"]["mean_success"] > 0
    policy = load_policy(str(model_dir))
    assert policy.io.image_size == 16 and ev["settings"]["cameras"] == ["corner"]


def test_registry_rules():
    with pytest.raises(TypeError, match="must set a class attribute 'name'"):
        class Nameless(PolicyFamily):  # noqa: F841
            pass
    with pytest.raises(ValueError, match=f"policy family {MODEL_TYPE!r} is already registered"):
        register_family(type("Again", (PathwayFamily,), {"name": MODEL_TYPE}))


def test_an_unknown_checkpoint_names_the_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"type": "act"}))
    with pytest.raises(VlatrimError, match=r"no policy family recognises .* \(config.json names 'act'\); registered "
                                           r"families: vlatrim_vla, .*transformers"):
        family_of(tmp_path)

"""A LeRobot SmolVLA policy through vlatrim's verbs: found by its checkpoint, saved and reloaded exactly
(LeRobot's own ``from_pretrained`` reads what vlatrim writes), cut in coupled VLM / expert pairs,
scored on its flow-matching loss, and recovered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlatrim.cli.main import main
from vlatrim.errors import VlatrimError
from vlatrim.families import FAMILIES, family_of, load_policy
from vlatrim.families.lerobot_smolvla import EXPERT_PATH, LANGUAGE_PATH, VISION_PATH, lerobot_available

pytestmark = pytest.mark.skipif(not lerobot_available(),
                                reason="needs lerobot 0.4.4 (Python 3.11, transformers 4.57): run `make test-lerobot`")
FAMILY = "lerobot_smolvla"


def _lerobot_load(path: Path):
    """The policy and its processors, loaded by LeRobot alone (no vlatrim code)."""
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    policy = SmolVLAPolicy.from_pretrained(str(path), strict=True).eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(path))
    return policy, pre, post


def _batch(fam, model, dataset: Path, n: int = 6) -> dict[str, torch.Tensor]:
    return fam.dataset(model, dataset, "all").data.__getitems__(list(range(n)))


def test_the_family_is_found_and_names_its_pathways(policy_dir):
    fam = family_of(policy_dir)
    assert fam is FAMILIES.get(FAMILY)
    model = fam.load(policy_dir)
    paths = {p: [bl.path for bl in lists] for p, lists in fam.pathways(model).items()}
    assert paths == {"language": [LANGUAGE_PATH], "vision": [VISION_PATH], "action": [EXPERT_PATH]}
    handle = fam.handle(model)
    (c,) = fam.couplings(model, handle)
    assert (c.source, c.target, c.pairs, c.symmetric) == (LANGUAGE_PATH, EXPERT_PATH, ((0, 0), (1, 1), (2, 2), (3, 3)), True)
    assert fam.loss_info(model).name == "flow-matching mse"


def test_unpruned_save_and_reload_are_bit_identical(policy_dir, dataset, tmp_path):
    fam = family_of(policy_dir)
    model = fam.load(policy_dir)
    out = tmp_path / "resaved"
    out.mkdir()
    fam.save(model, out)
    assert {"config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"} <= {
        f.name for f in out.iterdir()}
    again = fam.load(out)
    lerobot_policy, pre, post = _lerobot_load(out)
    batch = _batch(fam, model, dataset)
    for other in (again, lerobot_policy):
        ref, got = model.state_dict(), other.state_dict()
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    loss = fam.loss(model, batch)["loss"]
    torch.testing.assert_close(fam.loss(again, batch)["loss"], loss, rtol=0, atol=0)
    # LeRobot's own policy and processors give the same loss with the same noise and time.
    raw = fam.dataset(model, dataset, "all").data.raw_batch(list(range(6)))
    lb = pre(raw)
    lb["actions_id_pad"] = lb.pop("action_is_pad")
    lerobot_loss, _ = lerobot_policy.forward(lb, noise=batch["noise"], time=batch["time"])
    torch.testing.assert_close(lerobot_loss, loss, rtol=0, atol=0)
    torch.testing.assert_close(fam.predict_batch(again, batch), fam.predict_batch(model, batch), rtol=0, atol=0)
    # The loss is a deterministic function of the weights in eval mode.
    torch.testing.assert_close(fam.loss(model, batch)["loss"], loss, rtol=0, atol=0)


def test_coupled_depth_cut_reloads_in_lerobot_with_the_same_loss(policy_dir, dataset, tmp_path, capsys):
    from vlatrim.prune.api import PruneRequest, couple, make_plan
    from vlatrim.prune.surgery import apply_plan

    out = tmp_path / "cut"
    assert main(["prune", "--model", str(policy_dir), "--out", str(out), "--drop-blocks", "1,2"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["family"] == FAMILY
    assert rep["kept_by_path"] == {LANGUAGE_PATH: [0, 3], EXPERT_PATH: [0, 3]}
    assert rep["plan"]["pathway_drops"] == {EXPERT_PATH: [1, 2]} and "couplings" in rep["plan"]["methods"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["type"] == "smolvla" and cfg["num_vlm_layers"] == 2

    # In memory: the same cut, through the family's hooks.
    fam = family_of(policy_dir)
    model = fam.load(policy_dir)
    handle = fam.handle(model)
    plan, _ = make_plan(PruneRequest(drop_blocks=[1, 2]), model, handle)
    plan = couple(plan, model, handle, fam)
    result = apply_plan(model, plan, handle)
    fam.after_cut(result.model, result.kept_by_path)
    cut = result.model
    w = cut.model.vlm_with_expert
    assert (w.num_vlm_layers, w.num_expert_layers, w.config.text_config.num_hidden_layers) == (2, 2, 2)

    # LeRobot alone reloads the cut policy (strictly), and it computes exactly the in-memory cut's loss.
    lerobot_policy, pre, _ = _lerobot_load(out)
    assert len(lerobot_policy.model.vlm_with_expert.lm_expert.layers) == 2
    batch = _batch(fam, cut, dataset)
    want = fam.loss(cut, batch)["loss"]
    raw = fam.dataset(cut, dataset, "all").data.raw_batch(list(range(6)))
    lb = pre(raw)
    lb["actions_id_pad"] = lb.pop("action_is_pad")
    got, _ = lerobot_policy.forward(lb, noise=batch["noise"], time=batch["time"])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    reloaded = family_of(out).load(out)
    torch.testing.assert_close(fam.loss(reloaded, batch)["loss"], want, rtol=0, atol=0)
    torch.testing.assert_close(fam.predict_batch(reloaded, batch), fam.predict_batch(cut, batch), rtol=0, atol=0)
    # An expert-only cut takes its VLM partner along (the coupling is symmetric).
    assert main(["prune", "--model", str(policy_dir), "--out", str(tmp_path / "a"), "--pathway", "action",
                 "--drop-blocks", "2,3"]) == 0
    rep = json.loads((tmp_path / "a" / "prune.json").read_text())
    assert rep["kept_by_path"] == {LANGUAGE_PATH: [0, 1], EXPERT_PATH: [0, 1]}


@pytest.mark.parametrize("argv, message", [
    (["--drop-blocks", "1"], "self_attn_every_n_layers=2"),
    (["--pathway", "vision", "--drop-blocks", "0"], "the vision encoder cannot be cut"),
    (["--heads", "2"], "only paired depth cuts (--drop-blocks) are supported"),
    (["--mlp-ratio", "0.5"], "only paired depth cuts (--drop-blocks) are supported"),
])
def test_cuts_smolvla_cannot_express_are_refused_with_nothing_written(policy_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "x"
    assert main(["prune", "--model", str(policy_dir), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and not out.exists()
    if argv == ["--drop-blocks", "1"]:  # it names the layer that would change role and valid keep-sets
        assert "moves layer 2 (self-attention) to index 1" in err and "[0, 1, 2]" in err


def test_analyze_scores_vision_language_and_action_on_the_flow_matching_loss(policy_dir, dataset, tmp_path):
    out = tmp_path / "an"
    assert main(["analyze", "--model", str(policy_dir), "--data", str(dataset), "--out", str(out), "--batches", "2",
                 "--batch-size", "4", "--pathways", "language", "vision", "action",
                 "--scorers", "drop_one", "block_influence", "gateprobe"]) == 0
    a = json.loads((out / "analysis.json").read_text())
    assert a["model"]["family"] == FAMILY and a["loss"]["name"] == "flow-matching mse"
    assert a["pathways_scored"] == ["language", "vision", "action"]
    for name in ("drop_one", "block_influence", "gateprobe"):
        scores = a["scorers"][name]["scores"]
        assert {p: len(v) for p, v in scores.items()} == {LANGUAGE_PATH: 4, VISION_PATH: 2, EXPERT_PATH: 4}
        for p, v in scores.items():
            assert np.isfinite(v).all(), (name, p, v)
    # The scorers see every block (SmolVLA never calls its decoder layers; the family bridges their hooks):
    # skipping any expert or vision layer, or any VLM layer but the last, changes the loss. The last VLM
    # layer's output is never read (the expert reads only its keys and values, computed from its input), so
    # skipping its update changes nothing: exactly 0, for drop-one and GateProbe alike.
    drop = a["scorers"]["drop_one"]["scores"]
    for p in (EXPERT_PATH, VISION_PATH):
        assert all(s != 0 for s in drop[p]), p
    assert all(s != 0 for s in drop[LANGUAGE_PATH][:3]) and drop[LANGUAGE_PATH][3] == 0
    assert a["scorers"]["gateprobe"]["scores"][LANGUAGE_PATH][3] == 0


def test_block_hooks_reach_the_layers_smolvla_never_calls(policy_dir, dataset):
    import copy

    from vlatrim.analyze.hooks import skip_blocks

    fam = family_of(policy_dir)
    model = fam.load(policy_dir)
    batch = _batch(fam, model, dataset)
    base = fam.loss(model, batch)["loss"]
    expert = model.get_submodule(EXPERT_PATH)
    with skip_blocks(expert, [0]):
        skipped = fam.loss(model, batch)["loss"]
    assert skipped != base
    torch.testing.assert_close(fam.loss(model, batch)["loss"], base, rtol=0, atol=0)  # hooks gone: exact again
    twin = copy.deepcopy(model)  # a copy's bridge points at the copy's own layers
    with skip_blocks(twin.get_submodule(EXPERT_PATH), [0]):
        torch.testing.assert_close(fam.loss(twin, batch)["loss"], skipped, rtol=0, atol=0)
        torch.testing.assert_close(fam.loss(model, batch)["loss"], base, rtol=0, atol=0)


def test_recover_full_trains_the_cut_policy(policy_dir, dataset, tmp_path):
    pruned = tmp_path / "p"
    assert main(["prune", "--model", str(policy_dir), "--out", str(pruned), "--drop-blocks", "2,3"]) == 0
    out = tmp_path / "r"
    assert main(["recover", "--model", str(pruned), "--data", str(dataset), "--out", str(out), "--method", "full",
                 "--steps", "2", "--batch-size", "4", "--checkpoint-every", "2"]) == 0
    rec = json.loads((out / "recover.json").read_text())
    assert rec["family"] == FAMILY and rec["steps"] == 2
    assert rec["held_out"]["samples"] > 0 and np.isfinite(rec["held_out"]["l1"])
    before, after = _lerobot_load(pruned)[0], _lerobot_load(out)[0]  # LeRobot reloads the recovered policy
    assert len(after.model.vlm_with_expert.lm_expert.layers) == 2
    assert before.config.train_expert_only  # LeRobot's default, which alone would freeze the whole VLM
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])}
    assert any(k.startswith("model.vlm_with_expert.lm_expert.") for k in changed)
    # full trains the VLM text layers around the cut too: all of layer 0; of the last layer (1), only what the
    # expert reads (its keys and values); never the vision encoder or the embedding.
    text = {k.removeprefix(LANGUAGE_PATH + ".") for k in changed if k.startswith(LANGUAGE_PATH + ".")}
    layer0 = {k.removeprefix(LANGUAGE_PATH + ".") for k in before.state_dict() if k.startswith(LANGUAGE_PATH + ".0.")}
    assert layer0 <= text
    assert {k for k in text if k.startswith("1.")} == {"1.input_layernorm.weight", "1.self_attn.k_proj.weight",
                                                       "1.self_attn.v_proj.weight"}
    assert not any(".vision_model." in k or "embed_tokens" in k for k in changed)
    # recover.json counts what trained: LeRobot's trainable parameters plus those text-layer parameters.
    params = dict(before.named_parameters())
    lerobot = sum(p.numel() for p in params.values() if p.requires_grad)
    text_n = sum(params[f"{LANGUAGE_PATH}.{k}"].numel() for k in layer0 | {
        "1.input_layernorm.weight", "1.self_attn.k_proj.weight", "1.self_attn.v_proj.weight"})
    assert rec["params"]["trainable"] == lerobot + text_n


def test_full_trains_what_lerobot_leaves_trainable_plus_the_text_layers_smolvla_reads(make_config):
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    fam = FAMILIES.get(FAMILY)
    for overrides in ({}, {"train_expert_only": False}, {"num_expert_layers": 2}):
        policy = SmolVLAPolicy(make_config(**overrides))
        lerobot = {n for n, p in policy.named_parameters() if p.requires_grad}
        full = set(fam.trainable(policy, "full"))
        assert set(fam.trainable(policy, "lora")) == lerobot  # other methods: as loaded
        text = {n.removeprefix(LANGUAGE_PATH + ".") for n in full if n.startswith(LANGUAGE_PATH + ".")}
        # 4 VLM layers; the last one an expert layer runs beside is 3, or 2 with 2 experts (beside 0 and 2).
        last = 2 if overrides.get("num_expert_layers") else 3
        assert {k.split(".")[0] for k in text} == {str(i) for i in range(last + 1)}
        assert {k.split(".", 1)[1] for k in text if k.startswith(f"{last}.")} == {
            "input_layernorm.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"}
        assert {n for n in full if not n.startswith(LANGUAGE_PATH + ".")} == {
            n for n in lerobot if not n.startswith(LANGUAGE_PATH + ".")}
        assert not any(".vision_model." in n for n in full)  # freeze_vision_encoder (default) is kept


def test_recover_lora_adapts_the_vlm_text_layers_and_trains_the_expert(policy_dir, dataset, tmp_path):
    out = tmp_path / "r"
    assert main(["recover", "--model", str(policy_dir), "--data", str(dataset), "--out", str(out), "--method", "lora",
                 "--steps", "2", "--batch-size", "4", "--checkpoint-every", "2"]) == 0
    rec = json.loads((out / "recover.json").read_text())
    assert rec["settings"]["recovery"]["lora"]["scope"] == "model.vlm_with_expert.vlm.model.text_model"
    before, after = _lerobot_load(policy_dir)[0], _lerobot_load(out)[0]  # adapters merged: a plain SmolVLA
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])}
    assert any(k.startswith("model.vlm_with_expert.vlm.model.text_model.layers.") for k in changed)
    assert any(k.startswith("model.vlm_with_expert.lm_expert.") for k in changed)
    assert not any(".vision_model." in k for k in changed)


def test_policy_declares_its_io_and_predicts_chunks(policy_dir):
    policy = load_policy(str(policy_dir))
    assert (policy.io.action_dim, policy.io.state_dim, policy.io.cameras, policy.io.image_size) == (4, 4, ("corner",), 32)
    rng = np.random.default_rng(0)
    obs = {"images": {"corner": rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)},
           "image": None, "state": rng.normal(size=(2, 4)).astype(np.float32),
           "instruction": ["open the drawer", "press the button"]}
    actions = policy.predict(obs)
    assert actions.shape == (2, 8, 4) and np.isfinite(actions).all()


def test_eval_runs_the_policy_in_metaworld(policy_dir, tmp_path):
    out = tmp_path / "ev"
    assert main(["eval", "--policy", str(policy_dir), "--tasks", "drawer-close-v3", "--episodes", "1",
                 "--max-steps", "4", "--out", str(out)]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["per_task"]["drawer-close-v3"]["episodes"] == 1 and ev["per_task"]["drawer-close-v3"]["errors"] == 0
    assert ev["settings"]["cameras"] == ["corner"]


def test_dataset_features_that_do_not_match_are_named(policy_dir, tmp_path):
    from vlatrim.data.lerobot import LeRobotWriter, metaworld_features

    root = tmp_path / "other"
    w = LeRobotWriter(root, metaworld_features(32, camera="top"), fps=10)
    rng = np.random.default_rng(0)
    w.add_episode({"observation.images.top": rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8),
                   "observation.state": np.zeros((4, 4), np.float32), "action": np.zeros((4, 4), np.float32),
                   "next.success": np.zeros(4, dtype=bool)}, "open the drawer")
    w.close()
    fam = family_of(policy_dir)
    with pytest.raises(VlatrimError, match=r"the policy reads observation\.images\.corner, the dataset has "
                                           r"observation\.images\.top"):
        fam.dataset(fam.load(policy_dir), root)


def test_a_vlm_that_is_neither_local_nor_cached_is_refused(policy_dir, tmp_path):
    import shutil

    d = tmp_path / "elsewhere"
    shutil.copytree(policy_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["vlm_model_name"] = "nobody-here/no-such-smolvlm"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VlatrimError, match=r"vlm_model_name 'nobody-here/no-such-smolvlm', which is neither a local "
                                           r"directory nor in the Hugging Face cache, and vlatrim downloads nothing"):
        family_of(d).load(d)


@pytest.mark.parametrize("kind, message", [
    ("pi0", "LeRobot pi0 policy, which vlatrim does not support: pi0 / pi0.5 need LeRobot's patched transformers"),
    ("pi05", "need LeRobot's patched transformers, which is not on PyPI"),
    ("act", "is a LeRobot 'act' policy, which vlatrim does not support; supported LeRobot type: smolvla"),
])
def test_other_lerobot_types_are_refused_naming_the_type(tmp_path, kind, message):
    (tmp_path / "config.json").write_text(json.dumps({"type": kind, "input_features": {}, "output_features": {}}))
    fam = family_of(tmp_path)
    assert fam.name == FAMILY
    with pytest.raises(VlatrimError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        fam.load(tmp_path)


def test_bench_measures_the_policy_and_its_coupled_cut(policy_dir, tmp_path):
    cut = tmp_path / "cut"
    assert main(["prune", "--model", str(policy_dir), "--out", str(cut), "--drop-blocks", "1,2"]) == 0
    assert main(["bench", "--model", str(policy_dir), str(cut), "--out", str(tmp_path / "b"), "--repeats", "3",
                 "--warmup", "1"]) == 0
    full, pruned = json.loads((tmp_path / "b" / "bench.json").read_text())["models"]
    assert full["family"] == pruned["family"] == FAMILY and (full["num_blocks"], pruned["num_blocks"]) == (4, 2)
    # Removing two VLM text layers and their expert partners removes exactly their parameters.
    fam = family_of(policy_dir)
    model = fam.load(policy_dir)
    w = model.model.vlm_with_expert
    removed = sum(p.numel() for i in (1, 2) for layers in (w.get_vlm_model().text_model.layers, w.lm_expert.layers)
                  for p in layers[i].parameters())
    assert full["params"]["total"] - pruned["params"]["total"] == removed
    chunk = model.config.chunk_size
    for m in (full, pruned):
        assert m["sequence"]["chunk_size"] == chunk and m["latency_ms"]["full"]["eager"]["median_ms"] > 0
        ctrl = m["control"]["eager"]
        assert ctrl["actions_per_s"] == pytest.approx(ctrl["query_hz"] * chunk, rel=1e-9)
    assert pruned["flops"]["counted"]["full"] < full["flops"]["counted"]["full"]

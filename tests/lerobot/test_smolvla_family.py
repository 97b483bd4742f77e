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


def _cut_in_memory(policy_dir: Path, req):
    """The cut ``vlatrim prune`` makes, done in memory through the family's hooks."""
    from vlatrim.prune.api import couple, make_plan
    from vlatrim.prune.surgery import apply_plan

    fam = family_of(policy_dir)
    model = fam.load(policy_dir)
    handle = fam.handle(model)
    plan, _ = make_plan(req, model, handle)
    plan = couple(plan, model, handle, fam, keep_partners=req.keep_partners)
    result = apply_plan(model, plan, handle)
    fam.cut_partners(result.model, plan, result.kept_by_path)
    fam.after_cut(result.model, result.kept_by_path)
    return result.model


def _assert_lerobot_reload_is_exact(fam, cut, out: Path, dataset: Path) -> None:
    """LeRobot alone reloads ``out`` strictly, and it and vlatrim's reload compute exactly the loss and the
    actions of the in-memory ``cut`` (same noise and time draws)."""
    lerobot_policy, pre, _ = _lerobot_load(out)
    batch = _batch(fam, cut, dataset)
    want = fam.loss(cut, batch)["loss"]
    raw = fam.dataset(cut, dataset, "all").data.raw_batch(list(range(6)))
    lb = pre(raw)
    lb["actions_id_pad"] = lb.pop("action_is_pad")
    got, _ = lerobot_policy.forward(lb, noise=batch["noise"], time=batch["time"])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    ref = cut.state_dict()
    assert lerobot_policy.state_dict().keys() == ref.keys()
    assert all(torch.equal(lerobot_policy.state_dict()[k], ref[k]) for k in ref)
    reloaded = family_of(out).load(out)
    torch.testing.assert_close(fam.loss(reloaded, batch)["loss"], want, rtol=0, atol=0)
    torch.testing.assert_close(fam.predict_batch(reloaded, batch), fam.predict_batch(cut, batch), rtol=0, atol=0)


def test_coupled_depth_cut_reloads_in_lerobot_with_the_same_loss(policy_dir, dataset, tmp_path, capsys):
    from vlatrim.prune.api import PruneRequest

    out = tmp_path / "cut"
    assert main(["prune", "--model", str(policy_dir), "--out", str(out), "--drop-blocks", "1,2"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["family"] == FAMILY
    assert rep["kept_by_path"] == {LANGUAGE_PATH: [0, 3], EXPERT_PATH: [0, 3]}
    assert rep["plan"]["pathway_drops"] == {EXPERT_PATH: [1, 2]} and "couplings" in rep["plan"]["methods"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["type"] == "smolvla" and cfg["num_vlm_layers"] == 2
    assert not (out / "vlm").exists()  # a depth cut keeps the VLM's structure: vlm_model_name stays

    # In memory: the same cut, through the family's hooks; LeRobot alone reloads it (strictly) and computes
    # exactly its loss.
    fam = family_of(policy_dir)
    cut = _cut_in_memory(policy_dir, PruneRequest(drop_blocks=[1, 2]))
    w = cut.model.vlm_with_expert
    assert (w.num_vlm_layers, w.num_expert_layers, w.config.text_config.num_hidden_layers) == (2, 2, 2)
    assert len(_lerobot_load(out)[0].model.vlm_with_expert.lm_expert.layers) == 2
    _assert_lerobot_reload_is_exact(fam, cut, out, dataset)
    # An expert-only cut takes its VLM partner along (the coupling is symmetric).
    assert main(["prune", "--model", str(policy_dir), "--out", str(tmp_path / "a"), "--pathway", "action",
                 "--drop-blocks", "2,3"]) == 0
    rep = json.loads((tmp_path / "a" / "prune.json").read_text())
    assert rep["kept_by_path"] == {LANGUAGE_PATH: [0, 1], EXPERT_PATH: [0, 1]}


@pytest.mark.parametrize("argv, req, shape", [
    # 4 query heads in 2 KV groups: keep one whole group (1 KV head), or one query head of each group.
    (["--heads", "2"], dict(heads=[2]), dict(num_attention_heads=2, num_key_value_heads=1)),
    (["--heads", "2", "--head-mode", "query"], dict(heads=[2], head_mode="query"),
     dict(num_attention_heads=2, num_key_value_heads=2)),
    (["--mlp-ratio", "0.5"], dict(mlp_ratio=[0.5]), dict(intermediate_size=64)),
    (["--pathway", "vision", "--drop-blocks", "1"], dict(pathway="vision", drop_blocks=[1]),
     dict(vision_num_hidden_layers=1)),
    (["--drop-blocks", "2,3", "--heads", "2"], dict(drop_blocks=[2, 3], heads=[2]),
     dict(num_attention_heads=2, num_key_value_heads=1)),
])
def test_width_and_vision_cuts_write_the_vlm_lerobot_must_build(policy_dir, vlm_dir, dataset, tmp_path, argv, req,
                                                                shape):
    from vlatrim.families.lerobot_smolvla import VLM_DIR, VLM_MARK, vlm_shape
    from vlatrim.prune.api import PruneRequest

    out = tmp_path / "cut"
    assert main(["prune", "--model", str(policy_dir), "--out", str(out), *argv]) == 0
    full = {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "vision_num_hidden_layers": 2}
    cfg = json.loads((out / "config.json").read_text())
    # The policy names its own cut VLM by absolute path (LeRobot resolves names against the working directory).
    assert cfg["vlm_model_name"] == str((out / VLM_DIR).resolve()) and cfg["load_vlm_weights"] is False
    vcfg = json.loads((out / VLM_DIR / "config.json").read_text())
    got = {"num_attention_heads": vcfg["text_config"]["num_attention_heads"],
           "num_key_value_heads": vcfg["text_config"]["num_key_value_heads"],
           "intermediate_size": vcfg["text_config"]["intermediate_size"],
           "vision_num_hidden_layers": vcfg["vision_config"]["num_hidden_layers"]}
    assert got == {**full, **shape}
    assert json.loads((out / VLM_DIR / VLM_MARK).read_text())["source"] == str(vlm_dir)
    assert (out / VLM_DIR / "tokenizer.json").is_file() and (out / VLM_DIR / "processor_config.json").is_file()
    assert not any(f.name.endswith(".safetensors") for f in (out / VLM_DIR).iterdir())

    fam = family_of(policy_dir)
    cut = _cut_in_memory(policy_dir, PruneRequest(**req))
    assert vlm_shape(cut) == got
    w = cut.model.vlm_with_expert
    if "num_attention_heads" in shape:  # the expert follows: LeRobot's attention uses one head count for both
        assert (w.num_attention_heads, w.num_key_value_heads) == (shape["num_attention_heads"], shape["num_key_value_heads"])
        hd = w.config.text_config.head_dim
        for i, layer in enumerate(w.lm_expert.layers):
            att = layer.self_attn
            assert att.q_proj.out_features == att.o_proj.in_features == shape["num_attention_heads"] * hd
            assert att.k_proj.out_features == shape["num_key_value_heads"] * hd
            if i % 2:  # cross-attention layers read the VLM's kept keys and values
                assert att.k_proj.in_features == att.v_proj.in_features == shape["num_key_value_heads"] * hd
    _assert_lerobot_reload_is_exact(fam, cut, out, dataset)


def test_expert_only_cut_keeps_every_vlm_layer_where_lerobot_runs_it(make_policy, dataset, tmp_path, capsys):
    from vlatrim.families.lerobot_smolvla import expert_keep_sets
    from vlatrim.prune.api import PruneRequest

    # Which expert-only keep sets lerobot 0.4.4 runs, by layout (4 VLM layers): with a joint layer every 4
    # layers, keeping experts 0 and 2 leaves VLM layers 1 and 3 (cross-attention) alone, and expert 2 moves to
    # index 1, cross-attention both ways; expert 0 alone leaves 1-3 alone. With the default alternation of 2,
    # or self-attention only, none.
    assert expert_keep_sets(4, 4) == [[0, 2], [0]] and expert_keep_sets(4, 2) == [] and expert_keep_sets(4, 1) == []
    assert expert_keep_sets(4, 0) == [[0, 2], [0]]  # every layer cross-attention
    src = make_policy(tmp_path / "n4", self_attn_every_n_layers=4)
    out = tmp_path / "cut"
    assert main(["prune", "--model", str(src), "--out", str(out), "--pathway", "action", "--drop-blocks", "1,3",
                 "--keep-partners"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["kept_by_path"] == {LANGUAGE_PATH: [0, 1, 2, 3], EXPERT_PATH: [0, 2]}
    assert "partners_kept" in rep["plan"]["notes"] and "couplings" not in rep["plan"]["methods"]
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_vlm_layers"], cfg["num_expert_layers"]) == (4, 2)
    fam = family_of(src)
    cut = _cut_in_memory(src, PruneRequest(pathway="action", drop_blocks=[1, 3], keep_partners=True))
    assert [len(cut.get_submodule(p)) for p in (LANGUAGE_PATH, EXPERT_PATH)] == [4, 2]
    _assert_lerobot_reload_is_exact(fam, cut, out, dataset)
    # Other keep sets are refused, naming the valid ones; the default alternation (2) has none. Nothing is written.
    bad = tmp_path / "bad"
    assert main(["prune", "--model", str(src), "--out", str(bad), "--pathway", "action",
                 "--drop-blocks", "1,2", "--keep-partners"]) == 2
    assert "valid keep sets here (attention_mode='cross_attn', self_attn_every_n_layers=4): [0, 2]; [0]" in capsys.readouterr().err
    n2 = make_policy(tmp_path / "n2")
    assert main(["prune", "--model", str(n2), "--out", str(bad), "--pathway", "action", "--drop-blocks", "1,3",
                 "--keep-partners"]) == 2
    err = capsys.readouterr().err
    assert "self_attn_every_n_layers=2): none; without --keep-partners the VLM partners go too" in err and not bad.exists()
    assert main(["prune", "--model", str(n2), "--out", str(bad), "--drop-blocks", "2,3", "--keep-partners"]) == 2
    assert "VLM layers [2, 3] cannot be cut while their expert partners stay" in capsys.readouterr().err


def test_a_moved_cut_policy_loads_from_its_own_vlm_directory(policy_dir, dataset, tmp_path):
    import shutil

    out = tmp_path / "cut"
    assert main(["prune", "--model", str(policy_dir), "--out", str(out), "--heads", "2"]) == 0
    moved = tmp_path / "moved"
    shutil.move(str(out), moved)
    fam = family_of(moved)
    model = fam.load(moved)  # vlm_model_name names the old place; vlatrim finds vlm/ beside the policy
    assert model.model.vlm_with_expert.num_key_value_heads == 1
    # Recovering it writes a checkpoint with its own copy of the cut VLM, independent of the moved one.
    rec = tmp_path / "rec"
    assert main(["recover", "--model", str(moved), "--data", str(dataset), "--out", str(rec), "--method", "full",
                 "--steps", "1", "--batch-size", "4", "--checkpoint-every", "1"]) == 0
    assert json.loads((rec / "config.json").read_text())["vlm_model_name"] == str((rec / "vlm").resolve())
    shutil.rmtree(moved)
    policy, _, _ = _lerobot_load(rec)
    assert policy.model.vlm_with_expert.num_key_value_heads == 1


@pytest.mark.parametrize("argv, message", [
    (["--drop-blocks", "1"], "self_attn_every_n_layers=2"),
    (["--heads", "4,2,4,4"], "the cut leaves the VLM layers unequal query heads {0: 4, 1: 2, 2: 4, 3: 4}"),
    (["--mlp-ratio", "0.5,0,0,0"], "unequal MLP channels"),
    (["--heads", "3"], "keeping 3 heads evenly in 2 KV groups needs a multiple of 2; nearest valid: 2 or 4"),
])
def test_cuts_smolvla_cannot_express_are_refused_with_nothing_written(policy_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "x"
    assert main(["prune", "--model", str(policy_dir), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and not out.exists()
    if argv == ["--drop-blocks", "1"]:  # it names the layer that would change role and valid keep-sets
        assert "moves layer 2 (self-attention) to index 1" in err and "[0, 1, 2]" in err


@pytest.mark.parametrize("plan, message", [
    (dict(vocab=list(range(100))), "SmolVLA: vocabulary cuts are refused"),
    (dict(drop_lm_head=True), "SmolVLA: --drop-lm-head is refused"),
    # Two query heads in every layer, but one KV head in layer 0 (a whole group) and two in layer 1.
    (dict(heads={0: [0, 1], 1: [0, 2], 2: [0, 1], 3: [0, 1]}), r"unequal KV heads \{0: 1, 1: 2, 2: 1, 3: 1\}"),
])
def test_plans_smolvla_cannot_express_are_refused_before_the_cut(policy_dir, plan, message):
    from vlatrim.prune.api import couple
    from vlatrim.prune.plan import PrunePlan

    fam = family_of(policy_dir)
    model = fam.load(policy_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(VlatrimError, match=message):
        couple(PrunePlan(**plan), model, fam.handle(model), fam)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_analyze_scores_vision_language_and_action_on_the_flow_matching_loss(policy_dir, dataset, tmp_path):
    out = tmp_path / "an"
    assert main(["analyze", "--model", str(policy_dir), "--data", str(dataset), "--out", str(out), "--batches", "2",
                 "--batch-size", "4", "--pathways", "language", "vision", "action",
                 "--scorers", "drop_one", "block_influence", "gateprobe", "angular", "cka", "head_taylor",
                 "channel_taylor"]) == 0
    a = json.loads((out / "analysis.json").read_text())
    assert a["model"]["family"] == FAMILY and a["loss"]["name"] == "flow-matching mse"
    assert a["pathways_scored"] == ["language", "vision", "action"]
    for name in ("drop_one", "block_influence", "gateprobe", "angular", "cka"):
        scores = a["scorers"][name]["scores"]
        assert {p: len(v) for p, v in scores.items()} == {LANGUAGE_PATH: 4, VISION_PATH: 2, EXPERT_PATH: 4}
        for p, v in scores.items():
            assert np.isfinite(v).all(), (name, p, v)
    # The pathway comparison: each block list with its pathway, in analysis.json and its plot.
    assert {p: v["pathway"] for p, v in a["pathways"].items()} == {
        LANGUAGE_PATH: "language", VISION_PATH: "vision", EXPERT_PATH: "action"}
    assert "pathways.png" in a["plots"] and (out / "pathways.png").stat().st_size > 0
    # Heads and MLP channels of the VLM text layers (4 query heads, 128 channels in the tiny VLM). The last
    # layer's output is never read, so its heads and channels score exactly 0; the others do not.
    heads, channels = a["scorers"]["head_taylor"]["scores"], a["scorers"]["channel_taylor"]["scores"]
    assert sorted(heads) == sorted(channels) == [f"{LANGUAGE_PATH}.{i}" for i in range(4)]
    assert all(len(heads[f"{LANGUAGE_PATH}.{i}"]) == 4 and len(channels[f"{LANGUAGE_PATH}.{i}"]) == 128
               for i in range(4))
    assert all(v == 0 for v in heads[f"{LANGUAGE_PATH}.3"] + channels[f"{LANGUAGE_PATH}.3"])
    assert all(any(v > 0 for v in heads[f"{LANGUAGE_PATH}.{i}"]) for i in range(3))
    # The scorers see every block (SmolVLA never calls its decoder layers; the family bridges their hooks):
    # skipping any expert or vision layer, or any VLM layer but the last, changes the loss. The last VLM
    # layer's output is never read (the expert reads only its keys and values, computed from its input), so
    # skipping its update changes nothing: exactly 0, for drop-one and GateProbe alike.
    drop = a["scorers"]["drop_one"]["scores"]
    for p in (EXPERT_PATH, VISION_PATH):
        assert all(s != 0 for s in drop[p]), p
    assert all(s != 0 for s in drop[LANGUAGE_PATH][:3]) and drop[LANGUAGE_PATH][3] == 0
    assert a["scorers"]["gateprobe"]["scores"][LANGUAGE_PATH][3] == 0


def test_vocabulary_usage_is_refused_before_any_scorer_runs(policy_dir, dataset, tmp_path, capsys, monkeypatch):
    from vlatrim.analyze.scorers.drop_one import DropOne

    ran = []
    monkeypatch.setattr(DropOne, "score", lambda self, ctx: ran.append(1))
    out = tmp_path / "an"
    assert main(["analyze", "--model", str(policy_dir), "--data", str(dataset), "--out", str(out), "--batches", "1",
                 "--batch-size", "2", "--scorers", "drop_one", "vocabulary"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("vlatrim: vocabulary usage needs the dataset's instructions and the model's tokenizer, and this "
                   "model's family gives analysis no tokenizer; leave vocabulary out of --scorers")
    assert not ran and not out.exists()


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

"""``--budget-units all``: one parameter budget solved across blocks, KV head groups / query heads and
MLP channels by estimated loss per parameter, from a hand-written analysis.json with known scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlatrim.cli.main import main
from vlatrim.models.adapters import locate_backbone
from vlatrim.models.adapters.tiny import TINY_MODELS
from vlatrim.models.params import params_by_component
from vlatrim.prune import load_pruned
from vlatrim.prune.api import PruneRequest, make_plan
from vlatrim.prune.gqa import kv_heads_for
from vlatrim.prune.surgery import apply_plan

# Tiny Llama: hidden 32, 4 query heads in 2 KV groups of head_dim 8, 64 MLP channels, 3 blocks, no biases.
D, HD, I = 32, 8, 64
KV_GROUP = 2 * HD * 2 * D + HD * 2 * D  # 2 query heads (q rows + o columns) + 1 KV head (k and v rows) = 1536
QUERY_ROW = 2 * HD * 2 * D  # one query head from each of the 2 groups (q rows + o columns) = 1024
CHANNEL = 3 * D  # gate row + up row + down column = 96
BLOCK = (4 + 2 + 2 + 4) * HD * D + 3 * D * I + 2 * D  # q, k, v, o + gate, up, down + 2 norms = 9280


def _analysis(path: Path, blocks=(5.0, 6.0, 7.0), heads=None, channels=None, block_scorer="drop_one",
              head_scorer="head_taylor", channel_scorer="channel_taylor") -> Path:
    heads = heads or {b: [1.0] * 4 for b in range(3)}
    channels = channels or {b: [1.0] * I for b in range(3)}
    scorers = {block_scorer: {"unit": "block", "scores": {"model.layers": list(blocks)}, "extras": {}}}
    if head_scorer:
        scorers[head_scorer] = {"unit": "head", "scores": {f"model.layers.{b}": v for b, v in heads.items()}}
    if channel_scorer:
        scorers[channel_scorer] = {"unit": "channel", "scores": {f"model.layers.{b}": v for b, v in channels.items()}}
    path.write_text(json.dumps({"scorers": scorers}))
    return path


def _random_analysis(path: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    # Loss-unit magnitudes: a block costs about as much as its heads and channels together.
    return _analysis(path, blocks=(torch.rand(3, generator=g) * 50).tolist(),
                     heads={b: (torch.rand(4, generator=g) * 5).tolist() for b in range(3)},
                     channels={b: (torch.rand(I, generator=g) * 0.5).tolist() for b in range(3)})


def test_unit_sizes_match_the_tiny_llama() -> None:
    h = locate_backbone(TINY_MODELS.get("llama")())
    assert h.layouts[0].num_params == BLOCK  # the constants the other tests reason with


def test_cheapest_head_group_and_channels_are_exactly_what_goes(llama_dir: Path, tmp_path: Path, capsys) -> None:
    # Block 1's KV group 0 and block 2's channels 3, 7, 11 cost nothing; everything else costs clearly more
    # per parameter. A budget of exactly their parameters removes exactly them.
    heads = {b: [1.0] * 4 for b in range(3)}
    heads[1] = [0.0, 0.0, 1.0, 1.0]
    channels = {b: [1.0] * I for b in range(3)}
    channels[2] = [0.0 if c in (3, 7, 11) else 1.0 for c in range(I)]
    an = _analysis(tmp_path / "a.json", blocks=(50.0, 60.0, 70.0), heads=heads, channels=channels)
    before = params_by_component(locate_backbone(load_pruned(llama_dir)))["backbone"]
    target = before - (KV_GROUP + 3 * CHANNEL)
    out = tmp_path / "out"
    assert main(["prune", "--model", str(llama_dir), "--out", str(out), "--scores", str(an),
                 "--target-params", str(target), "--budget-units", "all"]) == 0
    printed = capsys.readouterr().out
    assert "block 1: keep 2 query heads [2, 3]" in printed and "block 2: keep 61 MLP channels" in printed
    assert "params removed by kind: vocab 0, blocks 0, heads 1,536, channels 288" in printed
    rep = json.loads((out / "prune.json").read_text())
    plan = rep["plan"]
    assert plan["drop_blocks"] == [] and plan["heads"] == {"1": [2, 3]}
    assert plan["mlp"] == {"2": [c for c in range(I) if c not in (3, 7, 11)]}
    assert plan["notes"]["units_removed"] == {"blocks": [], "heads": {"1": [0, 1]}, "channels": {"2": 3}}
    assert plan["notes"]["budget_params_removed"] == {"vocab": 0, "blocks": 0, "heads": KV_GROUP, "channels": 3 * CHANNEL}
    assert rep["request"]["budget_units"] == "all"
    assert rep["params"]["after"]["backbone"] == target  # analytic expectation, met exactly
    assert rep["widths"] is not None  # per-block widths recorded for load_pruned


@pytest.mark.parametrize("seed,ratio", [(0, 0.05), (1, 0.12), (2, 0.2), (3, 0.3)])
def test_target_is_met_within_one_unit_and_param_count_is_analytic(seed: int, ratio: float, tmp_path: Path) -> None:
    an = _random_analysis(tmp_path / "a.json", seed)
    model = TINY_MODELS.get("llama")()
    h = locate_backbone(model)
    before_all = params_by_component(h)
    plan, before = make_plan(PruneRequest(scores=str(an), ratio=ratio, budget_units="all"), model, h)
    to_remove = int(round(ratio * before["backbone"]))
    removed = sum(plan.notes["budget_params_removed"].values())
    assert to_remove <= removed < to_remove + BLOCK  # never short, and over by less than the largest unit
    result = apply_plan(model, plan, h)
    after = params_by_component(result.handle)
    assert before_all["backbone"] - after["backbone"] == removed
    assert plan.notes["budget_params_removed"]["blocks"] <= BLOCK * len(plan.drop_blocks)


def test_overshoot_is_below_the_last_unit(tmp_path: Path) -> None:
    # Uniform channel costs, heads and blocks dear: only channels go, 96 parameters each, so any target
    # is met with less than one channel of overshoot.
    an = _analysis(tmp_path / "a.json", blocks=(1e6, 1e6, 1e6), heads={b: [1e6] * 4 for b in range(3)})
    model = TINY_MODELS.get("llama")()
    h = locate_backbone(model)
    backbone = params_by_component(h)["backbone"]
    for want in (1, 95, 97, 1000, 5000):
        plan, _ = make_plan(PruneRequest(scores=str(an), target_params=backbone - want, budget_units="all"), model, h)
        removed = plan.notes["budget_params_removed"]["channels"]
        assert want <= removed < want + CHANNEL and removed % CHANNEL == 0
        assert plan.drop_blocks == [] and plan.heads == {}


def test_never_empties_a_block_of_channels_or_heads(tmp_path: Path) -> None:
    # Every channel and head of block 0 is free; the solver takes all but one of each and then moves on.
    an = _analysis(tmp_path / "a.json", blocks=(1e6, 1e6, 1e6),
                   heads={0: [0.0] * 4, 1: [1e3] * 4, 2: [1e3] * 4}, channels={0: [0.0] * I, 1: [1.0] * I, 2: [1.0] * I})
    model = TINY_MODELS.get("llama")()
    h = locate_backbone(model)
    backbone = params_by_component(h)["backbone"]
    want = KV_GROUP + (I - 1) * CHANNEL + 10 * CHANNEL
    plan, _ = make_plan(PruneRequest(scores=str(an), target_params=backbone - want, budget_units="all"), model, h)
    assert len(plan.heads[0]) == 2 and len(plan.mlp[0]) == 1
    assert len(plan.mlp[1]) + len(plan.mlp.get(2, list(range(I)))) == 2 * I - 10
    apply_plan(model, plan, h)  # the cut itself accepts it


@pytest.mark.parametrize("mode", ["kv", "query"])
def test_gqa_rules_hold(mode: str, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(7)
    heads = {b: (torch.rand(4, generator=g) * 0.01).tolist() for b in range(3)}  # heads are the cheap units
    an = _analysis(tmp_path / "a.json", blocks=(1e6, 1e6, 1e6), heads=heads)
    model = TINY_MODELS.get("llama")()
    h = locate_backbone(model)
    backbone = params_by_component(h)["backbone"]
    unit = KV_GROUP if mode == "kv" else QUERY_ROW  # three head units, one per block, meet this budget
    plan, _ = make_plan(PruneRequest(scores=str(an), target_params=backbone - 3 * unit + 100, budget_units="all",
                                     head_mode=mode), model, h)
    assert set(plan.heads) == {0, 1, 2} and plan.mlp == {}
    for b, kept in plan.heads.items():
        kv = kv_heads_for(torch.tensor(kept), 4, 2, "test")  # raises on unequal heads per group
        if mode == "kv":
            assert len(kv) == 1 and kept in ([0, 1], [2, 3])
        else:
            assert len(kv) == 2 and len(kept) == 2  # one query head left in each group
            s = torch.tensor(heads[b]).view(2, 2)
            assert kept == [k * 2 + int(torch.argmax(s[k])) for k in range(2)]  # the better head of each group


def test_blocks_compete_and_reload_is_bit_identical(llama_dir: Path, tmp_path: Path) -> None:
    # Block 1 is nearly free per parameter, its widths dear; heads of block 0 are next. A budget larger than
    # one block removes block 1 and a KV group of block 0.
    heads = {0: [0.1, 0.1, 9.0, 9.0], 1: [9.0] * 4, 2: [9.0] * 4}
    an = _analysis(tmp_path / "a.json", blocks=(100.0, 0.01, 100.0), heads=heads, channels={b: [9.0] * I for b in range(3)})
    src = load_pruned(llama_dir)
    backbone = params_by_component(locate_backbone(src))["backbone"]
    out = tmp_path / "out"
    assert main(["prune", "--model", str(llama_dir), "--out", str(out), "--scores", str(an),
                 "--target-params", str(backbone - BLOCK - 100), "--budget-units", "all"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["plan"]["drop_blocks"] == [1] and rep["plan"]["heads"] == {"0": [2, 3]}
    assert rep["params"]["after"]["backbone"] == backbone - BLOCK - KV_GROUP
    # The same plan applied in memory equals what reloads from disk, bit for bit.
    model = load_pruned(llama_dir)
    h = locate_backbone(model)
    plan, _ = make_plan(PruneRequest(scores=str(an), target_params=backbone - BLOCK - 100, budget_units="all"), model, h)
    cut = apply_plan(model, plan, h).model
    back = load_pruned(out)
    sd_a, sd_b = cut.state_dict(), back.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    ids = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        la, lb = cut(ids).logits, back(ids).logits
    assert la.shape == (2, 7, 96) and torch.isfinite(la).all()
    torch.testing.assert_close(la, lb, rtol=0, atol=0)


@pytest.mark.parametrize("case,needle", [
    ({"head_scorer": None}, "needs head scores in loss units (head_taylor)"),
    ({"head_scorer": "head_magnitude"}, "needs head scores in loss units (head_taylor)"),
    ({"channel_scorer": "channel_magnitude"}, "needs channel scores in loss units (channel_taylor)"),
    ({"block_scorer": "angular"}, "needs block scores in loss units (drop_one/gateprobe)"),
])
def test_bad_scores_are_one_line_and_write_nothing(case: dict, needle: str, llama_dir: Path, tmp_path: Path,
                                                   capsys) -> None:
    an = _analysis(tmp_path / "a.json", **case)
    out = tmp_path / "out"
    assert main(["prune", "--model", str(llama_dir), "--out", str(out), "--scores", str(an), "--ratio", "0.1",
                 "--budget-units", "all"]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("vlatrim:")]  # transformers may draw a load bar
    assert len(err) == 1 and needle in err[0], err
    err = err[0]
    assert "valid scorers: block: drop_one/gateprobe, head: head_taylor, channel: channel_taylor" in err
    assert not out.exists()


def test_bad_requests_are_refused(llama_dir: Path, tmp_path: Path, capsys) -> None:
    an = _analysis(tmp_path / "a.json")
    for extra, needle in ((["--count", "1"], "needs --scores with --ratio or --target-params"),
                          (["--ratio", "0.1", "--heads", "2"], "drop --heads / --mlp-ratio"),
                          (["--ratio", "0.1", "--scorer", "cka"], "--scorer 'cka' is not in loss units")):
        out = tmp_path / "out"
        assert main(["prune", "--model", str(llama_dir), "--out", str(out), "--scores", str(an),
                     "--budget-units", "all", *extra]) == 2
        err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("vlatrim:")]
        assert len(err) == 1 and needle in err[0], err
        assert not out.exists()


@pytest.mark.parametrize("arch", ["qwen2", "phi3", "bert", "gemma"])
def test_other_layouts_cut_to_the_analytic_count_and_forward(arch: str, tmp_path: Path) -> None:
    # Biases (qwen2, bert), fused qkv and gate_up (phi3), an ungated MLP (bert), GeGLU (gemma): the solver's
    # unit sizes must agree with what the surgery actually removes.
    model = TINY_MODELS.get(arch)()
    h = locate_backbone(model)
    g = torch.Generator().manual_seed(3)
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"scorers": {
        "gateprobe": {"unit": "block", "scores": {h.blocks_path: (1e3 + torch.rand(h.num_blocks, generator=g)).tolist()}},
        "head_taylor": {"unit": "head", "scores": {l.path: (torch.rand(l.attention.num_heads, generator=g) * 0.01).tolist()
                                                   for l in h.layouts}},
        "channel_taylor": {"unit": "channel", "scores": {l.path: (torch.rand(l.mlp.intermediate_size, generator=g) * 0.1).tolist()
                                                         for l in h.layouts}},
    }}))
    before = params_by_component(h)["backbone"]
    plan, _ = make_plan(PruneRequest(scores=str(p), ratio=0.15, budget_units="all"), model, h)
    removed = sum(plan.notes["budget_params_removed"].values())
    assert plan.notes["block_scorer"] == "gateprobe" and removed >= round(0.15 * before)
    assert plan.mlp and plan.heads  # width units were chosen, so their sizes are what is checked
    result = apply_plan(model, plan, h)
    assert before - params_by_component(result.handle)["backbone"] == removed
    ids = torch.randint(3, 90, (1, 5), generator=g)
    with torch.no_grad():
        out = result.model(input_ids=ids)
    assert torch.isfinite(out.logits if hasattr(out, "logits") else out.last_hidden_state).all()


def test_unused_vocabulary_goes_first_then_the_rest_of_the_budget(llama_dir: Path, tmp_path: Path) -> None:
    # 96-token vocabulary, untied LM head: every unused token is 2 * 32 parameters.
    an = _analysis(tmp_path / "a.json", blocks=(1e6, 1e6, 1e6), heads={b: [1e6] * 4 for b in range(3)})
    data = json.loads(an.read_text())
    used = list(range(0, 40))
    data["scorers"]["vocabulary"] = {"unit": "token", "scores": {}, "extras": {"used_ids": used}}
    an.write_text(json.dumps(data))
    src = load_pruned(llama_dir)
    backbone = params_by_component(locate_backbone(src))["backbone"]
    vocab_saving = (96 - 40) * 2 * D
    out = tmp_path / "out"
    assert main(["prune", "--model", str(llama_dir), "--out", str(out), "--scores", str(an),
                 "--target-params", str(backbone - vocab_saving - 5 * CHANNEL), "--budget-units", "all"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["plan"]["notes"]["budget_params_removed"] == {"vocab": vocab_saving, "blocks": 0, "heads": 0,
                                                             "channels": 5 * CHANNEL}
    assert rep["params"]["after"]["backbone"] == backbone - vocab_saving - 5 * CHANNEL
    assert rep["vocab"]["after"] == 40

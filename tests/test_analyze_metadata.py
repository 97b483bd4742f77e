"""Scorer metadata (unit, loss_units, preference): declared on the scorer class, recorded by run_scorers
in analysis.json, and read back from the file by prune to choose the default block ranking and the
scorers ``--budget-units all`` accepts. A scorer registered here, not in the library, is honoured."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vlatrim.analyze.base import SCORERS, LossSpec, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.losses import lm_loss
from vlatrim.analyze.run import run_scorers
from vlatrim.errors import VlatrimError
from vlatrim.models.adapters import locate_backbone
from vlatrim.models.adapters.tiny import TINY_MODELS, VOCAB
from vlatrim.prune.analysis_io import LEGACY_METADATA, Analysis
from vlatrim.prune.api import PruneRequest, make_plan

# Block i of a list of N scores N - i: the last block is the least important, in loss units.
REVERSED = [3.0, 2.0, 1.0]


@SCORERS.register("test_reversed")
@dataclass
class Reversed(Scorer):
    """A block scorer declaring itself in loss units and preferred over drop-one (preference -1)."""

    name = "test_reversed"
    unit = "block"
    loss_units = True
    preference = -1

    def score(self, ctx: ScoringContext) -> ScoreResult:
        return ScoreResult({bl.path: torch.arange(len(bl), 0, -1, dtype=torch.float64) for bl in ctx.block_lists()})


NAMES = ["drop_one", "test_reversed", "cka", "head_taylor", "head_magnitude", "channel_taylor"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """analysis.json from run_scorers on a tiny Llama (1 batch of 4 x 8 tokens, next-token loss)."""
    torch.manual_seed(0)
    model = TINY_MODELS.get("llama")().eval()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(3, VOCAB - 3, (4, 8), generator=g)}]
    ctx = ScoringContext(model=model, handle=locate_backbone(model), batches=batches, loss=LossSpec(lm_loss, "nll", 7))
    res = run_scorers(ctx, NAMES)
    p = tmp_path_factory.mktemp("meta") / "analysis.json"
    p.write_text(json.dumps(res))
    return p, json.loads(p.read_text())


def _llama():
    model = TINY_MODELS.get("llama")()
    return model, locate_backbone(model)


def _edit(src: Path, dst: Path, name: str, **changes) -> Path:
    data = json.loads(src.read_text())
    data["scorers"][name].update(changes)
    dst.write_text(json.dumps(data))
    return dst


def test_metadata_round_trips_through_analysis_json(written) -> None:
    p, data = written
    for name in NAMES:
        cls = SCORERS.get(name)
        entry = data["scorers"][name]
        assert {k: entry[k] for k in ("unit", "loss_units", "preference")} == cls.metadata()
    assert data["scorers"]["test_reversed"]["scores"] == {"model.layers": REVERSED}
    assert {n: (e["unit"], e["loss_units"], e["preference"]) for n, e in data["scorers"].items()} == {
        "drop_one": ("block", True, 0), "test_reversed": ("block", True, -1), "cka": ("block", False, 4),
        "head_taylor": ("head", True, 0), "head_magnitude": ("head", False, 1), "channel_taylor": ("channel", True, 0)}
    an = Analysis(str(p))
    assert an.ranked("block") == ["test_reversed", "drop_one", "cka"]
    assert an.ranked("head") == ["head_taylor", "head_magnitude"]


def test_the_builtin_scorers_declare_what_the_legacy_table_assumed() -> None:
    # The compatibility table reads old files exactly as the scorers now describe themselves.
    for name, (unit, loss_units, preference) in LEGACY_METADATA.items():
        assert SCORERS.get(name).metadata() == {"unit": unit, "loss_units": loss_units, "preference": preference}


def test_preference_in_the_file_picks_the_default_block_ranking(written, tmp_path: Path) -> None:
    p, _ = written
    model, h = _llama()
    plan, _ = make_plan(PruneRequest(scores=str(p), count=1), model, h)
    assert plan.notes["block_scorer"] == "test_reversed" and plan.drop_blocks == [2]
    # Prune reads the file, not the registry: the same scorer demoted in the file loses to drop_one.
    demoted = _edit(p, tmp_path / "demoted.json", "test_reversed", preference=10)
    plan, _ = make_plan(PruneRequest(scores=str(demoted), count=1), model, h)
    assert plan.notes["block_scorer"] == "drop_one"


def test_loss_units_in_the_file_drive_the_budget_all_selection(written, tmp_path: Path) -> None:
    p, data = written
    model, h = _llama()
    plan, _ = make_plan(PruneRequest(scores=str(p), ratio=0.2, budget_units="all"), model, h)
    assert plan.notes["block_scorer"] == "test_reversed" and plan.methods == ["budget-all"]
    # cka is not in loss units: refused by name, and the message lists the file's loss-unit scorers first.
    with pytest.raises(VlatrimError) as e:
        make_plan(PruneRequest(scores=str(p), ratio=0.2, budget_units="all", scorer="cka"), model, h)
    assert str(e.value).startswith("--scorer 'cka' is not in loss units; --budget-units all accepts "
                                   "block: test_reversed/drop_one/gateprobe, head: head_taylor, channel: channel_taylor")
    # Declared not in loss units in the file, the test scorer is passed over for drop_one ...
    plain = _edit(p, tmp_path / "plain.json", "test_reversed", loss_units=False)
    plan, _ = make_plan(PruneRequest(scores=str(plain), ratio=0.2, budget_units="all"), model, h)
    assert plan.notes["block_scorer"] == "drop_one"
    # ... and cka declared in loss units is accepted by name.
    cka = _edit(p, tmp_path / "cka.json", "cka", loss_units=True)
    plan, _ = make_plan(PruneRequest(scores=str(cka), ratio=0.2, budget_units="all", scorer="cka"), model, h)
    assert plan.notes["block_scorer"] == "cka"
    # Without head scores in loss units, nothing is planned; the message names what would do.
    no_heads = tmp_path / "no_heads.json"
    no_heads.write_text(json.dumps({"scorers": {n: e for n, e in data["scorers"].items() if n != "head_taylor"}}))
    with pytest.raises(VlatrimError, match=r"needs head scores in loss units \(head_taylor\) but .* has none"):
        make_plan(PruneRequest(scores=str(no_heads), ratio=0.2, budget_units="all"), model, h)
    # A file that declares its only head scorer not in loss units leaves none known for heads.
    demoted = _edit(p, tmp_path / "demoted.json", "head_taylor", loss_units=False)
    with pytest.raises(VlatrimError, match=r"needs head scores in loss units \(none known\) but .*, head: none known,"):
        make_plan(PruneRequest(scores=str(demoted), ratio=0.2, budget_units="all"), model, h)


def test_files_without_metadata_read_through_the_legacy_table(tmp_path: Path) -> None:
    # Written before scorers recorded loss_units / preference: built-in names get their old meaning,
    # unknown names come last (by name) and are not in loss units.
    p = tmp_path / "old.json"
    p.write_text(json.dumps({"scorers": {
        n: {"unit": "block", "scores": {"model.layers": s}}
        for n, s in {"aaa": [0.0, 1.0, 2.0], "cka": [1.0, 0.0, 2.0], "gate_first_order": [2.0, 1.0, 0.0],
                     "block_influence": [2.0, 0.0, 1.0]}.items()}}))
    an = Analysis(str(p))
    assert an.ranked("block") == ["block_influence", "cka", "gate_first_order", "aaa"]
    assert not any(an.info[n].loss_units for n in an.info)
    model, h = _llama()
    plan, _ = make_plan(PruneRequest(scores=str(p), count=1), model, h)
    assert plan.notes["block_scorer"] == "block_influence" and plan.drop_blocks == [1]
    with pytest.raises(VlatrimError, match=r"needs block scores in loss units \(drop_one/gateprobe\)"):
        make_plan(PruneRequest(scores=str(p), ratio=0.2, budget_units="all"), model, h)


@pytest.mark.parametrize("changes,needle", [
    ({"loss_units": True}, "loss_units=True, preference=None"),
    ({"loss_units": "yes", "preference": 0}, "loss_units='yes', preference=0"),
    ({"loss_units": True, "preference": 1.5}, "loss_units=True, preference=1.5"),
])
def test_a_half_or_badly_recorded_entry_is_one_line(changes: dict, needle: str, tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"scorers": {"drop_one": {"unit": "block", "scores": {"model.layers": [1.0] * 3}, **changes}}}))
    with pytest.raises(VlatrimError, match="re-run `vlatrim analyze`") as e:
        Analysis(str(p))
    assert needle in str(e.value) and "scorer 'drop_one'" in str(e.value) and "\n" not in str(e.value)


def test_a_scorer_must_declare_its_metadata() -> None:
    with pytest.raises(TypeError, match="must set class attribute loss_units"):
        class NoLossUnits(Scorer):
            name = "test_no_loss_units"
            unit = "block"
            preference = 0
    with pytest.raises(TypeError, match="must set class attribute preference"):
        class BoolPreference(Scorer):
            name = "test_bool_preference"
            unit = "head"
            loss_units = False
            preference = True

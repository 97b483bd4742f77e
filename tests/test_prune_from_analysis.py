"""analyze -> prune on the reference VLA: the analysis.json that `vlatrim analyze` writes drives
`vlatrim prune` (block ranking, angular span, head / channel scores, vocabulary usage in the budget),
and the pruned VLA reloads and acts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vlatrim.analyze  # noqa: E402,F401
from vlatrim.cli.main import main  # noqa: E402
from vlatrim.data.lerobot import LeRobotWriter, metaworld_features  # noqa: E402
from vlatrim.models import reference  # noqa: E402
from vlatrim.models.adapters import locate_backbone  # noqa: E402
from vlatrim.prune import load_pruned  # noqa: E402

TASKS = ["open the drawer", "press the button", "close the window"]


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("analyze_prune")
    rng = np.random.default_rng(0)
    with LeRobotWriter(root / "ds", metaworld_features(32), fps=80, robot_type="sawyer") as w:
        for task in TASKS + TASKS[:1]:
            n = 6
            w.add_episode({"observation.images.corner": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                           "observation.state": rng.standard_normal((n, 4)).astype(np.float32),
                           "action": rng.uniform(-1, 1, (n, 4)).astype(np.float32),
                           "next.success": np.arange(n) == n - 1}, task)
    torch.manual_seed(0)
    vla = reference.ReferenceVLA.from_backbone(reference.VLAConfig(image_size=32, conv_channels=(8, 16)), "tiny-llama")
    stats = {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4}
    vla.set_normalization({"observation.state": stats, "action": stats})
    vla.save_pretrained(root / "vla")
    assert main(["analyze", "--model", str(root / "vla"), "--data", str(root / "ds"), "--out", str(root / "an"),
                 "--batches", "1", "--batch-size", "4", "--pathways", "language", "--scorers", "drop_one", "angular",
                 "head_magnitude", "channel_magnitude", "vocabulary"]) == 0
    analysis = json.loads((root / "an" / "analysis.json").read_text())
    return root / "vla", root / "an" / "analysis.json", analysis


def _acts(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 255, (3, 32, 32, 3), dtype=torch.uint8, generator=g)
    return model.predict_action(img, torch.randn(3, 4, generator=g), TASKS)


def test_count_follows_the_scorer_and_span_follows_the_angular_matrix(analyzed, tmp_path: Path) -> None:
    vla_dir, an_path, an = analyzed
    drop_one = an["scorers"]["drop_one"]["scores"]["backbone.layers"]
    out = tmp_path / "count"
    assert main(["prune", "--model", str(vla_dir), "--out", str(out), "--scores", str(an_path), "--count", "1"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    assert rep["plan"]["drop_blocks"] == [int(np.argmin(drop_one))]
    assert rep["plan"]["notes"]["block_scorer"] == "drop_one"
    spans = an["scorers"]["angular"]["extras"]["spans"]["backbone.layers"]
    out2 = tmp_path / "span"
    assert main(["prune", "--model", str(vla_dir), "--out", str(out2), "--scores", str(an_path), "--span", "1"]) == 0
    assert json.loads((out2 / "prune.json").read_text())["plan"]["drop_blocks"] == [int(np.argmin(spans[0]))]
    assert _acts(load_pruned(out2)).shape == (3, 4, 4)


def test_ratio_spends_unused_vocabulary_first_and_keeps_actions(analyzed, tmp_path: Path) -> None:
    vla_dir, an_path, an = analyzed
    out = tmp_path / "ratio"
    # The tiny backbone's 30522-token embedding is almost all of it; the task uses a handful of tokens,
    # so half the backbone goes with the vocabulary alone and no block has to.
    assert main(["prune", "--model", str(vla_dir), "--out", str(out), "--scores", str(an_path), "--ratio", "0.5"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    used = an["scorers"]["vocabulary"]["extras"]["used_ids"]
    assert set(used) <= set(rep["plan"]["vocab"]) and rep["plan"]["drop_blocks"] == []
    assert rep["params"]["backbone_ratio_removed"] >= 0.5 and rep["vocab"]["tokenizer"] == "rewritten"
    ref = _acts(reference.ReferenceVLA.from_pretrained(vla_dir))
    torch.testing.assert_close(_acts(reference.ReferenceVLA.from_pretrained(out)), ref, rtol=0, atol=0)


def test_head_and_channel_scores_from_the_analysis(analyzed, tmp_path: Path) -> None:
    vla_dir, an_path, an = analyzed
    out = tmp_path / "width"
    assert main(["prune", "--model", str(vla_dir), "--out", str(out), "--scores", str(an_path), "--heads", "2",
                 "--head-mode", "kv", "--mlp-ratio", "0.5"]) == 0
    rep = json.loads((out / "prune.json").read_text())
    for b in range(2):
        hs = an["scorers"]["head_magnitude"]["scores"][f"backbone.layers.{b}"]
        best_group = int(np.argmax([hs[0] + hs[1], hs[2] + hs[3]]))  # 4 heads, 2 KV groups of 2
        assert rep["plan"]["heads"][str(b)] == [2 * best_group, 2 * best_group + 1]
        cs = np.asarray(an["scorers"]["channel_magnitude"]["scores"][f"backbone.layers.{b}"])
        assert sorted(rep["plan"]["mlp"][str(b)]) == sorted(np.argsort(-cs, kind="stable")[: len(cs) // 2].tolist())
    pruned = reference.ReferenceVLA.from_pretrained(out)
    assert [l.attention.num_heads for l in locate_backbone(pruned).layouts] == [2, 2]

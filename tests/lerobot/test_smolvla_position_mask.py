"""SmolVLA's position mask: which positions of the VLM's prefix sequence are real, laid out as LeRobot's
``embed_prefix`` lays them out (image tokens per camera, language tokens, the state token, padding up to
``prefix_length``), so block influence / angular distance / CKA average over real positions only."""

from __future__ import annotations

import json

import pytest
import torch

from vlatrim.cli.main import main
from vlatrim.families import family_of
from vlatrim.families.lerobot_smolvla import (
    EXPERT_PATH,
    LANGUAGE_PATH,
    TOKEN_MASK_KEY,
    TOKENS_KEY,
    VISION_PATH,
    bridge_block_hooks,
    lerobot_available,
)

pytestmark = pytest.mark.skipif(not lerobot_available(),
                                reason="needs lerobot 0.4.4 (Python 3.11, transformers 4.57): run `make test-lerobot`")
IMAGE_TOKENS = 16  # tiny VLM: 64 px / patch 8 = 64 patches, pixel-shuffled by scale_factor 2 -> 16
# Instructions of different token lengths, so a batch pads the shorter ones.
TASKS = ["press", "close the drawer", "pick up the red block and put it in the box"]


@pytest.fixture(scope="module")
def padded_dataset(tmp_path_factory):
    """3 episodes x 10 frames, one per instruction above (Meta-World-shaped, like the shared fixture)."""
    import numpy as np

    from vlatrim.data.lerobot import LeRobotWriter, metaworld_features

    root = tmp_path_factory.mktemp("padded") / "ds"
    w = LeRobotWriter(root, metaworld_features(32), fps=10)
    rng = np.random.default_rng(1)
    for task in TASKS:
        w.add_episode({"observation.images.corner": rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8),
                       "observation.state": rng.normal(size=(10, 4)).astype(np.float32),
                       "action": rng.uniform(-1, 1, size=(10, 4)).astype(np.float32),
                       "next.success": np.zeros(10, dtype=bool)}, task)
    w.close()
    return root


def _lerobot_pad_masks(policy, batch) -> torch.Tensor:
    """LeRobot's own prefix padding mask for ``batch`` (what embed_prefix returns)."""
    images, img_masks = policy.prepare_images(batch)
    state = policy.prepare_state(batch)
    with torch.no_grad():
        _, pad_masks, _ = policy.model.embed_prefix(images, img_masks, batch[TOKENS_KEY], batch[TOKEN_MASK_KEY],
                                                    state=state)
    return pad_masks


def test_the_mask_is_lerobots_prefix_mask_and_counts_the_real_positions(policy_dir, padded_dataset):
    fam = family_of(policy_dir)
    model = fam.load(policy_dir)
    batch = fam.dataset(model, padded_dataset, "all").data.__getitems__([0, 5, 10, 15, 20, 25])
    lang = batch[TOKEN_MASK_KEY].bool()
    assert not lang.all(), "the batch should mix instructions of different lengths (language padding)"
    mask = fam.position_mask(model, batch)
    torch.testing.assert_close(mask, _lerobot_pad_masks(model, batch), rtol=0, atol=0)
    # By hand: one camera's 16 image tokens, the instruction's real tokens, one state token.
    assert mask.sum(1).tolist() == (IMAGE_TOKENS + lang.sum(1) + 1).tolist()
    assert mask.shape[1] == IMAGE_TOKENS + lang.shape[1] + 1
    # Order: images first, then language (its padding where the tokenizer put it), then the state token.
    assert mask[:, :IMAGE_TOKENS].all() and torch.equal(mask[:, IMAGE_TOKENS:-1], lang) and mask[:, -1].all()


@pytest.mark.parametrize("overrides", [
    {"add_image_special_tokens": True},
    {"prefix_length": 48},
    {"empty_cameras": 1, "add_image_special_tokens": True, "prefix_length": 80},
])
def test_other_prefix_layouts_match_lerobot(make_config, overrides):
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from vlatrim.families.lerobot_smolvla import LeRobotSmolVLAFamily

    torch.manual_seed(0)
    policy = SmolVLAPolicy(make_config(**overrides)).eval()
    B, L = 3, 7
    lang = torch.ones(B, L, dtype=torch.long)
    lang[0, 5:] = 0
    lang[2, 2:] = 0
    batch = {"observation.images.corner": torch.rand(B, 3, 32, 32), "observation.state": torch.randn(B, 4),
             TOKENS_KEY: torch.randint(0, 384, (B, L)), TOKEN_MASK_KEY: lang.bool()}
    mask = LeRobotSmolVLAFamily().position_mask(policy, batch)
    torch.testing.assert_close(mask, _lerobot_pad_masks(policy, batch), rtol=0, atol=0)
    # By hand: per camera its special tokens (real: <fake_token_around_image><global-img> before the image,
    # <fake_token_around_image> after), its image tokens (real unless the camera is blank), then the
    # instruction's real tokens and one state token.
    special = 3 if overrides.get("add_image_special_tokens") else 0
    cams = 1 + overrides.get("empty_cameras", 0)
    assert mask.sum(1).tolist() == [cams * special + IMAGE_TOKENS + n + 1 for n in lang.sum(1).tolist()]
    if "prefix_length" in overrides:
        assert mask.shape[1] == overrides["prefix_length"] and not mask[:, -1].any()
    # The mask's shape is the shape of the hidden states the VLM text layers see.
    bridge_block_hooks(policy)
    seen = []
    handle = policy.get_submodule(LANGUAGE_PATH)[0].register_forward_hook(lambda m, a, o: seen.append(o.shape[:-1]))
    with torch.no_grad():
        policy.model.forward(*policy.prepare_images(batch), batch[TOKENS_KEY], batch[TOKEN_MASK_KEY],
                             policy.prepare_state(batch), torch.zeros(B, 8, 32))
    handle.remove()
    assert seen == [mask.shape]


def test_analysis_json_records_that_language_padding_was_masked(policy_dir, padded_dataset, tmp_path):
    out = tmp_path / "an"
    assert main(["analyze", "--model", str(policy_dir), "--data", str(padded_dataset), "--out", str(out), "--batches", "2",
                 "--batch-size", "6", "--pathways", "language", "vision", "action",
                 "--scorers", "block_influence", "angular", "cka"]) == 0
    a = json.loads((out / "analysis.json").read_text())
    for name in ("block_influence", "angular", "cka"):
        assert a["scorers"][name]["extras"]["padding_masked"] == {LANGUAGE_PATH: True, VISION_PATH: False,
                                                                  EXPERT_PATH: False}, name

"""A SmolVLA-architecture policy built from scratch (``vlatrim.models.smolvla``): an ordinary LeRobot SmolVLA
directory, every pathway trainable, its tokenizer trained on the dataset's tasks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vlatrim.cli.main import main
from vlatrim.errors import VlatrimError
from vlatrim.families import family_of
from vlatrim.families.lerobot_smolvla import LANGUAGE_PATH, VISION_PATH, lerobot_available

pytestmark = pytest.mark.skipif(not lerobot_available(),
                                reason="needs lerobot 0.4.4 (Python 3.11, transformers 4.57): run `make test-lerobot`")


def test_a_new_smolvla_is_a_lerobot_policy_that_trains_every_pathway(dataset, tmp_path, tiny_size):
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from vlatrim.models.smolvla import new_smolvla

    out = new_smolvla(tmp_path / "new", dataset, tiny_size(), chunk_size=8, n_action_steps=8, tokenizer_max_length=16,
                      num_steps=3)
    cfg = json.loads((out / "config.json").read_text())
    vlm = str((out / "vlm").resolve())
    assert cfg["vlm_model_name"] == vlm and cfg["load_vlm_weights"] is False
    assert (cfg["train_expert_only"], cfg["freeze_vision_encoder"], cfg["num_vlm_layers"]) == (False, False, 4)
    assert cfg["input_features"]["observation.images.corner"]["shape"] == [3, 32, 32]
    pre_cfg = json.loads((out / "policy_preprocessor.json").read_text())
    assert [st["config"]["tokenizer_name"] for st in pre_cfg["steps"] if "tokenizer_name" in st.get("config", {})] == [vlm]
    policy = SmolVLAPolicy.from_pretrained(str(out), strict=True)  # LeRobot alone
    pre, _ = make_pre_post_processors(policy.config, pretrained_path=str(out))
    tok = policy.model.vlm_with_expert.processor.tokenizer
    assert len(tok("close the drawer\n").input_ids) <= 4  # the BPE learned the task texts (17 bytes)
    assert all(p.requires_grad for n, p in policy.named_parameters() if n.startswith(VISION_PATH))
    # vlatrim's full recovery trains every pathway of it: vision encoder, VLM text layers, expert.
    rec = tmp_path / "rec"
    assert main(["recover", "--model", str(out), "--data", str(dataset), "--out", str(rec), "--method", "full",
                 "--steps", "2", "--batch-size", "4", "--checkpoint-every", "2", "--lr", "1e-3"]) == 0
    after = family_of(rec).load(rec).state_dict()
    changed = {k for k, v in policy.state_dict().items() if not torch.equal(v, after[k])}
    for prefix in (VISION_PATH, LANGUAGE_PATH, "model.vlm_with_expert.lm_expert.layers"):
        assert any(k.startswith(prefix) for k in changed), prefix
    # The recovered policy carries its own copy of the VLM (config, processor, tokenizer): LeRobot loads it,
    # processors included, with the new policy's directory gone.
    own = str((rec / "vlm").resolve())
    assert json.loads((rec / "config.json").read_text())["vlm_model_name"] == own
    shutil.rmtree(out)
    again = SmolVLAPolicy.from_pretrained(str(rec), strict=True)
    make_pre_post_processors(again.config, pretrained_path=str(rec))
    assert all(torch.equal(v, after[k]) for k, v in again.state_dict().items())


@pytest.mark.parametrize("size, message", [
    (dict(patch_size=6), "image_size 64 / patch_size 6 must be a whole multiple of scale_factor 2"),
    (dict(hidden_size=96, num_attention_heads=32), r"head_dim 3 \(hidden_size / num_attention_heads\) must be even"),
])
def test_new_smolvla_refuses_sizes_it_cannot_build(dataset, tmp_path, tiny_size, size, message):
    from vlatrim.models.smolvla import new_smolvla

    with pytest.raises(VlatrimError, match=message):
        new_smolvla(tmp_path / "bad", dataset, tiny_size(**size))
    assert not (tmp_path / "bad").exists()

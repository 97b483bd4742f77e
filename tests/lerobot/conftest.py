"""Fixtures for the LeRobot SmolVLA tests: a tiny SmolVLM built offline, a tiny SmolVLA policy saved by
LeRobot itself (processors included) and a tiny LeRobot v3 dataset.

These tests need lerobot (``make test-lerobot`` builds ``.venv-lerobot`` with it); without it every test
module here is skipped (its ``pytestmark`` says why), so the default suite still collects them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

IMAGE_SIZE = 32  # dataset / camera side; SmolVLA pads it to the VLM's 64 px
TASKS = ["close the drawer", "open the drawer", "press the button"]


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=384, vision_hidden_size=32, vision_intermediate_size=64, vision_layers=2, vision_heads=2,
            image_size=64, patch_size=8, scale_factor=2)


def build_tiny_vlm(out: Path) -> Path:
    """A tiny SmolVLM (Llama text model: hidden 64, 4 layers, 4 heads / 2 KV heads, head_dim 16; SigLIP-like
    vision: hidden 32, 2 layers, 64 px, patch 8) with a byte-level BPE tokenizer trained here and a
    SmolVLMProcessor, saved to ``out`` (no weights: SmolVLA builds the VLM from this config)."""
    from vlatrim.models.smolvla import SmolVLMSize, build_smolvlm

    return build_smolvlm(out, TASKS + ["pick up the red block and put it in the box",
                                       "the robot moves its gripper to the left"], SmolVLMSize(**TINY))


@pytest.fixture(scope="session")
def vlm_dir(tmp_path_factory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-smolvlm")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """6 episodes x 10 frames of random Meta-World-shaped data (corner camera, 4-d state and action)."""
    from vlatrim.data.lerobot import LeRobotWriter, metaworld_features

    root = tmp_path_factory.mktemp("ds") / "ds"
    w = LeRobotWriter(root, metaworld_features(IMAGE_SIZE), fps=10)
    rng = np.random.default_rng(0)
    for e in range(6):
        T = 10
        w.add_episode({"observation.images.corner": rng.integers(0, 255, (T, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
                       "observation.state": rng.normal(size=(T, 4)).astype(np.float32),
                       "action": rng.uniform(-1, 1, size=(T, 4)).astype(np.float32),
                       "next.success": np.zeros(T, dtype=bool)}, TASKS[e % 3])
    w.close()
    return root


def smolvla_config(vlm_dir: Path, **overrides):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    kw = dict(vlm_model_name=str(vlm_dir), load_vlm_weights=False, num_vlm_layers=4, self_attn_every_n_layers=2,
              chunk_size=8, n_action_steps=8, resize_imgs_with_padding=(64, 64), tokenizer_max_length=16,
              num_steps=3, device="cpu",
              input_features={"observation.images.corner": PolicyFeature(FeatureType.VISUAL, (3, IMAGE_SIZE, IMAGE_SIZE)),
                              "observation.state": PolicyFeature(FeatureType.STATE, (4,))},
              output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))})
    kw.update(overrides)
    return SmolVLAConfig(**kw)


def save_smolvla(out: Path, vlm_dir: Path, dataset: Path, seed: int = 0, **overrides) -> Path:
    """A random tiny SmolVLA saved by LeRobot: policy, then its pre/post-processors with the dataset's stats."""
    import torch
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from vlatrim.data.frames import read_demo_frames

    torch.manual_seed(seed)
    cfg = smolvla_config(vlm_dir, **overrides)
    policy = SmolVLAPolicy(cfg)
    stats = {k: {s: torch.tensor(v, dtype=torch.float32) for s, v in d.items()}
             for k, d in read_demo_frames(dataset).stats().items()}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def policy_dir(vlm_dir, dataset, tmp_path_factory) -> Path:
    return save_smolvla(tmp_path_factory.mktemp("policy") / "smolvla", vlm_dir, dataset)


@pytest.fixture(scope="session")
def make_config(vlm_dir):
    """``make_config(**overrides)``: a SmolVLAConfig for the tiny VLM (for policies built in memory)."""
    return lambda **overrides: smolvla_config(vlm_dir, **overrides)


@pytest.fixture(scope="session")
def make_policy(vlm_dir, dataset):
    """``make_policy(out, **overrides)``: a random tiny SmolVLA saved by LeRobot to ``out`` (config overrides)."""
    return lambda out, **overrides: save_smolvla(out, vlm_dir, dataset, **overrides)


@pytest.fixture(scope="session")
def tiny_size():
    """``tiny_size(**changes)``: the tiny SmolVLM's ``SmolVLMSize``, with changes."""
    from vlatrim.models.smolvla import SmolVLMSize

    return lambda **changes: SmolVLMSize(**{**TINY, **changes})

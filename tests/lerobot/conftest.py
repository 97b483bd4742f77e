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


def build_tiny_vlm(out: Path) -> Path:
    """A tiny SmolVLM (Llama text model: hidden 64, 4 layers, 4 heads / 2 KV heads, head_dim 16, vocab 384;
    SigLIP-like vision: hidden 32, 2 layers, 64 px, patch 8) with a byte-level BPE tokenizer trained here
    and a SmolVLMProcessor, saved to ``out`` (no weights: SmolVLA builds the VLM from this config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        LlamaConfig,
        PreTrainedTokenizerFast,
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )
    from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig

    specials = ["<pad>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
                "<global-img>", "<row_1_col_1>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [t + "\n" for t in TASKS] * 20 + ["pick up the red block and put it in the box\n",
                                               "the robot moves its gripper to the left\n"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=384, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<|im_start|>", eos_token="<end_of_utterance>",
        unk_token=None, additional_special_tokens=specials[3:],
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                              "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    out.mkdir(parents=True, exist_ok=True)
    text = LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0,
                       max_position_embeddings=256)
    vision = SmolVLMVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=64, patch_size=8)
    cfg = SmolVLMConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), scale_factor=2,
                        image_token_id=fast.convert_tokens_to_ids("<image>"), pad_token_id=0)
    cfg.save_pretrained(out)
    image_proc = SmolVLMImageProcessor(do_image_splitting=False, size={"longest_edge": 64},
                                       max_image_size={"longest_edge": 64})
    video_proc = SmolVLMVideoProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 64})
    SmolVLMProcessor(image_processor=image_proc, tokenizer=fast, video_processor=video_proc,
                     image_seq_len=16).save_pretrained(out)
    return out


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

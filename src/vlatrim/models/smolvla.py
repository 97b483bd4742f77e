"""A SmolVLA-architecture policy built from scratch, offline.

LeRobot's SmolVLA starts from a pretrained SmolVLM2, which vlatrim cannot download. ``new_smolvla`` builds
the same architecture at a size one can train from scratch on one's own LeRobot v3 dataset:

- ``build_smolvlm``: a SmolVLM config (Llama text model, SigLIP vision encoder, pixel-shuffle connector)
  of the size given by ``SmolVLMSize``, a byte-level BPE tokenizer trained on the dataset's task texts
  (with SmolVLM's special tokens) and a ``SmolVLMProcessor``, saved to a directory without weights: the
  ``vlm_model_name`` LeRobot builds the VLM from (``load_vlm_weights`` false);
- ``new_smolvla``: a LeRobot ``SmolVLAPolicy`` on that VLM, its features read from the dataset (cameras,
  state and action dims), its normalisers from the dataset's statistics, every pathway trainable
  (``train_expert_only`` and ``freeze_vision_encoder`` off), saved by LeRobot itself with its processors.

The result is an ordinary LeRobot SmolVLA directory: ``vlatrim recover --method full`` trains it with the
policy's own flow-matching loss, and every verb of the ``lerobot_smolvla`` family takes it. Needs lerobot
(``pip install vlatrim[lerobot]``); imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlatrim.errors import VlatrimError

VLM_DIR = "vlm"  # beside a policy: the config (and processor) of the VLM LeRobot must build for it
VLM_MARK = "vlatrim_vlm.json"  # in that directory: it belongs to the policy beside it (its source, its shape)
# SmolVLM's special tokens, which its processor and LeRobot's prefix read by name.
SPECIAL_TOKENS = ("<pad>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
                  "<global-img>", "<row_1_col_1>")


@dataclass(frozen=True)
class SmolVLMSize:
    """The shape of a from-scratch SmolVLM (text: Llama; vision: SigLIP; connector: pixel shuffle).

    The image is cut into ``(image_size / patch_size)^2`` patches and the connector merges
    ``scale_factor^2`` of them into one token, so ``image_size / patch_size`` must be a multiple of
    ``scale_factor``. ``vocab_size`` is the BPE vocabulary trained on the dataset's texts.
    """

    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 8
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 512
    vision_hidden_size: int = 192
    vision_intermediate_size: int = 576
    vision_layers: int = 6
    vision_heads: int = 3
    image_size: int = 96
    patch_size: int = 12
    scale_factor: int = 2

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor ** 2

    def check(self) -> None:
        side = self.image_size // self.patch_size
        if self.image_size % self.patch_size or side % self.scale_factor:
            raise VlatrimError(f"SmolVLM size: image_size {self.image_size} / patch_size {self.patch_size} must be a "
                               f"whole multiple of scale_factor {self.scale_factor}")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise VlatrimError(f"SmolVLM size: hidden_size {self.hidden_size}, num_attention_heads "
                               f"{self.num_attention_heads} and num_key_value_heads {self.num_key_value_heads} must "
                               "divide one another")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise VlatrimError(f"SmolVLM size: head_dim {self.hidden_size // self.num_attention_heads} (hidden_size / "
                               "num_attention_heads) must be even; SmolVLA's rotary embedding splits each head in half")
        if self.vision_hidden_size % self.vision_heads:
            raise VlatrimError(f"SmolVLM size: vision_hidden_size {self.vision_hidden_size} is not a multiple of "
                               f"vision_heads {self.vision_heads}")


def build_smolvlm(out: str | Path, texts: Sequence[str], size: SmolVLMSize = SmolVLMSize()) -> Path:
    """Write a from-scratch SmolVLM's config, tokenizer and processor (no weights) to ``out``.

    The tokenizer is a byte-level BPE trained on ``texts`` (each with the newline LeRobot appends), so any
    instruction tokenizes, and the task texts take few tokens.
    """
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

    size.check()
    if not texts:
        raise VlatrimError("build_smolvlm: no texts to train the tokenizer on")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([t + "\n" for t in texts] * 8,
                            trainers.BpeTrainer(vocab_size=size.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<|im_start|>", eos_token="<end_of_utterance>",
        unk_token=None, additional_special_tokens=list(SPECIAL_TOKENS[3:]),
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                              "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = LlamaConfig(vocab_size=max(size.vocab_size, len(fast)), hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
                       num_hidden_layers=size.num_hidden_layers, num_attention_heads=size.num_attention_heads,
                       num_key_value_heads=size.num_key_value_heads,
                       head_dim=size.hidden_size // size.num_attention_heads, pad_token_id=0,
                       max_position_embeddings=512)
    vision = SmolVLMVisionConfig(hidden_size=size.vision_hidden_size, intermediate_size=size.vision_intermediate_size,
                                 num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
                                 image_size=size.image_size, patch_size=size.patch_size)
    cfg = SmolVLMConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), scale_factor=size.scale_factor,
                        image_token_id=fast.convert_tokens_to_ids("<image>"), pad_token_id=0)
    cfg.save_pretrained(out)
    edge = {"longest_edge": size.image_size}
    SmolVLMProcessor(image_processor=SmolVLMImageProcessor(do_image_splitting=False, size=edge, max_image_size=edge),
                     tokenizer=fast, video_processor=SmolVLMVideoProcessor(size=edge, max_image_size=edge),
                     image_seq_len=size.image_tokens).save_pretrained(out)
    return out


def smolvla_features(data: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """SmolVLA input / output features of a LeRobot v3 dataset: its cameras, ``observation.state`` and
    ``action``, with their shapes (images channel-first)."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    from vlatrim.data.lerobot import LeRobotDataset

    feats = LeRobotDataset(Path(data)).features
    inputs: dict[str, Any] = {}
    for key, f in feats.items():
        if key.startswith("observation.images."):
            h, w, c = f["shape"]
            inputs[key] = PolicyFeature(FeatureType.VISUAL, (int(c), int(h), int(w)))
    if not inputs:
        raise VlatrimError(f"dataset {str(data)!r} has no camera (observation.images.*) for a SmolVLA policy")
    outputs: dict[str, Any] = {}
    for key, kind, table in (("observation.state", FeatureType.STATE, inputs),
                             ("action", FeatureType.ACTION, outputs)):
        if key not in feats:
            raise VlatrimError(f"dataset {str(data)!r} has no {key}, which a SmolVLA policy needs")
        table[key] = PolicyFeature(kind, tuple(int(d) for d in feats[key]["shape"]))
    return inputs, outputs


def new_smolvla(out: str | Path, data: str | Path, size: SmolVLMSize = SmolVLMSize(), seed: int = 0,
                **config: Any) -> Path:
    """A randomly initialised SmolVLA-architecture policy for ``data``, saved by LeRobot to ``out``.

    ``out/vlm`` holds the SmolVLM ``build_smolvlm`` writes (tokenizer trained on the dataset's task texts);
    the policy's ``vlm_model_name`` is its absolute path. ``config`` overrides ``SmolVLAConfig`` fields; the
    defaults train every pathway (``train_expert_only`` / ``freeze_vision_encoder`` false), pad images to
    ``size.image_size`` and keep the VLM's every layer (``num_vlm_layers``).

    Returns:
        ``out``, a LeRobot SmolVLA policy directory (config.json, model.safetensors, processors).
    """
    import torch
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from vlatrim.data.frames import read_demo_frames
    from vlatrim.utils.io import atomic_dir, write_json_atomic

    out = Path(out)
    frames = read_demo_frames(data)
    inputs, outputs = smolvla_features(data)
    texts = sorted(set(frames.instructions.values()))
    with atomic_dir(out) as tmp:
        vlm = build_smolvlm(tmp / VLM_DIR, texts, size)
        kw: dict[str, Any] = dict(
            vlm_model_name=str(vlm), load_vlm_weights=False, num_vlm_layers=size.num_hidden_layers,
            train_expert_only=False, freeze_vision_encoder=False,
            resize_imgs_with_padding=(size.image_size, size.image_size), device="cpu",
            input_features=inputs, output_features=outputs)
        kw.update(config)
        torch.manual_seed(seed)
        cfg = SmolVLAConfig(**kw)
        policy = SmolVLAPolicy(cfg)
        stats = {k: {s: torch.tensor(v, dtype=torch.float32) for s, v in d.items()} for k, d in frames.stats().items()}
        pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
        # Name the VLM where it will be once the directory is in place (the tokenizer step saves its name).
        final = str((out / VLM_DIR).resolve())
        cfg.vlm_model_name = final
        for step in pre.steps:
            if getattr(step, "tokenizer_name", None) == str(vlm):
                step.tokenizer_name = final
        policy.save_pretrained(tmp)
        pre.save_pretrained(tmp)
        post.save_pretrained(tmp)
        # Mark vlm/ as this policy's own: every checkpoint vlatrim writes from it keeps its own copy.
        write_json_atomic(tmp / VLM_DIR / VLM_MARK, {"source": "vlatrim.models.smolvla.new_smolvla", "shape": {
            "num_attention_heads": size.num_attention_heads, "num_key_value_heads": size.num_key_value_heads,
            "intermediate_size": size.intermediate_size, "vision_num_hidden_layers": size.vision_layers}})
        write_json_atomic(tmp / "vlatrim_new.json", {"size": asdict(size), "seed": seed, "dataset": str(data),
                                                     "config_overrides": {k: v for k, v in config.items()
                                                                          if isinstance(v, (int, float, str, bool))}})
    return out


__all__ = ["SmolVLMSize", "build_smolvlm", "new_smolvla", "smolvla_features", "SPECIAL_TOKENS", "VLM_DIR", "VLM_MARK"]

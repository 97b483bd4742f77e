"""Tiny random-weight instances of every supported architecture, built offline from configs.

Used by the tests of every package that goes through the model contract (adapters, scorers, surgery):
one contract suite runs over ``TINY_MODELS``. Sizes are chosen so each dimension is distinct
(hidden 32, 4 heads, 2 KV heads, head dim 8 or 16, MLP 48 or 64, vocabulary 96), which makes a wrong
axis show up as a wrong number.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers as tf
from torch import nn

from vlatrim.registry import Registry

TINY_MODELS: Registry[Callable[[], nn.Module]] = Registry("tiny architecture")

VOCAB = 96
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_VISION = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, image_size=16,
               patch_size=8)


def _build(cls: type, cfg: object, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls(cfg).eval()


def _text(**kw: object) -> dict:
    d = dict(_TEXT)
    d.update(kw)
    return d


@TINY_MODELS.register("llama")
def llama() -> nn.Module:
    return _build(tf.LlamaForCausalLM, tf.LlamaConfig(**_text()))


@TINY_MODELS.register("mistral")
def mistral() -> nn.Module:
    return _build(tf.MistralForCausalLM, tf.MistralConfig(**_text(intermediate_size=48)))


@TINY_MODELS.register("qwen2")
def qwen2() -> nn.Module:
    return _build(tf.Qwen2ForCausalLM, tf.Qwen2Config(**_text()))


@TINY_MODELS.register("qwen3")
def qwen3() -> nn.Module:
    # Qwen3 sets head_dim explicitly; 16 * 4 heads = 64 != hidden 32, so q/o are not square.
    return _build(tf.Qwen3ForCausalLM, tf.Qwen3Config(**_text(head_dim=16)))


@TINY_MODELS.register("gemma")
def gemma() -> nn.Module:
    return _build(tf.GemmaForCausalLM, tf.GemmaConfig(**_text(head_dim=16)))


@TINY_MODELS.register("gemma2")
def gemma2() -> nn.Module:
    return _build(tf.Gemma2ForCausalLM, tf.Gemma2Config(**_text(head_dim=8)))


@TINY_MODELS.register("gemma3_text")
def gemma3_text() -> nn.Module:
    return _build(tf.Gemma3ForCausalLM, tf.Gemma3TextConfig(**_text(head_dim=8, sliding_window=16)))


@TINY_MODELS.register("phi3")
def phi3() -> nn.Module:
    return _build(tf.Phi3ForCausalLM, tf.Phi3Config(**_text()))


@TINY_MODELS.register("bert")
def bert() -> nn.Module:
    cfg = tf.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                        vocab_size=VOCAB, max_position_embeddings=64)
    return _build(tf.BertModel, cfg)


@TINY_MODELS.register("llava")
def llava() -> nn.Module:
    cfg = tf.LlavaConfig(vision_config=dict(model_type="clip_vision_model", **_VISION),
                         text_config=dict(model_type="llama", **_text()), image_token_index=VOCAB - 1)
    return _build(tf.LlavaForConditionalGeneration, cfg)


@TINY_MODELS.register("paligemma")
def paligemma() -> nn.Module:
    cfg = tf.PaliGemmaConfig(vision_config=dict(model_type="siglip_vision_model", **_VISION),
                             text_config=dict(model_type="gemma", **_text(head_dim=16)),
                             image_token_index=VOCAB - 1, projection_dim=32)
    return _build(tf.PaliGemmaForConditionalGeneration, cfg)


@TINY_MODELS.register("idefics3")
def idefics3() -> nn.Module:
    cfg = tf.Idefics3Config(vision_config=dict(_VISION), text_config=dict(model_type="llama", **_text()),
                            image_token_id=VOCAB - 1, scale_factor=2)
    return _build(tf.Idefics3ForConditionalGeneration, cfg)


@TINY_MODELS.register("qwen2_vl")
def qwen2_vl() -> nn.Module:
    cfg = tf.Qwen2VLConfig(
        vision_config=dict(depth=2, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=4,
                           spatial_merge_size=2, in_chans=3),
        text_config=dict(model_type="qwen2_vl_text", rope_scaling=dict(type="mrope", mrope_section=[1, 1, 2]),
                         **_text()),
        image_token_id=VOCAB - 1, video_token_id=VOCAB - 2)
    return _build(tf.Qwen2VLForConditionalGeneration, cfg)

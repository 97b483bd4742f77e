"""One contract suite over every supported architecture x pruning method.

Every architecture comes from ``vlatrim.models.adapters.tiny`` (tiny random configs of the real
transformers classes, built offline); every method is a selector from ``vlatrim.prune.methods`` whose
plan goes through ``apply_plan``. For each pair: the pruned model runs; its parameter count equals the
analytic expectation; cutting parts that were first made exact no-ops leaves the outputs unchanged;
save -> reload is bit-identical. Per architecture: ratio 0 is an exact identity, and decoders still
generate with a KV cache after depth pruning.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from vlatrim.models.adapters import locate_backbone
from vlatrim.models.adapters.tiny import TINY_MODELS, VOCAB
from vlatrim.models.params import count_params
from vlatrim.prune import PrunePlan, apply_plan, load_pruned, save_pruned
from vlatrim.prune.methods.angular_span import angular_span
from vlatrim.prune.methods.block_scores import by_scores
from vlatrim.prune.methods.drop_blocks import drop_blocks
from vlatrim.prune.methods.heads import heads
from vlatrim.prune.methods.keep_first import keep_first
from vlatrim.prune.methods.mlp import mlp
from vlatrim.prune.methods.vocab import vocab

ARCHS = TINY_MODELS.names()


@functools.cache
def _built(arch: str) -> nn.Module:
    return TINY_MODELS.get(arch)()


def fresh(arch: str) -> nn.Module:
    """A private copy of the tiny model (building once per architecture keeps the suite fast)."""
    return copy.deepcopy(_built(arch))


# Method -> selector call on a located handle. All tiny models have 3 blocks, 4 query heads, 2 KV heads
# (BERT: 4 and 4) and 48 or 64 MLP channels.
METHODS: dict[str, Callable[[Any], PrunePlan]] = {
    "drop-blocks": lambda h: drop_blocks(h, [1]),
    "keep-first": lambda h: keep_first(h, 1),
    "block-scores": lambda h: by_scores(h, [0.9, 0.1, 0.5], count=1),
    "angular-span": lambda h: angular_span(h, {2: [0.4, 0.2]}, 2),
    "heads-kv": lambda h: heads(h, 2, mode="kv"),
    "heads-query": lambda h: heads(h, 2, mode="query"),
    "heads-per-block": lambda h: heads(h, [4, 2, 2]),
    "mlp": lambda h: mlp(h, 0.25),
    "mlp-per-block": lambda h: mlp(h, [0.0, 0.25, 0.375]),
    "vocab": lambda h: vocab(h, range(0, VOCAB, 2)),
    "combined": lambda h: drop_blocks(h, [2]).merge(heads(h, 2))
    .merge(mlp(h, 0.25)),
}
DEPTH = {"drop-blocks", "keep-first", "block-scores", "angular-span"}


def _skip_inapplicable(h: Any, method: str) -> None:
    att = h.layouts[0].attention
    if method == "heads-query" and att.num_heads == att.num_kv_heads:
        pytest.skip("no GQA: removing query heads within groups is the same as removing whole groups")


def token_ids(handle: Any, kept: list[int] | None = None, n: int = 7) -> torch.Tensor:
    """A fixed (1, n) prompt of ordinary tokens (no image/special ids), from the kept set when given."""
    g = torch.Generator().manual_seed(0)
    pool = [i for i in range(3, VOCAB - 3) if kept is None or i in set(kept)]
    return torch.tensor(pool)[torch.randint(0, len(pool), (1, n), generator=g)]


@torch.no_grad()
def run(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits of an LM, else the last hidden state (BERT, a base model)."""
    out = model(input_ids=ids)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _bias(m: nn.Linear) -> int:
    return 0 if m.bias is None else 1


def expected_params(h: Any, plan: PrunePlan) -> int:
    """Parameter count after ``plan``, from the layouts and head/channel arithmetic (not by counting the
    pruned model): removed blocks take their parameters; a query head takes head_dim rows of q (+bias)
    and head_dim columns of o; a KV head takes head_dim rows of k and v (+biases); a channel takes a row
    of each input projection (+bias) and a column of down; a token takes an embedding row and, when
    untied, an LM-head row."""
    total = count_params(h.root)
    d = h.hidden_size
    for b in plan.drop_blocks:
        total -= h.layouts[b].num_params
    for b, lay in enumerate(h.layouts):
        if b in plan.drop_blocks:
            continue
        blk, att, mlp = h.blocks[b], lay.attention, lay.mlp
        if b in plan.heads:
            keep_q = plan.heads[b]
            g = att.num_heads // att.num_kv_heads
            keep_kv = {q // g for q in keep_q}
            rq, rkv, hd = att.num_heads - len(keep_q), att.num_kv_heads - len(keep_kv), att.head_dim
            qb = _bias(blk.get_submodule(att.qkv or att.q))
            kb = _bias(blk.get_submodule(att.qkv or att.k))
            total -= rq * hd * (2 * d + qb) + rkv * hd * 2 * (d + kb)
        if b in plan.mlp:
            r = mlp.intermediate_size - len(plan.mlp[b])
            ins = [mlp.gate_up] if mlp.kind == "fused_gated" else [p for p in (mlp.up, mlp.gate) if p]
            per_in = sum((2 if mlp.kind == "fused_gated" else 1) * (d + _bias(blk.get_submodule(p))) for p in ins)
            total -= r * (per_in + d)
    if plan.vocab is not None:
        r = h.vocab_size - len(plan.vocab)
        total -= r * d
        if h.lm_head_path and not h.lm_head_tied:
            total -= r * (d + _bias(h.root.get_submodule(h.lm_head_path)))
    return total


def make_noops(h: Any, plan: PrunePlan) -> None:
    """Zero exactly what ``plan`` removes so that it already contributes nothing: a dropped block's
    attention-output and MLP-down projections (its residual updates become 0), a removed head's columns
    of o, a removed channel's column of down."""
    with torch.no_grad():
        for b, lay in enumerate(h.layouts):
            blk = h.blocks[b]
            o, down = blk.get_submodule(lay.attention.o), blk.get_submodule(lay.mlp.down)
            if b in plan.drop_blocks:
                for lin in (o, down):
                    lin.weight.zero_()
                    if lin.bias is not None:
                        lin.bias.zero_()
                continue
            if b in plan.heads:
                hd = lay.attention.head_dim
                for q in set(range(lay.attention.num_heads)) - set(plan.heads[b]):
                    o.weight[:, q * hd:(q + 1) * hd] = 0
            if b in plan.mlp:
                for c in set(range(lay.mlp.intermediate_size)) - set(plan.mlp[b]):
                    down.weight[:, c] = 0


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("arch", ARCHS)
def test_contract(arch: str, method: str, tmp_path: Path) -> None:
    model = fresh(arch)
    h = locate_backbone(model)
    _skip_inapplicable(h, method)
    plan = METHODS[method](h)
    assert plan.drop_blocks or plan.heads or plan.mlp or plan.vocab is not None, "the method removed nothing"
    expected = expected_params(h, plan)
    # BERT normalises after each residual sum: a block with zeroed updates still applies LayerNorm twice.
    # The tiny model's LayerNorms are at their init (weight 1, bias 0) and every block's input is already
    # such a LayerNorm's output, so the extra normalisations change it only by eps (1e-12) and float32
    # rounding of the recomputed mean/variance (~2e-7 seen); 1e-5 leaves room across platforms.
    post_norm = not h.is_decoder

    # Reference: the same model with everything the plan removes zeroed first.
    make_noops(h, plan)
    kept_vocab = plan.vocab
    ids = token_ids(h, kept_vocab)
    ref = run(model, ids)

    result = apply_plan(model, plan, h)
    pruned = result.model

    # forward works, and the config agrees with the tensors (the handle re-read from the cut tensors)
    new_ids = result.remap.to_new(ids) if result.remap is not None else ids
    out = run(pruned, new_ids)
    assert out.shape[:2] == ids.shape
    assert result.handle.num_blocks == h.config.num_hidden_layers == 3 - len(plan.drop_blocks)

    # parameter count equals the analytic expectation
    assert count_params(pruned) == expected

    # removing no-op parts leaves the outputs unchanged
    if plan.vocab is not None:
        ref = ref[..., plan.vocab] if ref.shape[-1] == VOCAB else ref  # logits over the kept tokens
    if post_norm and plan.drop_blocks:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # rounding-level, see above
    else:
        if plan.heads or plan.mlp or plan.vocab is not None:
            # A smaller matmul sums the surviving terms in a different order than the full one did
            # (the zeroed terms were exact zeros), and an LM head with fewer rows may block its matmul
            # differently; float32 reassociation error is ~1e-7 relative (1e-8 absolute seen here).
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        else:
            # Depth: a zeroed block adds exact zeros to the residual, and every other op is unchanged. Exact.
            torch.testing.assert_close(out, ref, rtol=0, atol=0)

    # save -> reload is bit-identical, through the loader prune.json names
    save_pruned(result, tmp_path / "out", {"test": True})
    reloaded = load_pruned(tmp_path / "out")
    torch.testing.assert_close(run(reloaded, new_ids), out, rtol=0, atol=0)
    if result.plain_reload:
        plain = type(pruned).from_pretrained(tmp_path / "out").eval()
        torch.testing.assert_close(run(plain, new_ids), out, rtol=0, atol=0)
    else:
        # Only per-block widths, or head counts the class derives from hidden_size (BERT, Qwen2-VL text),
        # need vlatrim's loader.
        w = result.widths
        uniform = len(set(w["num_heads"])) == 1 and len(set(w["intermediate_size"])) == 1
        assert not uniform or arch in ("bert", "qwen2_vl")


@pytest.mark.parametrize("arch", ARCHS)
def test_ratio_zero_is_identity(arch: str) -> None:
    model = fresh(arch)
    h = locate_backbone(model)
    ids = token_ids(h)
    ref, n_ref = run(model, ids), count_params(model)
    att = h.layouts[0].attention
    plan = (mlp(h, 0.0)
            .merge(heads(h, att.num_heads))
            .merge(by_scores(h, [1.0, 2.0, 3.0], ratio=0.0, backbone_params=10**6)))
    assert not plan.drop_blocks and not plan.heads and not plan.mlp
    result = apply_plan(model, plan, h)
    assert result.plain_reload
    torch.testing.assert_close(run(result.model, ids), ref, rtol=0, atol=0)
    assert count_params(result.model) == n_ref


DECODERS = [a for a in ARCHS if a != "bert"]


@pytest.mark.parametrize("arch", DECODERS)
def test_generate_with_kv_cache_after_depth_pruning(arch: str) -> None:
    model = fresh(arch)
    h = locate_backbone(model)
    result = apply_plan(model, drop_blocks(h, [0, 2]), h)
    m = result.model
    ids = token_ids(h, n=5)
    with torch.no_grad():
        cached = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                            use_cache=True, pad_token_id=0)
        uncached = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                              use_cache=False, pad_token_id=0)
    assert cached.shape == (1, 9)
    # Greedy decoding with the cache must pick the same tokens as recomputing everything each step:
    # a stale layer index would read another block's keys and values.
    assert torch.equal(cached, uncached)


def test_vocab_cut_keeps_image_tokens_working_in_a_vlm() -> None:
    """LLaVA with an image: the image placeholder id lives in the config; after the vocabulary cut it is
    remapped with the rest, and the model sees exactly the same inputs (same logits over kept tokens)."""
    model = fresh("llava")
    h = locate_backbone(model)
    img_id = model.config.image_token_index
    n_img = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    ids = torch.tensor([[1] + [img_id] * n_img + [10, 12, 14, 16]])  # (1, 1 + n_img + 4)
    pixels = torch.randn(1, 3, model.config.vision_config.image_size, model.config.vision_config.image_size,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pixels).logits
    plan = vocab(h, [10, 12, 14, 16])
    assert img_id in plan.vocab  # kept as a special token named by the config
    result = apply_plan(model, plan, h)
    new_img = int(result.remap.to_new([img_id])[0])
    assert result.model.config.image_token_index == new_img == len(plan.vocab) - 1
    with torch.no_grad():
        out = result.model(input_ids=result.remap.to_new(ids), pixel_values=pixels).logits
    # Same embeddings and image features; only the LM head's matmul has fewer rows (float reassociation).
    torch.testing.assert_close(out, ref[..., plan.vocab], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_drop_lm_head_leaves_the_base_model(arch: str, tmp_path: Path) -> None:
    model = fresh(arch)
    h = locate_backbone(model)
    ids = token_ids(h)
    with torch.no_grad():
        ref = model.model(input_ids=ids).last_hidden_state
    result = apply_plan(model, PrunePlan(drop_lm_head=True), h)
    assert result.handle.lm_head_path is None and type(result.model).__name__.endswith("Model")
    assert count_params(result.model) == count_params(model) - h.vocab_size * h.hidden_size  # untied head gone
    save_pruned(result, tmp_path / "out", {})
    torch.testing.assert_close(run(load_pruned(tmp_path / "out"), ids), ref, rtol=0, atol=0)

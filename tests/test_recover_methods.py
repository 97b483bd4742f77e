"""Recovery methods on tiny reference VLAs: LoRA wrap + merge, distillation terms, teacher checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from distill_helpers import kd_before_and_after
from vlatrim.errors import VlatrimError
from vlatrim.families import FAMILIES
from vlatrim.models.backbones import Backbone, build_backbone_from_config, default_tokenizer
from vlatrim.models.reference import ReferenceVLA, VLAConfig
from vlatrim.train.data import ChunkDataset, DemoFrames
from vlatrim.train.recovery import RECOVERY_METHODS, DistillSettings, LoraSettings, RecoverySettings
from vlatrim.train.recovery.lora import resolve_lora_targets

IMG, T = 16, 2
INSTR = {0: "open the drawer", 1: "close the window"}


def synthetic_frames(n_ep: int = 6, length: int = 8, seed: int = 0) -> DemoFrames:
    """Episodes whose action is a fixed function of the image's mean colour and the task (learnable)."""
    rng = np.random.default_rng(seed)
    n = n_ep * length
    images = np.clip(rng.integers(0, 256, (n, 1, 1, 3)) + rng.integers(-20, 21, (n, IMG, IMG, 3)), 0, 255)
    images = images.astype(np.uint8)
    task = np.repeat(np.arange(n_ep) % 2, length)
    colour = images.reshape(n, -1, 3).mean(1) / 127.5 - 1.0
    actions = np.concatenate([colour * np.where(task[:, None] == 0, 1.0, -1.0), task[:, None] * 2.0 - 1], 1)
    return DemoFrames(images=images, states=rng.normal(size=(n, 4)).astype(np.float32),
                      actions=np.clip(actions, -1, 1).astype(np.float32),
                      episode_index=np.repeat(np.arange(n_ep), length), frame_index=np.tile(np.arange(length), n_ep),
                      task_index=task, instructions=dict(INSTR))


def tiny_vla(frames: DemoFrames, model_type: str = "llama", blocks: int = 4, seed: int = 0, **vla) -> ReferenceVLA:
    """A reference VLA around a ``blocks``-deep width-32 backbone (Llama: no dropout; BERT: dropout 0.1)."""
    torch.manual_seed(seed)
    cfg = dict(model_type=model_type, vocab_size=30522, hidden_size=32, num_hidden_layers=blocks,
               num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    if model_type == "llama":
        cfg["num_key_value_heads"] = 2
    backbone = Backbone(model=build_backbone_from_config(cfg), tokenizer=default_tokenizer(), name=f"tiny-{model_type}")
    config = VLAConfig(image_size=IMG, chunk_size=T, max_text_tokens=8, conv_channels=(8, 16, 16), **vla)
    model = ReferenceVLA.from_backbone(config, backbone)
    model.set_normalization(frames.stats())
    return model


def batch_of(model: ReferenceVLA, frames: DemoFrames, n: int = 8) -> dict[str, torch.Tensor]:
    return ChunkDataset(frames, range(6), T, model.tokenize).__getitems__(list(range(n)))


@pytest.fixture(scope="module")
def frames() -> DemoFrames:
    return synthetic_frames()


def test_methods_are_registered_by_name():
    assert RECOVERY_METHODS.names() == ["distill", "full", "lora"]
    with pytest.raises(VlatrimError, match="unknown recovery method 'prune'; valid: distill, full, lora"):
        RECOVERY_METHODS.get("prune")


# ------------------------------------------------------------------ LoRA
def test_lora_targets_resolve_to_backbone_linears(frames):
    vla = tiny_vla(frames, blocks=2)
    every = resolve_lora_targets(vla, LoraSettings())
    assert len(every) == 2 * 7 and all(n.startswith("backbone.layers.") for n in every)  # q k v o gate up down
    assert resolve_lora_targets(vla, LoraSettings(targets=("q_proj", "self_attn.v_proj"))) == [
        "backbone.layers.0.self_attn.q_proj", "backbone.layers.0.self_attn.v_proj",
        "backbone.layers.1.self_attn.q_proj", "backbone.layers.1.self_attn.v_proj"]
    whole = resolve_lora_targets(vla, LoraSettings(scope=""))
    assert "projector.0" in whole and "head.net.1" in whole and len(whole) > len(every)


@pytest.mark.parametrize("lora, message", [
    (LoraSettings(targets=("query",)), "LoRA target 'query' matches no linear module under 'backbone'; valid names: "
                                       "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"),
    (LoraSettings(scope="language_model"), "LoRA scope 'language_model' is not a module of ReferenceVLA; valid: "),
    (LoraSettings(train_also=("action_head",)), "--lora-train-also 'action_head' names no parameter"),
])
def test_lora_bad_targets_fail_before_wrapping(frames, lora, message):
    vla = tiny_vla(frames, blocks=2)
    before = {k: v.clone() for k, v in vla.state_dict().items()}
    with pytest.raises(VlatrimError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RECOVERY_METHODS.get("lora")(RecoverySettings(method="lora", lora=lora)).prepare(vla)
    assert not any("lora" in n for n, _ in vla.named_modules())  # nothing was injected
    assert all(torch.equal(before[k], v) for k, v in vla.state_dict().items())


def test_lora_settings_validate():
    with pytest.raises(VlatrimError, match="LoRA rank=0 must be a positive integer"):
        LoraSettings(rank=0)
    with pytest.raises(VlatrimError, match="'all-linear' already takes every linear layer"):
        LoraSettings(targets=("all-linear", "q_proj"))


@pytest.mark.parametrize("model_type", ["llama", "bert"])
def test_lora_wraps_trains_only_adapters_and_merges_to_the_same_outputs(frames, model_type):
    vla = tiny_vla(frames, model_type, blocks=2)
    original = {k: v.clone() for k, v in vla.state_dict().items()}
    method = RECOVERY_METHODS.get("lora")(RecoverySettings(method="lora", lora=LoraSettings(rank=4, alpha=8)))
    wrapped = method.prepare(vla)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert all("lora_" in n or ".head." in n or n.endswith("action_queries") for n in trainable)
    # One adapter per backbone linear: q k v o gate up down (Llama), q k v, 3 dense (BERT), x 2 blocks.
    assert sum("lora_A" in n for n in trainable) == {"llama": 14, "bert": 12}[model_type]
    # peft initialises B = 0 (a no-op adapter); give the adapters a real update to merge.
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    wrapped.eval()
    batch = batch_of(vla, frames)
    before = wrapped(batch)["raw"].detach()  # (B, T, A)
    merged = method.finalize(wrapped)
    assert type(merged) is ReferenceVLA
    assert set(merged.state_dict()) == set(original)  # plain names: an ordinary checkpoint
    after = merged(batch)["raw"].detach()
    # Merging computes x (W + s B A)^T instead of x W^T + s (x A^T) B^T: equal up to float32 rounding
    # (measured max |diff| ~3e-7 on these ~1-sized outputs).
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    changed = [k for k in original if not torch.equal(original[k], merged.state_dict()[k])]
    targets = {t + ".weight" for t in resolve_lora_targets(tiny_vla(frames, model_type, blocks=2), LoraSettings())}
    assert set(changed) == targets  # exactly the adapted weights moved


# ------------------------------------------------------------------ distillation
def _distill(student, teacher, kept, **kw):
    method = RECOVERY_METHODS.get("distill")(RecoverySettings(method="distill", distill=DistillSettings(**kw)),
                                             FAMILIES.get("vlatrim_vla"))
    method.attach_teacher(teacher, student, kept)
    return method


@pytest.mark.parametrize("model_type", ["llama", "bert"])
def test_distillation_terms_are_zero_when_teacher_is_student(frames, model_type):
    student = tiny_vla(frames, model_type, blocks=3).eval()  # eval: BERT dropout would make two passes differ
    teacher = copy.deepcopy(student)
    method = _distill(student, teacher, None, hidden_weight=0.5, task_weight=1.0, action_weight=2.0)
    assert method.kept == [0, 1, 2]
    out = method.loss(student, batch_of(student, frames))
    assert out["kd_action"].item() == 0.0 and out["kd_hidden"].item() == 0.0
    assert out["loss"].item() == out["task"].item()  # 1.0 * task + 2.0 * 0 + 0.5 * 0


def test_hidden_alignment_pairs_kept_blocks_with_their_teacher_blocks(frames):
    from vlatrim.prune import PrunePlan, apply_plan

    teacher = tiny_vla(frames, blocks=4).eval()
    student = copy.deepcopy(teacher)
    apply_plan(student, PrunePlan(drop_blocks=[2, 3]))  # keeps teacher blocks 0 and 1
    batch = batch_of(student, frames)
    right = _distill(student, teacher, [0, 1], hidden_weight=1.0).loss(student, batch)
    # Kept blocks 0 and 1 see the same inputs as in the teacher: their outputs agree exactly; the
    # chunk does not (blocks 2 and 3 are gone).
    assert right["kd_hidden"].item() == 0.0 and right["kd_action"].item() > 0.01
    wrong = _distill(student, teacher, [2, 3], hidden_weight=1.0).loss(student, batch)
    # Random tiny blocks change the residual stream little, so the mismatch is small but far from 0
    # (measured ~3.6e-3 relative MSE).
    assert wrong["kd_hidden"].item() > 1e-3
    with pytest.raises(VlatrimError, match="the student has 2 blocks and the teacher 4, and the student has no prune.json"):
        _distill(student, teacher, None, hidden_weight=1.0)
    with pytest.raises(VlatrimError, match=r"kept_blocks \[1, 0\] are not increasing"):
        _distill(student, teacher, [1, 0], hidden_weight=1.0)
    _distill(student, teacher, None, hidden_weight=0.0)  # no alignment: no pairing needed


def test_hidden_alignment_of_a_batch_is_the_mean_of_its_equal_shares():
    # What makes a 2-process (or accumulated) distillation run the 1-process one: the term of the
    # whole batch equals the mean of its halves' terms even when the halves hold different padding.
    from vlatrim.train.recovery.distill import hidden_align_loss

    g = torch.Generator().manual_seed(0)
    s = [torch.randn(4, 6, 8, generator=g) for _ in range(2)]
    t = [x + 0.3 * torch.randn(4, 6, 8, generator=g) for x in s]
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    whole = hidden_align_loss(s, t, mask)
    halves = [hidden_align_loss([x[i:i + 2] for x in s], [x[i:i + 2] for x in t], mask[i:i + 2]) for i in (0, 2)]
    torch.testing.assert_close(whole, (halves[0] + halves[1]) / 2, rtol=1e-6, atol=0)
    # Per sample b and block i: sum of squared differences over b's unmasked positions / the teacher's sum of squares.
    m = mask[..., None].float()
    want = torch.stack([(((a - b) ** 2 * m).sum((1, 2)) / ((b ** 2) * m).sum((1, 2))).mean() for a, b in zip(s, t)]).mean()
    torch.testing.assert_close(whole, want, rtol=1e-6, atol=0)


def test_distillation_gradient_pulls_the_student_towards_the_teacher(frames):
    teacher = tiny_vla(frames, blocks=2, seed=0).eval()
    student = tiny_vla(frames, blocks=2, seed=1)
    method = _distill(student, teacher, None, task_weight=0.0, action_weight=1.0)
    first, last = kd_before_and_after(method, student, batch_of(student, frames), lr=3e-3, steps=6)
    assert last < 0.5 * first
    assert all(p.grad is None for p in teacher.parameters())  # the teacher never trains


def test_discrete_head_distils_with_kl(frames):
    student = tiny_vla(frames, blocks=2, action_head="discrete", normalization="min_max", n_bins=16).eval()
    method = _distill(student, copy.deepcopy(student), None)
    assert method.loss(student, batch_of(student, frames))["kd_action"].item() == 0.0


def test_teacher_with_another_action_space_is_refused(frames):
    student = tiny_vla(frames, blocks=2)
    longer = tiny_vla(frames, blocks=2)
    longer.config.chunk_size = 4
    with pytest.raises(VlatrimError, match="teacher chunk_size is 4 but the student's is 2"):
        FAMILIES.get("vlatrim_vla").check_teacher(student, longer)
    other_stats = tiny_vla(frames, blocks=2)
    other_stats.set_normalization(synthetic_frames(seed=5).stats())
    with pytest.raises(VlatrimError, match="teacher normalization observation.state.mean differs from the student's"):
        FAMILIES.get("vlatrim_vla").check_teacher(student, other_stats)


def test_distill_settings_validate():
    with pytest.raises(VlatrimError, match="distillation weights are all 0"):
        DistillSettings(task_weight=0, action_weight=0)
    with pytest.raises(VlatrimError, match="action_distance 'kl' is not valid; valid: l1, mse"):
        DistillSettings(action_distance="kl")

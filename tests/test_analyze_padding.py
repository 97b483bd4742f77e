"""Block influence, angular distance and CKA count only real tokens: padded batches against hand-computed values."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from test_analyze_scorers import A, B, S, _ctx, _regressor
from test_reference_model import make_batch, make_vla
from vlatrim.analyze.base import SCORERS, LossSpec, ScoringContext
from vlatrim.errors import VlatrimError
from vlatrim.families import FAMILIES
from vlatrim.models.adapters import locate_backbone

# Real tokens per sample: heavy padding (54 of 120 positions real), right-padded in the first batch and
# left-padded in the second (the last real position is then S - 1).
LENGTHS = [(10, 3, 5, 1, 7, 2), (4, 10, 1, 6, 2, 3)]


def _padded_batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for k, lengths in enumerate(LENGTHS):
        mask = torch.zeros(B, S, dtype=torch.long)
        for i, n in enumerate(lengths):
            if k == 0:
                mask[i, :n] = 1
            else:
                mask[i, S - n:] = 1
        out.append({"input_ids": torch.randint(3, 90, (B, S), generator=g), "attention_mask": mask,
                    "target": torch.randn(B, A, generator=g)})
    return out


def _angle(x, y):
    return torch.arccos(F.cosine_similarity(x, y, dim=-1).clamp(-1, 1)) / math.pi


def test_padded_text_batch_matches_hand_computed_values():
    model = _regressor("bert")  # no final norm: hidden_states[l] -> hidden_states[l + 1] is exactly block l
    batches = _padded_batches()
    ctx = _ctx(model, batches)
    path = "backbone.encoder.layer"
    bi = SCORERS.get("block_influence")().score(ctx)
    ang = SCORERS.get("angular")(span=1).score(ctx)
    last = SCORERS.get("angular")(span=2, position="last").score(ctx)
    with torch.no_grad():
        hs = [model.backbone(input_ids=b["input_ids"], output_hidden_states=True).hidden_states for b in batches]
    real = [b["attention_mask"].bool() for b in batches]
    # ShortGPT: mean over the real tokens of the whole calibration set of 1 - cos(x_l, x_{l+1}).
    for l in range(3):
        d = torch.cat([(1 - F.cosine_similarity(h[l], h[l + 1], dim=-1))[m] for h, m in zip(hs, real)])
        assert d.numel() == 54
        assert bi.scores[path][l].item() == pytest.approx(d.mean().item(), rel=1e-5)
        padded = torch.stack([(1 - F.cosine_similarity(h[l], h[l + 1], dim=-1)) for h in hs]).mean()
        assert bi.scores[path][l].item() != pytest.approx(padded.item(), rel=1e-3)  # padding would change it
        a = torch.cat([_angle(h[l], h[l + 1])[m] for h, m in zip(hs, real)])
        assert ang.scores[path][l].item() == pytest.approx(a.mean().item(), rel=1e-5)
    # Gromov et al.: each sample's last real token (right padding: length - 1; left padding: S - 1).
    idx = [torch.tensor(LENGTHS[0]) - 1, torch.full((B,), S - 1)]
    rows = torch.arange(B)
    spans = last.extras["spans"][path]
    for n in (1, 2, 3):
        for l in range(3 - n + 1):
            d = torch.cat([_angle(h[l][rows, i], h[l + n][rows, i]) for h, i in zip(hs, idx)])
            assert spans[n - 1][l] == pytest.approx(d.mean().item(), rel=1e-5), (n, l)
    assert last.scores[path].tolist() == pytest.approx([spans[1][0], spans[1][1], spans[1][1]])
    assert bi.extras["padding_masked"] == {path: True} and last.extras["position"] == "last"
    # Linear CKA's rows are the real positions too.
    cka = SCORERS.get("cka")().score(ctx).scores[path]
    X = torch.cat([h[0][m] for h, m in zip(hs, real)]).double()
    Y = torch.cat([h[1][m] for h, m in zip(hs, real)]).double()
    X, Y = X - X.mean(0), Y - Y.mean(0)
    ref = (Y.T @ X).square().sum() / ((X.T @ X).norm() * (Y.T @ Y).norm())
    assert cka[0].item() == pytest.approx(1 - ref.item(), rel=1e-6)


def test_angular_position_is_validated():
    with pytest.raises(VlatrimError, match="angular position='first' is not valid; valid: all, last"):
        SCORERS.get("angular")(position="first")


def test_reference_vla_masks_only_the_instruction_padding(caplog):
    """The reference VLA's backbone sees [image tokens | state | instruction (padded) | action queries]; its
    family's position_mask marks only the instruction's padding."""
    vla = make_vla("tiny-bert")
    fam = FAMILIES.get("vlatrim_vla")
    batch = make_batch(vla)
    mask = fam.position_mask(vla, batch)  # (B, S)
    assert mask.shape == (2, fam.sequence_length(vla, batch))
    n_img = vla.config.num_image_tokens
    L = batch["attention_mask"].shape[1]
    assert mask[:, :n_img + 1].all() and mask[:, n_img + 1 + L:].all()
    assert torch.equal(mask[:, n_img + 1:n_img + 1 + L], batch["attention_mask"])
    assert not mask.all()  # the shorter instruction is padded
    loss = LossSpec(lambda m, b: m.compute_loss(b)["loss"], "l1", 12)
    handle = locate_backbone(vla)
    ctx = ScoringContext(vla, handle, [batch], loss, position_mask=lambda b: fam.position_mask(vla, b))
    bi = SCORERS.get("block_influence")().score(ctx).scores[handle.blocks_path]
    with torch.no_grad():
        hs = vla(batch, output_hidden_states=True)["hidden_states"]
    for l in range(len(bi)):
        d = (1 - F.cosine_similarity(hs[l], hs[l + 1], dim=-1))[mask.bool()]
        assert bi[l].item() == pytest.approx(d.mean().item(), rel=1e-5)
    # Without the family's mask, the batch's attention_mask (B, L) describes the instruction alone: it is
    # not applied to the (B, S) sequence, and the run says so.
    with caplog.at_level(logging.WARNING, logger="vlatrim.analyze.base"):
        plain = SCORERS.get("block_influence")().score(ScoringContext(vla, handle, [batch], loss))
    assert plain.extras["padding_masked"] == {handle.blocks_path: False}
    assert "does not match" in caplog.text
    d0 = (1 - F.cosine_similarity(hs[0], hs[1], dim=-1)).mean()
    assert plain.scores[handle.blocks_path][0].item() == pytest.approx(d0.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["head_magnitude", "channel_magnitude"])
def test_magnitude_scorers_average_over_real_tokens_only(name):
    from vlatrim.analyze.width import channel_units, head_units

    model = _regressor("bert")
    batches = _padded_batches()
    ctx = _ctx(model, batches)
    units = (head_units if name == "head_magnitude" else channel_units)(ctx)
    got = SCORERS.get(name)().score(ctx).scores
    seen: dict[int, list[torch.Tensor]] = {}
    hooks = [mod.register_forward_pre_hook(lambda m, a, i=i: seen.setdefault(i, []).append(a[0].detach()))
             for i, (_, mod, _, _) in enumerate(units)]
    with torch.no_grad():
        for b in batches:
            model.compute_loss(b)  # the forward the scorer runs
    for h in hooks:
        h.remove()
    real = [b["attention_mask"].bool() for b in batches]
    for i, (path, mod, n, w) in enumerate(units):
        # Each unit's contribution x_u W_u^T at every real position, its norm averaged over the 54 of them.
        x = torch.cat([xb[m] for xb, m in zip(seen[i], real)]).reshape(-1, n, w)
        assert x.shape[0] == 54
        W = mod.weight.reshape(mod.weight.shape[0], n, w)
        norms = torch.stack([(x[:, u] @ W[:, u].T).norm(dim=-1) for u in range(n)], dim=1)  # (54, n)
        assert got[path].tolist() == pytest.approx(norms.mean(0).tolist(), rel=1e-5)
        every = torch.cat([xb.reshape(-1, n, w) for xb in seen[i]])  # padding included: another answer
        padded = torch.stack([(every[:, u] @ W[:, u].T).norm(dim=-1) for u in range(n)], dim=1).mean(0)
        assert got[path].tolist() != pytest.approx(padded.tolist(), rel=1e-3)
